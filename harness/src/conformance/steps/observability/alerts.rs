//! Alerts: the PrometheusRule's thresholds as declared, no false alarms on clean traffic, and
//! each alert induced, judged against its declared range and `for:` window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use meshtest_load::{LoadArgs, LoadPlan};

use super::{LAG, api};
use crate::agent::Fault;
use crate::conformance::steps::common::{clear_faults, fault_every_replica};
use crate::conformance::steps::jwt::token;
use crate::conformance::world::MeshWorld;
use crate::manifest::observability::Rule;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::token::{Tier, TokenSpec};
use crate::{promise, unchecked};

/// The alerting rule `name` as the manifests declare it.
pub(super) fn alert_rule(w: &MeshWorld, name: &str) -> Rule {
    w.target
        .manifests()
        .prometheus_rules
        .iter()
        .flat_map(|r| r.spec.groups.iter().flat_map(|g| g.rules.iter()))
        .find(|r| r.alert.as_deref() == Some(name))
        .cloned()
        .unwrap_or_else(|| crate::broken!("no PrometheusRule declares the alert {name}"))
}

/// An alert's `for:` (0 when absent).
pub(super) fn for_window(rule: &Rule) -> Duration {
    match &rule.for_ {
        None => Duration::ZERO,
        Some(text) => crate::translate::duration::parse(text).unwrap_or_else(|| {
            unchecked!("alert {:?}: `for: {text}` is not a duration", rule.alert)
        }),
    }
}

