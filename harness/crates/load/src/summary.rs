//! summary.json: the versioned, machine-readable result of a run.
//!
//! The schema is committed as `schema/summary.schema.json`; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::ErrorKind;
use crate::engine::LoadResult;
use crate::plan::Mode;
use crate::record::CLASS_NAMES;
use crate::threshold::ThresholdOut;

/// 2 added `thresholds`; 3 adds `threads`, `connections_used`, `saturation`
/// and the thresholds' `reason`. Version 1 and 2 files still load (the new
/// fields take their defaults: one thread, nothing saturated).
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub tool: String,
    pub tool_version: String,
    pub name: String,
    pub url: String,
    pub method: String,
    /// "open" (fixed rate) or "closed" (fixed connections).
    pub mode: String,
    pub http2: bool,
    /// Closed loop: the connection count; open loop: the connection pool's cap.
    pub connections: u64,
    /// Most connections open at once (HTTP/2: one per generator thread).
    #[serde(default)]
    pub connections_used: u64,
    /// Generator threads.
    #[serde(default = "one")]
    pub threads: u64,
    pub tenant: Option<String>,
    pub tier: Option<String>,
    /// RFC 3339 UTC time measurement began.
    pub started_at: String,
    pub warmup_s: f64,
    /// Start of measurement to last completion.
    pub duration_s: f64,
    pub rate: Rate,
    pub requests: Requests,
    /// Latency of all responses (any status). Open loop: from intended send time.
    pub latency_ms: Latency,
    /// Responses by status code, e.g. {"200": 10}.
    pub status_counts: BTreeMap<String, u64>,
    /// Requests without a response by kind: connect, reset, tls, timeout, other.
    pub error_counts: BTreeMap<String, u64>,
    /// Latency per status class ("2xx", ...), only classes that occurred.
    pub status_classes: BTreeMap<String, Group>,
    /// Latency per upstream "version" found in JSON response bodies.
    pub versions: BTreeMap<String, Group>,
    pub timeline: TimelineOut,
    /// `--workers`: what each worker process measured (the rest of the summary is their merge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<crate::workers::WorkerRow>,
    /// Whether the generator kept the open-loop schedule.
    #[serde(default)]
    pub saturation: SaturationOut,
    /// `--threshold` rules and how they came out, in the order given.
    #[serde(default)]
    pub thresholds: Vec<ThresholdOut>,
}

fn one() -> u64 {
    1
}

/// Whether the generator, not the target, held the open-loop schedule back
/// (see [`crate::saturation`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SaturationOut {
    /// True when a generator thread was busy and its schedule more than
    /// `lag_bound_ms` late, and not catching up, for a stretch of windows.
    pub saturated: bool,
    /// About how many requests per second the generator managed while
    /// saturated; null when not saturated.
    pub rate: Option<f64>,
    /// Seconds a generator thread spent saturated.
    pub saturated_s: f64,
    /// How late the schedule may be before it counts as behind.
    pub lag_bound_ms: f64,
    /// Open loop: actual minus intended send time of the measured requests;
    /// null in closed loop.
    pub send_lag_ms: Option<Lag>,
}

