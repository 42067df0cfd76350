//! Induced alerts: an alert judged against the condition a scenario created (errors, latency,
//! an overflow, failed handshakes, 429s), within the rule's own range and `for:` window plus
//! the scrape-and-evaluation lag, and on the quiet side of its threshold.
//!
//! Clocks: a condition starts at the scenario's last fault change (`condition`), or, for
//! conditions made by calls, when `no alert is firing` handed over (earlier than the calls, so
//! the bound is never generous); it ends at the fault's removal (`recovered`) or the last
//! offending call (`traffic`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cucumber::then;

use super::alerts::{alert_rule, for_window, longest_range, threshold};
use super::{LAG, api};
use crate::conformance::world::MeshWorld;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::unchecked;

/// What an alert instance is about: `subject` is a service, a workload or a pod name.
struct Subject {
    name: String,
    /// The pods of the service `name`, so a per-pod alert concerns it too.
    pods: Vec<String>,
}

impl Subject {
    fn of(w: &MeshWorld, name: &str) -> Subject {
        let pods = w
            .target
            .pods()
            .into_iter()
            .filter(|p| p.service == name)
            .map(|p| p.name)
            .collect();
        Subject {
            name: name.to_string(),
            pods,
        }
    }

    /// A label names the subject or one of its pods; an instance without labels (a mesh-wide
    /// alert) concerns every subject.
    fn concerned_by(&self, labels: &BTreeMap<String, String>) -> bool {
        let mut values = labels
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "alertname" | "alertstate" | "severity" | "__name__"
                )
            })
            .map(|(_, v)| v)
            .peekable();
        values.peek().is_none() || values.any(|v| *v == self.name || self.pods.contains(v))
    }
}

/// The alert for `subject` as Prometheus holds it now: "firing", "pending" or None.
async fn alert_state(api: &PrometheusApi, alert: &str, subject: &Subject) -> Option<String> {
    let alerts = api.alerts().await.unwrap_or_else(|e| unchecked!("{e:#}"));
    alerts
        .into_iter()
        .filter(|a| {
            a.labels.get("alertname").map(String::as_str) == Some(alert)
                && subject.concerned_by(&a.labels)
        })
        .map(|a| a.state)
        .max_by_key(|s| s == "firing")
}

/// An alert expression's measured side: everything before its final comparison.
fn measured(expr: &str) -> Option<&str> {
    let e = expr.trim();
    threshold(e)?;
    Some(e[..e.rfind(['>', '<'])?].trim())
}

