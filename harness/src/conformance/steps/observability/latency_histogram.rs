//! Latency: the mesh's request-duration histogram against the load generator's HDR record.
//!
//! Prometheus keeps only cumulative bucket counts, so "agree" means: for a quantile q, the
//! generator's q-quantile falls in the bucket holding the mesh's ceil(q n)-th fastest request.
//! The generator times from before the proxy sees a request to after it has answered, so it can
//! never see it faster: below the bucket is BROKEN. Above it, the difference is the mesh's
//! (BROKEN) only when it exceeds the generator's own measured lateness plus a millisecond of
//! loopback; within that it is UNCHECKED. A delay that puts the requests well inside one
//! bucket keeps the verdict from hanging on a busy host's jitter.

use std::time::Instant;

use cucumber::then;

use super::{HISTOGRAM_FLUSH, api, counted_and_timed, unix_at};
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

/// The bucket (lower, upper] holding the `rank`-th fastest request of the histogram.
fn bucket_of_rank(b: &Buckets, rank: u64) -> Option<(f64, f64)> {
    let n = b.last()?.1;
    if n == 0 || rank == 0 || rank > n {
        return None;
    }
    let at = b.iter().position(|(_, cum)| *cum >= rank)?;
    let lower = if at == 0 { 0.0 } else { b[at - 1].0 };
    Some((lower, b[at].0))
}

/// Loopback and the generator's reads, beyond its measured send lateness.
const SLACK_MS: f64 = 1.0;

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
    // How late the generator itself was (open loop: actual minus intended send time): a busy
    // generator host delays its sends and its reads alike, and that time is not the mesh's.
    let own_lag_ms = r.send_lag.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0);
    if n == 0 {
        unchecked!("the load got no answers to time");
    }
    let api = api(w);
    let selector = r#"reporter="source", source_workload="istio-ingressgateway""#;
    let query = format!("sum by (le) (istio_request_duration_milliseconds_bucket{{{selector}}})");
    // The mark waited until every histogram held every request counted before it.
    let before = buckets(&api, &query, Some(unix_at(mark))).await;
    // Envoy times a request into its histogram at its next stats flush (counts it at once):
    // poll (bounded) until the histogram holds every request of the load and every request
    // the ingress counted.
    let started = Instant::now();
    let seen = loop {
        let now = since(&buckets(&api, &query, None).await, &before);
        let total = now.last().map_or(0, |b| b.1);
        let (counted, timed) = counted_and_timed(&api, selector).await;
        if (total >= n && timed >= counted) || started.elapsed() > HISTOGRAM_FLUSH {
            break now;
        }
        tokio::time::sleep(INTERVAL / 2).await;
    };
    let total = seen.last().map_or(0, |b| b.1);
    // Requests that reached the ingress during the load from elsewhere may be in it too:
    // each shifts a rank by at most one, so the load's q-quantile lies between the buckets
    // of ranks ceil(q n) and ceil(q n) + extra.
    let extra = total.saturating_sub(n);
    if total < n || extra > n / 10 {
        unchecked!(
            "the ingress gateway's histogram holds {total} requests since the load began, the generator timed {n}: the two cannot be compared"
        );
    }
    for (q, at) in generator {
        let rank = ((q * n as f64).ceil() as u64).max(1);
        let (Some((lower, _)), Some((_, upper))) = (
            bucket_of_rank(&seen, rank),
            bucket_of_rank(&seen, rank + extra),
        ) else {
            unchecked!("the ingress gateway's histogram is empty");
        };
        let hdr_ms = at.as_secs_f64() * 1000.0;
        // The generator's clock runs around the proxy's: it can never see a request faster.
        promise!(
            lower <= hdr_ms,
            "p{}: the generator measured {hdr_ms:.2} ms, faster than the mesh's histogram allows: it puts its p{} in ({lower}, {upper}] ms ({n} requests)",
            q * 100.0,
            q * 100.0
        );
        if hdr_ms > upper {
            // Slower than the bucket: the mesh under-counts, unless the generator's own
            // lateness accounts for the difference.
            let excess = hdr_ms - upper;
            if excess <= own_lag_ms + SLACK_MS {
                unchecked!(
                    "p{}: the generator measured {hdr_ms:.2} ms, {excess:.1} ms past the mesh's bucket ({lower}, {upper}], but it was itself up to {own_lag_ms:.1} ms late: the difference may be the generator's",
                    q * 100.0
                );
            }
            crate::broken!(
                "p{}: the generator measured {hdr_ms:.2} ms, but the mesh's histogram puts its p{} in ({lower}, {upper}] ms ({n} requests); the generator was at most {own_lag_ms:.1} ms late",
                q * 100.0,
                q * 100.0
            );
        }
        w.evidence(format!(
            "p{}: generator {hdr_ms:.2} ms, in the mesh's bucket ({lower}, {upper}] ms of {n} requests{}",
            q * 100.0,
            if extra > 0 {
                format!(" ({extra} later requests in the histogram widen the bound)")
            } else {
                String::new()
            }
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
    fn finds_the_bucket_of_a_rank() {
        // 100 requests: 10 up to 25 ms, 85 more up to 50 ms, 5 more up to 100 ms.
        let b = hist(&[(25.0, 10), (50.0, 95), (100.0, 100), (f64::INFINITY, 100)]);
        assert_eq!(bucket_of_rank(&b, 50), Some((25.0, 50.0)));
        assert_eq!(bucket_of_rank(&b, 95), Some((25.0, 50.0)));
        assert_eq!(bucket_of_rank(&b, 99), Some((50.0, 100.0)));
        assert_eq!(bucket_of_rank(&b, 10), Some((0.0, 25.0)));
        assert_eq!(bucket_of_rank(&b, 101), None);
        assert_eq!(bucket_of_rank(&hist(&[(f64::INFINITY, 0)]), 1), None);
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
