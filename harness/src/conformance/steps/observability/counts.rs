//! Request counts: what Prometheus counted against what the load generator sent and got back.

use std::collections::BTreeMap;
use std::time::Instant;

use cucumber::then;

use super::{LAG, api, received_by_proxy, received_since, unix_at};
use crate::conformance::world::MeshWorld;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::{promise, unchecked};

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
