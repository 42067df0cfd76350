//! Alerts in a chaos run: which of the mesh's PrometheusRule alerts a profile expects to fire
//! (and how soon after its fault showed in the data plane) or forbids, a watcher that records
//! when each alert fired and resolved, and the judgement, so a game day answers "did our
//! alerts fire, and how fast?".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_saphyr::Spanned;

use super::expect::Judgement;
use super::profile::Dur;
use super::run::{Record, Shared};
use crate::conformance::verdict::Verdict;
use crate::error::InputError;
use crate::model::MeshModel;
use crate::prometheus::PrometheusApi;

/// `alerts:` of a profile.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// Alerts that must fire within `within` of the first fault showing in the data plane.
    #[serde(default)]
    pub expect: Vec<Spanned<ExpectedAlert>>,
    /// Alerts that must not fire at any time during the run.
    #[serde(default)]
    pub forbid: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    pub name: String,
    pub within: Dur,
}

impl AlertSpec {
    pub fn is_empty(&self) -> bool {
        self.expect.is_empty() && self.forbid.is_empty()
    }
}

/// One alert's firing, as the watcher saw it (seconds from the start of the run).
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    pub name: String,
    /// The alert's labels other than its name (which service, which pod).
    pub labels: std::collections::BTreeMap<String, String>,
    pub fired_at_s: f64,
    pub resolved_at_s: Option<f64>,
}

/// Every alert name the mesh's PrometheusRules declare.
fn declared(model: &MeshModel) -> Vec<String> {
    model
        .manifests
        .prometheus_rules
        .iter()
        .flat_map(|r| r.spec.groups.iter().flat_map(|g| g.rules.iter()))
        .filter_map(|r| r.alert.clone())
        .collect()
}

/// Every named alert must be one the mesh declares (file:line:field otherwise).
pub fn validate(
    spec: &AlertSpec,
    model: &MeshModel,
    file: &std::path::Path,
) -> Result<(), InputError> {
    let known = declared(model);
    let check = |name: &str, line: u64, field: &str| {
        if known.iter().any(|k| k == name) {
            Ok(())
        } else {
            Err(InputError::new(
                file,
                format!(
                    "no PrometheusRule of the mesh declares the alert {name} (its alerts: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
            .at_line(line)
            .field(field))
        }
    };
    for (i, e) in spec.expect.iter().enumerate() {
        check(
            &e.value.name,
            e.referenced.line(),
            &format!("alerts.expect[{i}].name"),
        )?;
        if e.value.within.0.is_zero() || e.value.within.0 > super::validate::MAX_SPAN {
            return Err(
                InputError::new(file, "within must be more than 0 and at most 1h")
                    .at_line(e.referenced.line())
                    .field(format!("alerts.expect[{i}].within")),
            );
        }
    }
    for (i, f) in spec.forbid.iter().enumerate() {
        check(
            &f.value,
            f.referenced.line(),
            &format!("alerts.forbid[{i}]"),
        )?;
    }
    Ok(())
}

/// Polls Prometheus' alerts each second until aborted, recording firings and resolutions in
/// the run's record and timeline.
pub(super) fn spawn_watch(
    api: PrometheusApi,
    shared: Arc<Mutex<Shared>>,
    start: Instant,
    limit: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while start.elapsed() < limit {
            let t = start.elapsed().as_secs_f64();
            match api.alerts().await {
                Ok(alerts) => {
                    let firing: Vec<(String, std::collections::BTreeMap<String, String>)> = alerts
                        .into_iter()
                        .filter(|a| a.state == "firing")
                        .map(|a| {
                            let mut labels = a.labels;
                            let name = labels.remove("alertname").unwrap_or_default();
                            (name, labels)
                        })
                        .collect();
                    update(&mut shared.lock().expect("shared lock"), t, &firing);
                }
                Err(e) => shared
                    .lock()
                    .expect("shared lock")
                    .timeline
                    .event("alerts_unreadable", json!({"error": format!("{e:#}")})),
            }
            tokio::time::sleep(crate::prometheus::config::INTERVAL).await;
        }
    })
}

fn update(s: &mut Shared, t: f64, firing: &[(String, std::collections::BTreeMap<String, String>)]) {
    let Shared { record, timeline } = s;
    for f in record
        .alerts
        .iter_mut()
        .filter(|f| f.resolved_at_s.is_none())
    {
        if !firing.iter().any(|(n, l)| *n == f.name && *l == f.labels) {
            f.resolved_at_s = Some(t);
            timeline.event(
                "alert_resolved",
                json!({"alert": f.name, "labels": f.labels}),
            );
        }
    }
    for (name, labels) in firing {
        let open = record
            .alerts
            .iter()
            .any(|f| f.name == *name && f.labels == *labels && f.resolved_at_s.is_none());
        if !open {
            record.alerts.push(Firing {
                name: name.clone(),
                labels: labels.clone(),
                fired_at_s: t,
                resolved_at_s: None,
            });
            timeline.event("alert_firing", json!({"alert": name, "labels": labels}));
        }
    }
}

