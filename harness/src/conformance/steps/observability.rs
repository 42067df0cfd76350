//! Observability: the mesh's telemetry checked against ground truth. Prometheus' request counts
//! against what the load generator sent and got back; the PrometheusRule's alerts induced on
//! either side of the promised threshold, judged against their declared `for:` windows; every
//! proxy's access log line for a request against the request itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cucumber::{given, then, when};
use meshtest_load::{LoadArgs, LoadPlan};

use crate::agent::Fault;
use crate::conformance::steps::common::{clear_faults, fault_every_replica};
use crate::conformance::steps::jwt::token;
use crate::conformance::world::MeshWorld;
use crate::manifest::observability::Rule;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::target::{Call, From};
use crate::token::{Tier, TokenSpec};
use crate::{promise, unchecked};

/// How long Prometheus may take to show what happened: a scrape and a rule evaluation, twice.
const LAG: Duration = Duration::from_secs(4 * INTERVAL.as_secs());

fn api(w: &MeshWorld) -> PrometheusApi {
    let Some(url) = w.target.prometheus_url() else {
        unchecked!(
            "the mesh runs without Prometheus (`meshtest up --observe`, or run features tagged @observability)"
        );
    };
    PrometheusApi::new(&url).unwrap_or_else(|e| unchecked!("{e:#}"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The Unix time of a mark taken with `Instant::now()`.
fn unix_at(mark: Instant) -> f64 {
    unix_now() - mark.elapsed().as_secs_f64()
}

/// The alerting rule `name` as the manifests declare it.
fn alert_rule(w: &MeshWorld, name: &str) -> Rule {
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
fn for_window(rule: &Rule) -> Duration {
    match &rule.for_ {
        None => Duration::ZERO,
        Some(text) => crate::translate::duration::parse(text).unwrap_or_else(|| {
            unchecked!("alert {:?}: `for: {text}` is not a duration", rule.alert)
        }),
    }
}

/// The longest range (`[30s]`) an expression reads: how long a condition lingers after it ends.
fn longest_range(expr: &str) -> Duration {
    expr.split('[')
        .skip(1)
        .filter_map(|rest| rest.split(']').next())
        .filter_map(|r| crate::translate::duration::parse(r.split(':').next().unwrap_or(r)))
        .max()
        .unwrap_or(Duration::ZERO)
}

#[given("Prometheus scrapes every proxy")]
async fn scrapes_every_proxy(w: &mut MeshWorld) {
    let api = api(w);
    let expected = w.target.pods().len() + 1;
    let started = Instant::now();
    loop {
        let up = api
            .query(r#"up{job="envoy-stats"}"#)
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        let healthy = up.iter().filter(|s| s.value == 1.0).count();
        if healthy == expected {
            w.evidence(format!("Prometheus scrapes all {expected} proxies"));
            break;
        }
        if started.elapsed() > 5 * LAG {
            let down: Vec<String> = up
                .iter()
                .filter(|s| s.value != 1.0)
                .map(|s| s.labels.get("pod").cloned().unwrap_or_default())
                .collect();
            unchecked!(
                "Prometheus scrapes {healthy} of {expected} proxies (down: {})",
                down.join(", ")
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
    wait_until_no_request_in_flight(w).await;
    // Requests that ended just before now are counted by Envoy but not yet scraped: wait
    // (bounded) for a scrape of every proxy after this moment, so they fall before the mark.
    let quiet = unix_now();
    let started = Instant::now();
    loop {
        let oldest = api
            .query(r#"min(timestamp(up{job="envoy-stats"}))"#)
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"))
            .first()
            .map_or(0.0, |s| s.value);
        if oldest > quiet {
            break;
        }
        if started.elapsed() > 5 * LAG {
            unchecked!(
                "Prometheus did not scrape every proxy within {} s",
                (5 * LAG).as_secs()
            );
        }
        tokio::time::sleep(INTERVAL / 4).await;
    }
    // The proxies' own request counters: the second ground truth (did anyone else send?).
    for p in received_by_proxy(w).await {
        w.stats_before.insert((p.0, RECEIVED.into()), p.1);
    }
    // What was already pending or firing is an earlier scenario's, not this one's.
    let alerts = api.alerts().await.unwrap_or_else(|e| unchecked!("{e:#}"));
    w.alerts_before = alerts.iter().map(describe_alert).collect();
    w.marks.insert("telemetry".into(), Instant::now());
}

/// Every proxy of the mesh: each pod's sidecar and the ingress gateway.
fn every_proxy(w: &MeshWorld) -> Vec<String> {
    let mut proxies: Vec<String> = w.target.pods().into_iter().map(|p| p.name).collect();
    proxies.push("istio-ingressgateway".into());
    proxies
}

/// Envoy's in-flight request gauges of the mesh's traffic listeners (not the admin's, nor the
/// metrics listener Prometheus scrapes).
const IN_FLIGHT: &str = r"^http\.(inbound|outbound)_.*\.downstream_rq_active$";
/// Longest wait for an earlier scenario's requests to end (a hung upstream ends at its route
/// timeout or the load's 10 s request timeout).
const QUIET_DEADLINE: Duration = Duration::from_secs(40);

/// A request of an earlier scenario that ends while this one counts would be counted as this
/// one's: wait (bounded) until no proxy has a request in flight.
async fn wait_until_no_request_in_flight(w: &mut MeshWorld) {
    let proxies = every_proxy(w);
    let started = Instant::now();
    loop {
        let mut busy = Vec::new();
        for p in &proxies {
            let body = crate::target::stats_matching(w.target.as_ref(), p, IN_FLIGHT)
                .await
                .unwrap_or_else(|e| unchecked!("reading {p}'s in-flight requests: {e:#}"));
            let n = crate::envoy::stats::sum_counters(&body);
            if n > 0 {
                busy.push(format!("{p}: {n}"));
            }
        }
        if busy.is_empty() {
            if started.elapsed() > INTERVAL {
                w.evidence(format!(
                    "waited {:.1} s for earlier requests to end",
                    started.elapsed().as_secs_f64()
                ));
            }
            return;
        }
        if started.elapsed() > QUIET_DEADLINE {
            unchecked!(
                "requests of an earlier scenario still in flight after {} s: {}",
                QUIET_DEADLINE.as_secs(),
                busy.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Envoy's count of requests a workload received: a sidecar's inbound listeners (its outbound
/// one carries the app's own calls), the ingress gateway's gateway listeners.
const RECEIVED: &str = r"^http\.inbound_.*\.downstream_rq_total$";
const RECEIVED_AT_INGRESS: &str = r"^http\.outbound_.*\.downstream_rq_total$";

/// Requests each proxy (every pod's sidecar and the ingress gateway) has received so far.
async fn received_by_proxy(w: &MeshWorld) -> Vec<(String, u64)> {
    let proxies = every_proxy(w);
    let mut out = Vec::new();
    for p in proxies {
        let filter = if p == "istio-ingressgateway" {
            RECEIVED_AT_INGRESS
        } else {
            RECEIVED
        };
        let body = crate::target::stats_matching(w.target.as_ref(), &p, filter)
            .await
            .unwrap_or_else(|e| unchecked!("reading {p}'s request counters: {e:#}"));
        out.push((p, crate::envoy::stats::sum_counters(&body)));
    }
    out
}

/// Requests the proxies of `service` (or the ingress gateway) received since the mark.
fn received_since(w: &MeshWorld, now: &[(String, u64)], service: Option<&str>) -> u64 {
    let pods: Vec<String> = match service {
        Some(s) => w
            .target
            .pods()
            .into_iter()
            .filter(|p| p.service == s)
            .map(|p| p.name)
            .collect(),
        None => vec!["istio-ingressgateway".into()],
    };
    now.iter()
        .filter(|(p, _)| pods.contains(p))
        .map(|(p, n)| {
            let before = w
                .stats_before
                .get(&(p.clone(), RECEIVED.to_string()))
                .copied()
                .unwrap_or(0);
            n.saturating_sub(before)
        })
        .sum()
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

fn describe_alert(a: &crate::prometheus::api::Alert) -> String {
    alert_key(&a.labels)
}

/// "Name{label=value,...}": one alert instance, from the alerts API or an `ALERTS` series.
fn alert_key(labels: &BTreeMap<String, String>) -> String {
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
}

/// `query` summed by response code, at Unix time `at` (None: now).
async fn by_code(api: &PrometheusApi, query: &str, at: Option<f64>) -> BTreeMap<u16, u64> {
    let samples = match at {
        Some(t) => api.query_at(query, t).await,
        None => api.query(query).await,
    }
    .unwrap_or_else(|e| unchecked!("{e:#}"));
    samples
        .iter()
        .filter_map(|s| {
            let code = s.labels.get("response_code")?.parse().ok()?;
            Some((code, s.value.round() as u64))
        })
        .collect()
}

fn delta(after: &BTreeMap<u16, u64>, before: &BTreeMap<u16, u64>) -> BTreeMap<u16, u64> {
    after
        .iter()
        .map(|(c, n)| (*c, n - before.get(c).copied().unwrap_or(0).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[then(
    regex = r"^Prometheus counts exactly the requests the generator got answers to, by response code, at the ingress gateway and at (\S+)$"
)]
async fn counts_agree(w: &mut MeshWorld, service: String) {
    let Some(mark) = w.marks.get("telemetry").copied() else {
        unchecked!("no `Prometheus scrapes every proxy` step marked when the load began");
    };
    let Some(r) = w.loads.last() else {
        unchecked!("no load was sent before this step");
    };
    let rec = &r.recorder;
    if rec.responses == 0 {
        unchecked!("the load got no answers to count");
    }
    if rec.errors.total() > 0 {
        unchecked!(
            "{} requests got no answer: the mesh may or may not have counted them",
            rec.errors.total()
        );
    }
    let truth: BTreeMap<u16, u64> = rec.status.clone();
    let sent: u64 = truth.values().sum();
    // The proxies' own counters say whether anything but this load reached them meanwhile
    // (another client, an edge retry): then the telemetry cannot be compared with the load.
    let now = received_by_proxy(w).await;
    for (who, service) in [
        ("the ingress gateway", None),
        (service.as_str(), Some(service.as_str())),
    ] {
        let received = received_since(w, &now, service);
        if received != sent {
            unchecked!(
                "{who}'s Envoy received {received} requests while the load sent {sent}: other traffic (or retries) reached it during the count"
            );
        }
    }
    let api = api(w);
    let before_t = unix_at(mark);
    let queries = [
        (
            "the ingress gateway (reporter=source)".to_string(),
            r#"sum by (response_code) (istio_requests_total{reporter="source", source_workload="istio-ingressgateway"})"#.to_string(),
        ),
        (
            format!("{service} (reporter=destination)"),
            format!(
                r#"sum by (response_code) (istio_requests_total{{reporter="destination", destination_service_name="{service}"}})"#
            ),
        ),
    ];
    for (name, query) in queries {
        let before = by_code(&api, &query, Some(before_t)).await;
        // Scrapes trail the last answer: poll (bounded) until the count settles.
        let started = Instant::now();
        let counted = loop {
            let now = delta(&by_code(&api, &query, None).await, &before);
            if now == truth || started.elapsed() > 2 * LAG {
                break now;
            }
            tokio::time::sleep(INTERVAL / 2).await;
        };
        promise!(
            counted == truth,
            "{name}: Prometheus counted {counted:?} by response code, the generator got {truth:?} (and Envoy's own counters saw exactly the load's {sent} requests)"
        );
        w.evidence(format!(
            "{name}: Prometheus counted {counted:?} = the generator's {truth:?}"
        ));
    }
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
fn threshold(expr: &str) -> Option<f64> {
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
    w.marks.insert("errors".into(), Instant::now());
}

#[when(regex = r"^every (?P<service>\S+) replica answers normally again$")]
async fn recovers(w: &mut MeshWorld, service: String) {
    clear_faults(w, &service).await;
    w.marks.insert("recovered".into(), Instant::now());
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

/// The alert for `service` as Prometheus holds it now: "firing", "pending" or None.
async fn alert_state(api: &PrometheusApi, alert: &str, service: &str) -> Option<String> {
    let alerts = api.alerts().await.unwrap_or_else(|e| unchecked!("{e:#}"));
    alerts
        .into_iter()
        .filter(|a| {
            a.labels.get("alertname").map(String::as_str) == Some(alert)
                && a.labels
                    .get("destination_service_name")
                    .is_none_or(|s| s == service)
        })
        .map(|a| a.state)
        .max_by_key(|s| s == "firing")
}

/// 5xx answers Prometheus has seen `service` give since `since`: evidence the errors reached
/// the telemetry at all.
async fn errors_seen(api: &PrometheusApi, service: &str, since: Instant) -> u64 {
    let range = since.elapsed().as_secs().max(1) + 1;
    let q = format!(
        r#"sum(increase(istio_requests_total{{reporter="destination", destination_service_name="{service}", response_code=~"5.."}}[{range}s]))"#
    );
    api.query(&q)
        .await
        .unwrap_or_else(|e| unchecked!("{e:#}"))
        .first()
        .map_or(0, |s| s.value.round() as u64)
}

#[then(
    regex = r"^(\S+) does not fire for (\S+) within its range and for window plus the evaluation lag$"
)]
async fn does_not_fire(w: &mut MeshWorld, alert: String, service: String) {
    let rule = alert_rule(w, &alert);
    let Some(since) = w.marks.get("errors").copied() else {
        unchecked!("no fault step marked when the errors began");
    };
    let api = api(w);
    // The expression averages over its range: the new error rate fills it, then must hold
    // for the `for:` window.
    let bound = longest_range(&rule.expr) + for_window(&rule) + LAG;
    while since.elapsed() < bound {
        if alert_state(&api, &alert, &service).await.as_deref() == Some("firing") {
            crate::broken!(
                "{alert} fired for {service} {:.1} s after the errors began, below the promised threshold",
                since.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
    let seen = errors_seen(&api, &service, since).await;
    if seen == 0 {
        unchecked!("Prometheus saw no 5xx from {service}: the errors never reached the telemetry");
    }
    w.evidence(format!(
        "{alert} did not fire for {service} in {:.1} s (range {} s + for {} s + {} s lag) while Prometheus counted {seen} 5xx",
        since.elapsed().as_secs_f64(),
        longest_range(&rule.expr).as_secs(),
        for_window(&rule).as_secs(),
        LAG.as_secs()
    ));
}

#[then(regex = r"^(\S+) fires for (\S+) within its range and for window plus the evaluation lag$")]
async fn fires(w: &mut MeshWorld, alert: String, service: String) {
    let rule = alert_rule(w, &alert);
    let Some(since) = w.marks.get("errors").copied() else {
        unchecked!("no fault step marked when the errors began");
    };
    let api = api(w);
    let bound = longest_range(&rule.expr) + for_window(&rule) + LAG;
    loop {
        if alert_state(&api, &alert, &service).await.as_deref() == Some("firing") {
            w.evidence(format!(
                "{alert} fired for {service} {:.1} s after the errors began (range {} s, for {} s; bound {} s)",
                since.elapsed().as_secs_f64(),
                longest_range(&rule.expr).as_secs(),
                for_window(&rule).as_secs(),
                bound.as_secs()
            ));
            w.marks.insert("fired".into(), Instant::now());
            return;
        }
        if since.elapsed() > bound {
            break;
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
    let seen = errors_seen(&api, &service, since).await;
    if seen == 0 {
        unchecked!("Prometheus saw no 5xx from {service}: the errors never reached the telemetry");
    }
    crate::broken!(
        "{alert} did not fire for {service} within {} s (range {} s + for {} s + {} s lag) although Prometheus counted {seen} 5xx",
        bound.as_secs(),
        longest_range(&rule.expr).as_secs(),
        for_window(&rule).as_secs(),
        LAG.as_secs()
    );
}

#[then(regex = r"^(\S+) resolves for (\S+) within its window plus the evaluation lag$")]
async fn resolves(w: &mut MeshWorld, alert: String, service: String) {
    let rule = alert_rule(w, &alert);
    let Some(since) = w.marks.get("recovered").copied() else {
        unchecked!("no step marked when the errors ended");
    };
    if !w.marks.contains_key("fired") {
        unchecked!("{alert} never fired in this scenario, so it cannot resolve");
    }
    let api = api(w);
    let bound = longest_range(&rule.expr) + LAG;
    loop {
        if alert_state(&api, &alert, &service).await.is_none() {
            w.evidence(format!(
                "{alert} resolved for {service} {:.1} s after the errors ended (window {} s; bound {} s)",
                since.elapsed().as_secs_f64(),
                longest_range(&rule.expr).as_secs(),
                bound.as_secs()
            ));
            return;
        }
        if since.elapsed() > bound {
            crate::broken!(
                "{alert} still holds for {service} {} s after the errors ended (its window is {} s)",
                since.elapsed().as_secs(),
                longest_range(&rule.expr).as_secs()
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
}

#[when(regex = r"^tenant (\S+) sends a request through the ingress to (\S+)$")]
async fn one_request(w: &mut MeshWorld, tenant: String, path: String) {
    let id = format!("{tenant}-{}", std::process::id());
    let jwt = token(w, &TokenSpec::new(&id, Tier::Pro)).await;
    let mut call = Call::new(
        From::Ingress { https: false },
        crate::target::INGRESS,
        &path,
    )
    .header("authorization", &format!("Bearer {jwt}"));
    call.timeout = crate::conformance::world::CALL_TIMEOUT;
    w.tenants.insert(tenant.clone(), (id, Tier::Pro));
    w.call(format!("tenant {tenant}: ingress {path}"), call)
        .await;
}

/// The key of the declared JSON access log field whose value is `operator`.
fn json_log_key(w: &MeshWorld, operator: &str) -> Option<String> {
    w.target
        .manifests()
        .istio_operators
        .iter()
        .flat_map(|o| o.spec.mesh_config.extension_providers.iter())
        .filter_map(|p| p.envoy_file_access_log.as_ref()?.log_format.as_ref())
        .flat_map(|f| f.labels.iter())
        .find(|(_, v)| v.trim().eq_ignore_ascii_case(operator))
        .map(|(k, _)| k.clone())
}

#[then(regex = r"^every proxy on its path logs it with tenant (\S+), a route and its request id$")]
async fn access_logged(w: &mut MeshWorld, tenant: String) {
    let Some((id, _)) = w.tenants.get(&tenant).cloned() else {
        unchecked!("tenant {tenant} sent nothing in this scenario");
    };
    let (_, outcome) = w.last();
    if outcome.status() != Some(200) {
        unchecked!("the request was not answered 200: {}", outcome.summary());
    }
    // The path, from the answer: api-gateway's pod forwarded it, the backend's pod echoed it
    // with the request id the mesh gave it.
    let forwarded_by = outcome
        .header("x-meshtest-forwarded-by")
        .map(str::to_string)
        .unwrap_or_else(|| unchecked!("the answer does not say which pod forwarded it"));
    let body = outcome
        .json()
        .unwrap_or_else(|| unchecked!("the answer is not the echo's JSON"));
    let backend = body["pod"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| unchecked!("the echo does not name its pod"));
    let request_id = body["headers"]["x-request-id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| unchecked!("the backend received no x-request-id"));
    let path = ["istio-ingressgateway".to_string(), forwarded_by, backend];
    let route_key = json_log_key(w, "%ROUTE_NAME%").unwrap_or_else(|| {
        crate::broken!("no JSON access log format the mesh declares has a %ROUTE_NAME% field")
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    for proxy in &path {
        // Envoy writes access logs from a buffer: poll (bounded) until the line is there.
        let lines = loop {
            let log = w
                .target
                .proxy_log(proxy)
                .await
                .unwrap_or_else(|e| unchecked!("reading {proxy}'s log: {e:#}"));
            let lines: Vec<serde_json::Value> = log
                .lines()
                .filter(|l| l.contains(&request_id))
                .filter_map(|l| serde_json::from_str(l.trim()).ok())
                .collect();
            if !lines.is_empty() || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        promise!(
            !lines.is_empty(),
            "{proxy} logged no JSON access log line with request id {request_id}"
        );
        for line in &lines {
            let route = line[route_key.as_str()].as_str().unwrap_or("");
            let has_tenant = line
                .as_object()
                .is_some_and(|o| o.values().any(|v| v.as_str() == Some(id.as_str())));
            promise!(
                has_tenant,
                "{proxy}'s access log line for {request_id} does not carry tenant {id}: {line}"
            );
            promise!(
                !route.is_empty() && route != "-",
                "{proxy}'s access log line for {request_id} names no route ({route_key}): {line}"
            );
        }
        w.evidence(format!(
            "{proxy}: {} line(s) with request id {request_id}, tenant {id}, routes {:?}",
            lines.len(),
            lines
                .iter()
                .map(|l| l[route_key.as_str()].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
        ));
    }
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