/// The metric names an expression reads (`name{` or `name[`, not `func(`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b':'))
            {
                i += 1;
            }
            let quoted = expr[..start].matches('"').count() % 2 == 1;
            if !quoted && matches!(bytes.get(i), Some(b'{') | Some(b'[')) {
                names.push(expr[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    names.sort();
    names.dedup();
    names
}

/// The highest value the alert's measured side took for `subject` since `since` (None: it had
/// no value for the subject at all).
async fn peak(api: &PrometheusApi, expr: &str, subject: &Subject, since: Instant) -> Option<f64> {
    let lhs = measured(expr)?;
    let range = since.elapsed().as_secs().max(1) + 1;
    let q = format!("max_over_time(({lhs})[{range}s:1s])");
    api.query(&q)
        .await
        .unwrap_or_else(|e| unchecked!("{e:#}"))
        .into_iter()
        .filter(|s| subject.concerned_by(&s.labels))
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

/// Why an alert that should have fired did not: BROKEN when Prometheus had the series the
/// rule reads (so the rule, its threshold or the telemetry is wrong), UNCHECKED when it had
/// none of them (the condition never reached the telemetry).
async fn did_not_fire(
    api: &PrometheusApi,
    alert: &str,
    expr: &str,
    s: &Subject,
    since: Instant,
    bound: Duration,
) -> ! {
    match peak(api, expr, s, since).await {
        Some(v) => crate::broken!(
            "{alert} did not fire for {} within {} s: its expression peaked at {v:.3} for it, the threshold is {}",
            s.name,
            bound.as_secs(),
            threshold(expr).map_or("?".into(), |t| t.to_string())
        ),
        None => {
            let names = metric_names(expr);
            let selector = format!(r#"{{__name__=~"{}"}}"#, names.join("|"));
            let present = !names.is_empty()
                && !api
                    .query(&format!("count({selector})"))
                    .await
                    .unwrap_or_else(|e| unchecked!("{e:#}"))
                    .is_empty();
            if present {
                crate::broken!(
                    "{alert} did not fire for {} within {} s, and its expression has no value for it although Prometheus holds the series it reads ({}): the rule does not see the condition",
                    s.name,
                    bound.as_secs(),
                    names.join(", ")
                );
            }
            unchecked!(
                "Prometheus holds none of the series {alert} reads ({}): the condition never reached the telemetry",
                names.join(", ")
            );
        }
    }
}

fn condition_start(w: &MeshWorld) -> Instant {
    w.marks.get("condition").copied().unwrap_or_else(|| {
        unchecked!("no `no alert is firing` or fault step marked when the condition began")
    })
}

#[then(
    regex = r"^(\S+) does not fire for (\S+) within its range and for window plus the evaluation lag$"
)]
async fn does_not_fire(w: &mut MeshWorld, alert: String, subject: String) {
    let rule = alert_rule(w, &alert);
    let since = condition_start(w);
    let s = Subject::of(w, &subject);
    let api = api(w);
    // The expression averages over its range: the new condition fills it, then must hold
    // for the `for:` window.
    let bound = longest_range(&rule.expr) + for_window(&rule) + LAG;
    while since.elapsed() < bound {
        if alert_state(&api, &alert, &s).await.as_deref() == Some("firing") {
            crate::broken!(
                "{alert} fired for {subject} {:.1} s after the condition began, below the promised threshold",
                since.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
    let peak = peak(&api, &rule.expr, &s, since).await.unwrap_or(0.0);
    if peak <= 0.0 {
        unchecked!(
            "{alert}'s expression stayed at 0 (or had no value) for {subject}: the condition never reached the telemetry"
        );
    }
    w.evidence(format!(
        "{alert} did not fire for {subject} in {:.1} s (range {} s + for {} s + {} s lag); its expression peaked at {peak:.3}, threshold {}",
        since.elapsed().as_secs_f64(),
        longest_range(&rule.expr).as_secs(),
        for_window(&rule).as_secs(),
        LAG.as_secs(),
        threshold(&rule.expr).map_or("?".into(), |t| t.to_string())
    ));
}

#[then(regex = r"^(\S+) fires for (\S+) within its range and for window plus the evaluation lag$")]
async fn fires(w: &mut MeshWorld, alert: String, subject: String) {
    let rule = alert_rule(w, &alert);
    let since = condition_start(w);
    let s = Subject::of(w, &subject);
    let api = api(w);
    let bound = longest_range(&rule.expr) + for_window(&rule) + LAG;
    loop {
        if alert_state(&api, &alert, &s).await.as_deref() == Some("firing") {
            w.evidence(format!(
                "{alert} fired for {subject} {:.1} s after the condition began (range {} s, for {} s; bound {} s)",
                since.elapsed().as_secs_f64(),
                longest_range(&rule.expr).as_secs(),
                for_window(&rule).as_secs(),
                bound.as_secs()
            ));
            w.marks.insert("fired".into(), Instant::now());
            return;
        }
        if since.elapsed() > bound {
            did_not_fire(&api, &alert, &rule.expr, &s, since, bound).await;
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
}

#[then(regex = r"^(\S+) resolves for (\S+) within its window plus the evaluation lag$")]
async fn resolves(w: &mut MeshWorld, alert: String, subject: String) {
    let rule = alert_rule(w, &alert);
    if !w.marks.contains_key("fired") {
        unchecked!("{alert} never fired in this scenario, so it cannot resolve");
    }
    let Some(since) = w
        .marks
        .get("recovered")
        .or_else(|| w.marks.get("traffic"))
        .copied()
    else {
        unchecked!("no step marked when the condition ended");
    };
    let s = Subject::of(w, &subject);
    let api = api(w);
    let bound = longest_range(&rule.expr) + LAG;
    loop {
        if alert_state(&api, &alert, &s).await.is_none() {
            w.evidence(format!(
                "{alert} resolved for {subject} {:.1} s after the condition ended (window {} s; bound {} s)",
                since.elapsed().as_secs_f64(),
                longest_range(&rule.expr).as_secs(),
                bound.as_secs()
            ));
            return;
        }
        if since.elapsed() > bound {
            crate::broken!(
                "{alert} still holds for {subject} {} s after the condition ended (its window is {} s)",
                since.elapsed().as_secs(),
                longest_range(&rule.expr).as_secs()
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_measured_side_and_the_metrics_of_an_alert() {
        let e = "sum by (pod) (rate(envoy_listener_ssl_connection_error[20s])) > 0";
        assert_eq!(
            measured(e),
            Some("sum by (pod) (rate(envoy_listener_ssl_connection_error[20s]))")
        );
        assert_eq!(metric_names(e), ["envoy_listener_ssl_connection_error"]);
        let e = r#"sum(rate(istio_requests_total{reporter="source", response_flags=~".*UO.*"}[20s])) / sum(rate(istio_requests_total[20s])) > 0.05"#;
        assert_eq!(metric_names(e), ["istio_requests_total"]);
        assert_eq!(measured("up == 0"), None);
    }

    #[test]
    fn an_alert_concerns_its_service_its_pods_or_everyone() {
        let s = Subject {
            name: "airtable-gateway".into(),
            pods: vec!["airtable-gateway-0".into()],
        };
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.concerned_by(&labels(&[("destination_service_name", "airtable-gateway")])));
        assert!(s.concerned_by(&labels(&[("pod", "airtable-gateway-0")])));
        assert!(s.concerned_by(&labels(&[("alertname", "X"), ("severity", "critical")])));
        assert!(!s.concerned_by(&labels(&[("pod", "auth-service-0")])));
    }
}