/// The alert hypotheses: each expected alert fired within its bound of the first verified
/// fault; no forbidden alert fired.
pub fn judge(spec: &AlertSpec, record: &Record) -> Vec<Judgement> {
    let mut out = Vec::new();
    let first_verified = record
        .faults
        .iter()
        .filter_map(|f| f.verified_at_s)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
    for e in &spec.expect {
        let (name, within) = (&e.value.name, e.value.within.0.as_secs_f64());
        let hyp = format!(
            "alert {name} fires within {} of the fault showing in the data plane",
            meshtest_load::duration::human(e.value.within.0)
        );
        let Some(verified) = first_verified else {
            out.push(Judgement::new(
                hyp,
                Verdict::Unchecked,
                "no fault showed in the data plane",
            ));
            continue;
        };
        let fired = record
            .alerts
            .iter()
            .filter(|f| f.name == *name && f.fired_at_s >= verified)
            .map(|f| f.fired_at_s)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
        let j = match fired {
            Some(t) if t - verified <= within => Judgement::new(
                hyp,
                Verdict::Holds,
                format!(
                    "fired {:.1} s after the fault showed (at {verified:.1} s)",
                    t - verified
                ),
            ),
            Some(t) => Judgement::new(
                hyp,
                Verdict::Broken,
                format!("fired only {:.1} s after the fault showed", t - verified),
            ),
            None if record.end_s - verified < within => Judgement::new(
                hyp,
                Verdict::Unchecked,
                format!(
                    "not fired when the run ended, {:.1} s after the fault showed (before its bound)",
                    record.end_s - verified
                ),
            ),
            None => Judgement::new(
                hyp,
                Verdict::Broken,
                format!(
                    "never fired in the {:.1} s after the fault showed",
                    record.end_s - verified
                ),
            ),
        };
        out.push(j);
    }
    for f in &spec.forbid {
        let name = &f.value;
        let hyp = format!("alert {name} does not fire");
        let fired: Vec<String> = record
            .alerts
            .iter()
            .filter(|a| a.name == *name)
            .map(|a| format!("at {:.1} s {:?}", a.fired_at_s, a.labels))
            .collect();
        out.push(if fired.is_empty() {
            Judgement::new(hyp, Verdict::Holds, "it never fired during the run")
        } else {
            Judgement::new(
                hyp,
                Verdict::Broken,
                format!("it fired {}", fired.join(", ")),
            )
        });
    }
    out
}

/// summary.json's `alerts`: every firing seen, with the detection latency from the first
/// verified fault for expected ones.
pub fn summary(spec: &AlertSpec, record: &Record) -> serde_json::Value {
    let first_verified = record
        .faults
        .iter()
        .filter_map(|f| f.verified_at_s)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))));
    let role = |name: &str| {
        if spec.expect.iter().any(|e| e.value.name == name) {
            "expected"
        } else if spec.forbid.iter().any(|f| f.value == name) {
            "forbidden"
        } else {
            "other"
        }
    };
    json!(
        record
            .alerts
            .iter()
            .map(|f| json!({
                "name": f.name,
                "labels": f.labels,
                "role": role(&f.name),
                "fired_at_s": f.fired_at_s,
                "resolved_at_s": f.resolved_at_s,
                "detection_latency_ms": first_verified
                    .filter(|v| f.fired_at_s >= *v)
                    .map(|v| ((f.fired_at_s - v) * 1000.0).round() as u64),
            }))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::run::FaultRun;

    fn spec(text: &str) -> AlertSpec {
        serde_saphyr::from_str(text).unwrap()
    }

    fn record(verified: Option<f64>, firings: &[(&str, f64)], end: f64) -> Record {
        Record {
            faults: vec![FaultRun {
                verified_at_s: verified,
                ..FaultRun::default()
            }],
            alerts: firings
                .iter()
                .map(|(n, t)| Firing {
                    name: n.to_string(),
                    labels: Default::default(),
                    fired_at_s: *t,
                    resolved_at_s: None,
                })
                .collect(),
            end_s: end,
            ..Record::default()
        }
    }

    fn verdicts(s: &AlertSpec, r: &Record) -> Vec<Verdict> {
        judge(s, r).into_iter().map(|j| j.verdict).collect()
    }

    #[test]
    fn an_expected_alert_is_judged_from_the_fault_showing() {
        let s = spec("expect:\n- name: A\n  within: 10s\n");
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[("A", 14.0)], 60.0)),
            [Verdict::Holds]
        );
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[("A", 16.0)], 60.0)),
            [Verdict::Broken]
        );
        // Firing before the fault showed is not detection of it.
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[("A", 2.0)], 60.0)),
            [Verdict::Broken]
        );
        // The run ended before the bound: nobody knows.
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[], 12.0)),
            [Verdict::Unchecked]
        );
        // No fault showed: nothing to detect.
        assert_eq!(
            verdicts(&s, &record(None, &[("A", 3.0)], 60.0)),
            [Verdict::Unchecked]
        );
    }

    #[test]
    fn a_forbidden_alert_must_never_fire() {
        let s = spec("forbid: [B]\n");
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[("A", 6.0)], 60.0)),
            [Verdict::Holds]
        );
        assert_eq!(
            verdicts(&s, &record(Some(5.0), &[("B", 1.0)], 60.0)),
            [Verdict::Broken]
        );
    }

    #[test]
    fn the_watch_records_firing_and_resolution_once_each() {
        let mut r = record(Some(1.0), &[], 0.0);
        r.alerts.clear();
        let dir = tempfile::tempdir().unwrap();
        let timeline = crate::chaos::timeline::Timeline::create(
            &dir.path().join("t.jsonl"),
            dir.path().join("n.jsonl"),
            Instant::now(),
        )
        .unwrap();
        let mut s = Shared {
            timeline,
            record: r,
        };
        let a = vec![("A".to_string(), Default::default())];
        update(&mut s, 2.0, &a);
        update(&mut s, 3.0, &a);
        update(&mut s, 4.0, &[]);
        update(&mut s, 5.0, &a);
        let seen: Vec<(f64, Option<f64>)> = s
            .record
            .alerts
            .iter()
            .map(|f| (f.fired_at_s, f.resolved_at_s))
            .collect();
        assert_eq!(seen, [(2.0, Some(4.0)), (5.0, None)]);
    }
}