/// Send lag percentiles, milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lag {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl SaturationOut {
    fn from_result(r: &LoadResult) -> SaturationOut {
        let ms = |us: u64| us as f64 / 1000.0;
        SaturationOut {
            saturated: r.saturation.saturated,
            rate: r.saturation.rate.map(|x| x.round()),
            saturated_s: round3(r.saturation.saturated_s),
            lag_bound_ms: ms(crate::saturation::LAG_BOUND.as_micros() as u64),
            send_lag_ms: r.send_lag.as_ref().map(|h| Lag {
                p50: ms(h.value_at_quantile(0.5)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
            }),
        }
    }

    /// "generator saturated at ~38000/s" when saturated.
    pub fn message(&self) -> Option<String> {
        crate::saturation::Saturation {
            saturated: self.saturated,
            rate: self.rate,
            saturated_s: self.saturated_s,
        }
        .message()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    /// Requests per second asked for; null in closed loop.
    pub asked: Option<f64>,
    /// Completed requests per second of measurement.
    pub achieved: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Requests {
    /// ok + errors.
    pub total: u64,
    /// Responses with status 1xx-3xx.
    pub ok: u64,
    /// http_errors + transport_errors.
    pub errors: u64,
    /// Responses with status >= 400.
    pub http_errors: u64,
    /// Requests that got no response (see error_counts).
    pub transport_errors: u64,
}

/// Milliseconds; all zero when there were no responses (check requests.ok).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    #[serde(rename = "p99.99")]
    pub p99_99: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            min: ms(h.min()),
            mean: round3(h.mean() / 1000.0),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            p99_99: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Group {
    pub count: u64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineOut {
    /// Width of each bucket in seconds (1 unless the run outgrew the bucket cap).
    pub bucket_s: u64,
    pub buckets: Vec<BucketOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BucketOut {
    /// Bucket start, seconds from the start of measurement.
    pub t_s: u64,
    /// Seconds of the bucket inside the measured period (the last one is often partial).
    pub span_s: f64,
    /// Completions in the bucket (responses and errors).
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl TimelineOut {
    fn from_result(r: &LoadResult) -> TimelineOut {
        let timeline = &r.recorder.timeline;
        let buckets = timeline
            .buckets()
            .iter()
            .map(|b| {
                let end = (b.start_s + b.width_s) as f64;
                let span = (end.min(r.elapsed.as_secs_f64()) - b.start_s as f64).max(0.001);
                (b, round3(span))
            })
            .map(|(b, span_s)| BucketOut {
                t_s: b.start_s,
                span_s,
                requests: b.requests,
                errors: b.errors,
                rps: round3(b.requests as f64 / span_s),
                p50_ms: b.p50_us as f64 / 1000.0,
                p99_ms: b.p99_us as f64 / 1000.0,
                max_ms: b.max_us as f64 / 1000.0,
            })
            .collect();
        TimelineOut {
            bucket_s: timeline.width_s(),
            buckets,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Summary {
    pub fn from_result(name: &str, r: &LoadResult) -> Summary {
        let rec = &r.recorder;
        let group = |h: &Histogram<u64>| Group {
            count: h.len(),
            latency_ms: Latency::from_histogram(h),
        };
        let status_classes = CLASS_NAMES
            .iter()
            .zip(rec.by_class.iter())
            .filter(|(_, h)| !h.is_empty())
            .map(|(n, h)| (n.to_string(), group(h)))
            .collect();
        let versions = rec
            .by_version
            .iter()
            .map(|(v, h)| (v.clone(), group(h)))
            .collect();
        let connections = match r.mode {
            Mode::Open {
                max_connections, ..
            } => max_connections,
            Mode::Closed { connections } => connections,
        } as u64;
        let transport_errors = rec.errors.total();
        Summary {
            schema_version: SCHEMA_VERSION,
            tool: "meshtest-load".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            name: name.into(),
            url: r.url.clone(),
            method: r.method.clone(),
            mode: r.mode_name().into(),
            http2: r.http2,
            connections,
            connections_used: r.connections_used as u64,
            threads: r.threads as u64,
            tenant: r.tenant.clone(),
            tier: r.tier.clone(),
            started_at: crate::report::rfc3339(r.started_at),
            warmup_s: round3(r.warmup.as_secs_f64()),
            duration_s: round3(r.elapsed.as_secs_f64()),
            rate: Rate {
                asked: r.asked_rate(),
                achieved: round3(r.achieved_rate()),
            },
            requests: Requests {
                total: rec.total(),
                ok: rec.ok,
                errors: rec.failed(),
                http_errors: rec.responses - rec.ok,
                transport_errors,
            },
            latency_ms: Latency::from_histogram(&rec.latency),
            status_counts: rec
                .status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            error_counts: ErrorKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), rec.errors.get(*k)))
                .collect(),
            status_classes,
            versions,
            timeline: TimelineOut::from_result(r),
            workers: Vec::new(),
            saturation: SaturationOut::from_result(r),
            thresholds: Vec::new(),
        }
    }

    /// Requests that got an HTTP response, any status.
    pub fn responses(&self) -> u64 {
        self.requests
            .total
            .saturating_sub(self.requests.transport_errors)
    }

    /// Share of requests that did not end in a 1xx-3xx response.
    pub fn error_rate(&self) -> f64 {
        if self.requests.total == 0 {
            0.0
        } else {
            self.requests.errors as f64 / self.requests.total as f64
        }
    }
}
