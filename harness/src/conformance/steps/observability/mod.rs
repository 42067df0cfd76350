//! Observability: the mesh's telemetry checked against ground truth. Prometheus' request counts
//! against what the load generator sent and got back; the PrometheusRule's alerts induced on
//! either side of the promised threshold, judged against their declared `for:` windows; every
//! proxy's access log line for a request against the request itself.

mod access_log;
mod alerts;
mod counts;
mod induced;
mod latency_histogram;
mod tracing;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cucumber::given;

use crate::conformance::world::MeshWorld;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::unchecked;

/// How long Prometheus may take to show what happened: a scrape and a rule evaluation, twice.
pub(super) const LAG: Duration = Duration::from_secs(4 * INTERVAL.as_secs());

pub(super) fn api(w: &MeshWorld) -> PrometheusApi {
    let Some(url) = w.target.prometheus_url() else {
        unchecked!(
            "the mesh runs without Prometheus (`meshtest up --observe`, or run features tagged @observability)"
        );
    };
    PrometheusApi::new(&url).unwrap_or_else(|e| unchecked!("{e:#}"))
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The Unix time of a mark taken with `Instant::now()`.
pub(super) fn unix_at(mark: Instant) -> f64 {
    unix_now() - mark.elapsed().as_secs_f64()
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
    // Envoy times a request into its histograms only at its next stats flush (every 5 s),
    // while it counts it at once: wait (bounded) until every histogram holds every request
    // counted so far, or an earlier scenario's last requests would land after the mark.
    wait_until_timed(&api, "").await;
    // The proxies' own request counters: the second ground truth (did anyone else send?).
    for p in received_by_proxy(w).await {
        w.stats_before.insert((p.0, RECEIVED.into()), p.1);
    }
    // What was already pending or firing is an earlier scenario's, not this one's.
    let alerts = api.alerts().await.unwrap_or_else(|e| unchecked!("{e:#}"));
    w.alerts_before = alerts.iter().map(alerts::describe_alert).collect();
    w.marks.insert("telemetry".into(), Instant::now());
}

/// Envoy merges histograms into its stats every 5 s by default; then a scrape.
pub(super) const HISTOGRAM_FLUSH: Duration = Duration::from_secs(12);

/// Requests over `selector` (PromQL label matchers, without braces) that Prometheus shows
/// counted and timed: the histogram lags the counter until the proxy's next stats flush.
pub(super) async fn counted_and_timed(api: &PrometheusApi, selector: &str) -> (u64, u64) {
    let sum = |metric: &str| format!("sum({metric}{{{selector}}})");
    let mut out = [0; 2];
    for (i, metric) in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_count",
    ]
    .into_iter()
    .enumerate()
    {
        let samples = api
            .query(&sum(metric))
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        out[i] = samples.first().map_or(0, |s| s.value.round() as u64);
    }
    (out[0], out[1])
}

/// Polls (bounded) until the histograms over `selector` hold every request its counters do.
pub(super) async fn wait_until_timed(api: &PrometheusApi, selector: &str) {
    let started = Instant::now();
    loop {
        let (counted, timed) = counted_and_timed(api, selector).await;
        if timed >= counted {
            return;
        }
        if started.elapsed() > HISTOGRAM_FLUSH {
            unchecked!(
                "after {} s the proxies' duration histograms hold {timed} requests, their counters {counted}: Envoy did not flush its histograms",
                HISTOGRAM_FLUSH.as_secs()
            );
        }
        tokio::time::sleep(INTERVAL / 2).await;
    }
}

/// Every proxy of the mesh: each pod's sidecar and the ingress gateway.
pub(super) fn every_proxy(w: &MeshWorld) -> Vec<String> {
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
pub(super) async fn received_by_proxy(w: &MeshWorld) -> Vec<(String, u64)> {
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
pub(super) fn received_since(w: &MeshWorld, now: &[(String, u64)], service: Option<&str>) -> u64 {
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

/// A forwarded request's path, from its answer: which api-gateway pod forwarded it, and the
/// backend's echo (its pod, the headers it received).
pub(super) struct Forwarded {
    pub forwarded_by: String,
    pub backend: String,
    pub echo: serde_json::Value,
}

impl Forwarded {
    /// The last call's, which must have been answered 200 by the echo through a forwarder.
    pub(super) fn of_last_call(w: &MeshWorld) -> Forwarded {
        let (_, outcome) = w.last();
        if outcome.status() != Some(200) {
            unchecked!("the request was not answered 200: {}", outcome.summary());
        }
        let forwarded_by = outcome
            .header("x-meshtest-forwarded-by")
            .map(str::to_string)
            .unwrap_or_else(|| unchecked!("the answer does not say which pod forwarded it"));
        let echo = outcome
            .json()
            .unwrap_or_else(|| unchecked!("the answer is not the echo's JSON"));
        let backend = echo["pod"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| unchecked!("the echo does not name its pod"));
        Forwarded {
            forwarded_by,
            backend,
            echo,
        }
    }

    /// A header the backend received.
    pub(super) fn received(&self, header: &str) -> Option<String> {
        self.echo["headers"][header].as_str().map(str::to_string)
    }
}
