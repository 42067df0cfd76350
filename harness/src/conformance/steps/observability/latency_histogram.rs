//! Latency: the mesh's request-duration histogram against the load generator's HDR record.
//!
//! Prometheus keeps only cumulative bucket counts, so "agree" means: for a quantile q, the
//! bucket holding the mesh's ceil(q n)-th fastest request is the one the generator's
//! q-quantile falls in. The generator times from before the proxy sees a request to after it
//! has answered, so its value can only be at or above the proxy's; a delay that puts the
//! requests mid-bucket keeps that difference (loopback, well under a millisecond) honest.

use std::time::Instant;

use cucumber::then;

use super::{LAG, api, unix_at};
use crate::conformance::world::MeshWorld;
use crate::prometheus::PrometheusApi;
use crate::prometheus::config::INTERVAL;
use crate::{promise, unchecked};

/// Cumulative bucket counts by upper bound (ms), ascending, `+Inf` last.
type Buckets = Vec<(f64, u64)>;

async fn buckets(api: &PrometheusApi, query: &str, at: Option<f64>) -> Buckets {
    let samples = match at {
        Some(t) => api.query_at(query, t).await,
        None => api.query(query).await,
    }
    .unwrap_or_else(|e| unchecked!("{e:#}"));
    let mut out: Buckets = samples
        .iter()
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, s.value.round() as u64))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// What `after` counted beyond `before`, bucket by bucket.
fn since(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(was))
        })
        .collect()
}

/// The bucket (lower, upper] holding the ceil(q n)-th fastest of the histogram's n requests.
fn bucket_of_quantile(b: &Buckets, q: f64) -> Option<(f64, f64)> {
    let n = b.last()?.1;
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).max(1);
    let at = b.iter().position(|(_, cum)| *cum >= rank)?;
    let lower = if at == 0 { 0.0 } else { b[at - 1].0 };
    Some((lower, b[at].0))
}

#[then(
    regex = r"^the ingress gateway's latency histogram puts the generator's p50 and p99 in the buckets of its own$"
)]
async fn histogram_agrees(w: &mut MeshWorld) {
    let Some(mark) = w.marks.get("telemetry").copied() else {
        unchecked!("no `Prometheus scrapes every proxy` step marked when the load began");
    };
    let Some(r) = w.loads.last() else {
        unchecked!("no load was sent before this step");
    };
    let n = r.recorder.latency.len();
    let generator = [(0.5, r.quantile(0.5)), (0.99, r.quantile(0.99))];
    if n == 0 {
        unchecked!("the load got no answers to time");
    }
    let api = api(w);
    let query = r#"sum by (le) (istio_request_duration_milliseconds_bucket{reporter="source", source_workload="istio-ingressgateway"})"#;
    let before = buckets(&api, query, Some(unix_at(mark))).await;
    let seen = match w.counted_at {
        // The moment the request counts equalled the load's: the same scrapes hold exactly
        // the load's requests (anything later, such as an earlier scenario's straggler, is not).
        Some(at) => since(&buckets(&api, query, Some(at)).await, &before),
        // Scrapes trail the last answer: poll (bounded) until the histogram holds every request.
        None => {
            let started = Instant::now();
            loop {
                let now = since(&buckets(&api, query, None).await, &before);
                let total = now.last().map_or(0, |b| b.1);
                if total >= n || started.elapsed() > 2 * LAG {
                    break now;
                }
                tokio::time::sleep(INTERVAL / 2).await;
            }
        }
    };
    let total = seen.last().map_or(0, |b| b.1);
    if total != n {
        unchecked!(
            "the ingress gateway's histogram holds {total} requests since the load began, the generator timed {n}: the two cannot be compared"
        );
    }
    for (q, at) in generator {
        let Some((lower, upper)) = bucket_of_quantile(&seen, q) else {
            unchecked!("the ingress gateway's histogram is empty");
        };
        let hdr_ms = at.as_secs_f64() * 1000.0;
        promise!(
            lower <= hdr_ms && hdr_ms <= upper,
            "p{}: the generator measured {hdr_ms:.2} ms, but the mesh's histogram puts its p{} in ({lower}, {upper}] ms ({n} requests)",
            q * 100.0,
            q * 100.0
        );
        w.evidence(format!(
            "p{}: generator {hdr_ms:.2} ms, in the mesh's bucket ({lower}, {upper}] ms of {n} requests",
            q * 100.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[(f64, u64)]) -> Buckets {
        counts.to_vec()
    }

    #[test]
    fn finds_the_bucket_of_a_quantile_by_rank() {
        // 100 requests: 10 up to 25 ms, 85 more up to 50 ms, 5 more up to 100 ms.
        let b = hist(&[(25.0, 10), (50.0, 95), (100.0, 100), (f64::INFINITY, 100)]);
        assert_eq!(bucket_of_quantile(&b, 0.5), Some((25.0, 50.0)));
        assert_eq!(bucket_of_quantile(&b, 0.95), Some((25.0, 50.0)));
        assert_eq!(bucket_of_quantile(&b, 0.99), Some((50.0, 100.0)));
        assert_eq!(bucket_of_quantile(&b, 0.1), Some((0.0, 25.0)));
        assert_eq!(bucket_of_quantile(&hist(&[(f64::INFINITY, 0)]), 0.5), None);
    }

    #[test]
    fn counts_only_what_came_after_the_mark() {
        let before = hist(&[(25.0, 3), (50.0, 5), (f64::INFINITY, 5)]);
        let after = hist(&[(25.0, 3), (50.0, 15), (f64::INFINITY, 16)]);
        assert_eq!(
            since(&after, &before),
            hist(&[(25.0, 0), (50.0, 10), (f64::INFINITY, 11)])
        );
    }
}