/// The longest range (`[30s]`) an expression reads: how long a condition lingers after it ends.
pub(super) fn longest_range(expr: &str) -> Duration {
    expr.split('[')
        .skip(1)
        .filter_map(|rest| rest.split(']').next())
        .filter_map(|r| crate::translate::duration::parse(r.split(':').next().unwrap_or(r)))
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Alerts firing now, as "name{service}".
async fn firing(api: &PrometheusApi) -> Vec<String> {
    let alerts = api.alerts().await.unwrap_or_else(|e| unchecked!("{e:#}"));
    alerts
        .iter()
        .filter(|a| a.state == "firing")
        .map(describe_alert)
        .collect()
}

pub(super) fn describe_alert(a: &crate::prometheus::api::Alert) -> String {
    alert_key(&a.labels)
}

/// "Name{label=value,...}": one alert instance, from the alerts API or an `ALERTS` series.
pub(super) fn alert_key(labels: &BTreeMap<String, String>) -> String {
    let name = labels.get("alertname").cloned().unwrap_or_default();
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "alertname" | "alertstate" | "severity" | "__name__"
            )
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

#[given("no alert is firing")]
async fn no_alert_firing(w: &mut MeshWorld) {
    let api = api(w);
    // An earlier scenario's condition lingers for its rules' longest window.
    let rules = w.target.manifests().prometheus_rules;
    let linger = rules
        .iter()
        .flat_map(|r| r.spec.groups.iter().flat_map(|g| g.rules.iter()))
        .map(|r| longest_range(&r.expr))
        .max()
        .unwrap_or(Duration::ZERO);
    let deadline = linger + 2 * LAG;
    let started = Instant::now();
    loop {
        let now = firing(&api).await;
        if now.is_empty() {
            w.evidence(format!(
                "no alert firing (waited {:.1} s)",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if started.elapsed() > deadline {
            unchecked!(
                "alerts still firing after {} s, longer than the rules' longest window: {}",
                deadline.as_secs(),
                now.join(", ")
            );
        }
        tokio::time::sleep(INTERVAL).await;
    }
    w.marks.insert("telemetry".into(), Instant::now());
    w.marks.insert("condition".into(), Instant::now());
}

#[then(regex = r"^no alert fired during the load, which outlasted every alert's for window$")]
async fn no_alert_fired(w: &mut MeshWorld) {
    let Some(mark) = w.marks.get("telemetry").copied() else {
        unchecked!("no step marked when the load began");
    };
    let longest_for = w
        .target
        .manifests()
        .prometheus_rules
        .iter()
        .flat_map(|r| r.spec.groups.iter().flat_map(|g| g.rules.iter()))
        .filter(|r| r.alert.is_some())
        .map(for_window)
        .max()
        .unwrap_or(Duration::ZERO);
    let span = match w.loads.last() {
        Some(r) if r.recorder.responses > 0 => r.recorder.last_done,
        _ => unchecked!("no load ran"),
    };
    if span < longest_for + LAG {
        unchecked!(
            "the load lasted {:.1} s, shorter than the longest for window ({} s) plus {} s: an alert could not have fired yet",
            span.as_secs_f64(),
            longest_for.as_secs(),
            LAG.as_secs()
        );
    }
    // Let the last evaluations land, then ask what fired at any moment since the load began.
    tokio::time::sleep(LAG).await;
    let api = api(w);
    let range = mark.elapsed().as_secs() + 1;
    let fired = api
        .query(&format!(
            r#"max_over_time(ALERTS{{alertstate="firing"}}[{range}s])"#
        ))
        .await
        .unwrap_or_else(|e| unchecked!("{e:#}"));
    let (earlier, names): (Vec<String>, Vec<String>) = fired
        .iter()
        .map(|s| alert_key(&s.labels))
        .partition(|k| w.alerts_before.contains(k));
    promise!(
        names.is_empty(),
        "alerts fired on clean traffic (false alarms): {}",
        names.join(", ")
    );
    w.evidence(format!(
        "no alert fired in {range} s of clean traffic (longest for window {} s){}",
        longest_for.as_secs(),
        if earlier.is_empty() {
            String::new()
        } else {
            format!(
                "; still firing from before the load, not judged: {}",
                earlier.join(", ")
            )
        }
    ));
}

/// The number an alert's expression compares against at its end (`... > 0.05`).
pub(super) fn threshold(expr: &str) -> Option<f64> {
    let e = expr.trim();
    let at = e.rfind(['>', '<'])?;
    let number = e[at + 1..].trim_start_matches('=').trim();
    number.parse().ok()
}

#[then("the mesh's alerts fire above these thresholds:")]
async fn thresholds(w: &mut MeshWorld, step: &cucumber::gherkin::Step) {
    let Some(table) = step.table.as_ref() else {
        unchecked!("the step needs a table: | alert | threshold |");
    };
    let rules = w.target.manifests().prometheus_rules;
    for row in table.rows.iter().skip(1) {
        let (name, promised) = (&row[0], &row[1]);
        let promised: f64 = promised
            .parse()
            .unwrap_or_else(|_| unchecked!("threshold {promised} of {name} is not a number"));
        let Some((rule, at)) = rules.iter().find_map(|r| {
            r.spec
                .groups
                .iter()
                .flat_map(|g| g.rules.iter())
                .find(|x| x.alert.as_deref() == Some(name.as_str()))
                .map(|x| {
                    let mut at = r.origin.clone();
                    at.line = crate::manifest::observability::rule_line(r, name);
                    (x.clone(), at)
                })
        }) else {
            crate::broken!("no PrometheusRule declares the alert {name}");
        };
        let Some(declared) = threshold(&rule.expr) else {
            unchecked!(
                "cannot tell the threshold of {name} from its expression: {}",
                rule.expr
            );
        };
        promise!(
            declared == promised,
            "{name} ({}:{}) fires above {declared}, not the promised {promised}",
            at.file.display(),
            at.line
        );
        w.evidence(format!(
            "{name}: fires above {declared} ({}:{})",
            at.file.display(),
            at.line
        ));
    }
}

#[given(regex = r"^every (?P<service>\S+) replica answers (\d+) to (\d+)% of requests$")]
#[when(regex = r"^every (?P<service>\S+) replica answers (\d+) to (\d+)% of requests$")]
async fn share_fails(w: &mut MeshWorld, service: String, status: u16, percent: u8) {
    if !(1..=100).contains(&percent) {
        unchecked!("{percent}% is not a share of requests");
    }
    fault_every_replica(w, &service, Fault::status(status).on_percent(percent)).await;
}

#[when(regex = r"^every (?P<service>\S+) replica answers normally again$")]
async fn recovers(w: &mut MeshWorld, service: String) {
    clear_faults(w, &service).await;
    // A request sent under a delay fault ends up to that delay later: only then is the
    // condition over (the mark may lie in the future; `elapsed` counts from it).
    let linger = w.fault_delays.remove(&service).unwrap_or_default();
    w.marks.insert("recovered".into(), Instant::now() + linger);
}

#[when(
    regex = r"^(\d+) requests per second go through the ingress to (\S+) for (\d+) s in the background$"
)]
async fn background_load(w: &mut MeshWorld, rate: u64, path: String, secs: u64) {
    for cancel in std::mem::take(&mut w.load_cancels) {
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(h) = w.chaos_load.take() {
        h.abort();
    }
    let base = w
        .target
        .ingress_url(false)
        .unwrap_or_else(|| unchecked!("the {} target has no HTTP ingress", w.target.kind()));
    let mut args = LoadArgs::for_url(format!("{base}{path}"));
    args.rate = Some(rate as f64);
    args.duration = Some(format!("{secs}s"));
    args.timeout = "10s".into();
    args.no_progress = true;
    args.threads = Some(1);
    let tenant = format!("observability-{}-{}", std::process::id(), w.chaos_owner);
    let jwt = token(w, &TokenSpec::new(&tenant, Tier::Enterprise)).await;
    args.headers.push(format!("authorization: Bearer {jwt}"));
    let plan = LoadPlan::from_args(&args).unwrap_or_else(|e| unchecked!("load plan: {e}"));
    w.load_cancels.push(plan.cancel.clone());
    w.marks.insert("load".into(), Instant::now());
    w.chaos_load = Some(tokio::spawn(async move {
        meshtest_load::run(&plan).await.map_err(|e| e.to_string())
    }));
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_threshold_an_alert_compares_against() {
        assert_eq!(super::threshold("sum(a) / sum(b)\n> 0.05\n"), Some(0.05));
        assert_eq!(
            super::threshold("histogram_quantile(0.99, x) >= 1000"),
            Some(1000.0)
        );
        assert_eq!(super::threshold("rate(x[20s]) > 0"), Some(0.0));
        assert_eq!(super::threshold("up == 0 or absent(up)"), None);
    }
}
