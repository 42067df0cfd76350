//! Constant-memory recording: HDR histograms, counters and a bounded timeline.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::client::ErrorKind;

/// Histogram range in microseconds: 1 µs .. 60 s, 3 significant digits.
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;
/// At most this many distinct upstream versions get their own histogram;
/// further ones are pooled under [`OTHER_VERSION`] so memory stays bounded.
pub const MAX_VERSIONS: usize = 32;
pub const OTHER_VERSION: &str = "(other)";

pub use crate::timeline::{Bucket, MAX_TIMELINE_BUCKETS, Timeline};

/// A new empty latency histogram with the crate-wide bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Top-level string field "version" of a JSON body, if any (the meshtest echo
/// agent answers {"service","version","pod",...}).
pub fn body_version(body: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct V<'a> {
        #[serde(borrow, default)]
        version: Option<Cow<'a, str>>,
    }
    // Cheap pre-check so non-JSON bodies cost nothing.
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice::<V<'_>>(body).ok()?.version
}

/// Status class index 0..=4 for 1xx..5xx; anything else lands in 5xx.
fn class_index(status: u16) -> usize {
    match status / 100 {
        1..=5 => (status / 100 - 1) as usize,
        _ => 4,
    }
}

pub const CLASS_NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counts per [`ErrorKind`].
#[derive(Debug, Clone, Default)]
pub struct ErrorCounts {
    counts: [u64; 5],
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        self.counts[kind as usize] += n;
    }
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.counts[kind as usize]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Everything measured during a run. No per-request storage: memory depends
/// only on the number of distinct status codes and versions (both capped).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of every response (any status), µs, from the intended send time
    /// in open loop and the actual send time in closed loop.
    pub latency: Histogram<u64>,
    pub by_class: [Histogram<u64>; 5],
    pub by_version: HashMap<String, Histogram<u64>>,
    pub status: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
    pub timeline: Timeline,
    /// Responses with status < 400.
    pub ok: u64,
    /// Responses of any status.
    pub responses: u64,
    /// Offset of the last completion from the start of measurement.
    pub last_done: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: new_histogram(),
            by_class: std::array::from_fn(|_| new_histogram()),
            by_version: HashMap::new(),
            status: BTreeMap::new(),
            errors: ErrorCounts::default(),
            timeline: Timeline::default(),
            ok: 0,
            responses: 0,
            last_done: Duration::ZERO,
        }
    }
}

impl Recorder {
    /// Records one response. `done_at` is the completion offset from the start
    /// of measurement; `latency` is already measured from the right origin.
    pub fn response(
        &mut self,
        done_at: Duration,
        latency: Duration,
        status: u16,
        version: Option<&str>,
    ) {
        let us = self.count_response(done_at, latency, status, version);
        self.timeline.add(done_at, Some(us));
    }

    /// Records one request that got no response.
    pub fn error(&mut self, done_at: Duration, kind: ErrorKind) {
        self.count_error(done_at, kind);
        self.timeline.add(done_at, None);
    }

    /// [`Recorder::response`] without the timeline (a generator thread feeds
    /// the run's timeline itself); returns the latency in µs.
    pub(crate) fn count_response(
        &mut self,
        done_at: Duration,
        latency: Duration,
        status: u16,
        version: Option<&str>,
    ) -> u64 {
        // Plain record only: in open loop the latency already counts from the
        // intended send time, so record_correct would double-correct.
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.latency.saturating_record(us);
        self.by_class[class_index(status)].saturating_record(us);
        if let Some(v) = version {
            self.version_histogram(v).saturating_record(us);
        }
        *self.status.entry(status).or_insert(0) += 1;
        self.responses += 1;
        if status < 400 {
            self.ok += 1;
        }
        self.last_done = self.last_done.max(done_at);
        us
    }

    /// [`Recorder::error`] without the timeline.
    pub(crate) fn count_error(&mut self, done_at: Duration, kind: ErrorKind) {
        self.errors.add(kind, 1);
        self.last_done = self.last_done.max(done_at);
    }

    /// The histogram of version `v`: its own while fewer than
    /// [`MAX_VERSIONS`] exist, else the shared [`OTHER_VERSION`] one.
    fn version_histogram(&mut self, v: &str) -> &mut Histogram<u64> {
        let key = if self.by_version.contains_key(v) || self.by_version.len() < MAX_VERSIONS {
            v
        } else {
            OTHER_VERSION
        };
        if !self.by_version.contains_key(key) {
            self.by_version.insert(key.to_string(), new_histogram());
        }
        self.by_version.get_mut(key).expect("inserted above")
    }

    /// Adds another recorder's counts and histograms (all but the timeline,
    /// which generator threads merge as they go). Histograms with the same
    /// bounds add exactly: the merged percentiles are those of all samples.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        for (mine, theirs) in self.by_class.iter_mut().zip(&other.by_class) {
            let _ = mine.add(theirs);
        }
        let mut versions: Vec<_> = other.by_version.iter().collect();
        versions.sort_by(|a, b| a.0.cmp(b.0));
        for (v, h) in versions {
            let _ = self.version_histogram(v).add(h);
        }
        for (status, n) in &other.status {
            *self.status.entry(*status).or_insert(0) += n;
        }
        for kind in ErrorKind::ALL {
            self.errors.add(kind, other.errors.get(kind));
        }
        self.ok += other.ok;
        self.responses += other.responses;
        self.last_done = self.last_done.max(other.last_done);
    }

    /// Requests that completed (responses + transport errors).
    pub fn total(&self) -> u64 {
        self.responses + self.errors.total()
    }

    /// Requests that did not end in a 1xx-3xx response.
    pub fn failed(&self) -> u64 {
        self.total() - self.ok
    }

    pub fn class_histogram(&self, class: &str) -> Option<&Histogram<u64>> {
        CLASS_NAMES
            .iter()
            .position(|c| *c == class)
            .map(|i| &self.by_class[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_json_body() {
        assert_eq!(
            body_version(br#"{"service":"a","version":"v2","pod":"p"}"#).as_deref(),
            Some("v2")
        );
        assert_eq!(
            body_version(br#" {"version":"v\"1"}"#).as_deref(),
            Some("v\"1")
        );
        assert_eq!(body_version(br#"{"version":3}"#), None);
        assert_eq!(body_version(b"ok"), None);
        assert_eq!(body_version(b""), None);
    }

    #[test]
    fn counts_and_classes() {
        let mut r = Recorder::default();
        r.response(
            Duration::from_millis(10),
            Duration::from_millis(2),
            200,
            Some("v1"),
        );
        r.response(
            Duration::from_millis(20),
            Duration::from_millis(3),
            503,
            Some("v2"),
        );
        r.error(Duration::from_millis(30), ErrorKind::Connect);
        assert_eq!(r.total(), 3);
        assert_eq!(r.ok, 1);
        assert_eq!(r.failed(), 2);
        assert_eq!(r.status[&503], 1);
        assert_eq!(r.errors.get(ErrorKind::Connect), 1);
        assert_eq!(r.class_histogram("5xx").unwrap().len(), 1);
        assert_eq!(r.by_version.len(), 2);
    }

    #[test]
    fn merged_recorders_equal_one_recorder() {
        let (mut one, mut a, mut b) = (
            Recorder::default(),
            Recorder::default(),
            Recorder::default(),
        );
        for i in 0..1000u64 {
            let at = Duration::from_millis(i);
            let lat = Duration::from_micros(50 + i * i % 7919);
            let status = if i % 10 == 0 { 503 } else { 200 };
            let v = format!("v{}", i % 3);
            one.response(at, lat, status, Some(&v));
            let part = if i % 2 == 0 { &mut a } else { &mut b };
            part.count_response(at, lat, status, Some(&v));
        }
        one.error(Duration::from_secs(2), ErrorKind::Timeout);
        b.count_error(Duration::from_secs(2), ErrorKind::Timeout);
        a.merge(&b);
        assert_eq!(a.latency, one.latency);
        assert_eq!(a.by_class, one.by_class);
        assert_eq!(a.by_version, one.by_version);
        assert_eq!(a.status, one.status);
        assert_eq!(
            (a.ok, a.responses, a.total()),
            (one.ok, one.responses, one.total())
        );
        assert_eq!(a.last_done, one.last_done);
        assert_eq!(
            a.latency.value_at_quantile(0.99),
            one.latency.value_at_quantile(0.99)
        );
    }

    #[test]
    fn versions_are_capped() {
        let mut r = Recorder::default();
        for i in 0..(MAX_VERSIONS + 10) {
            r.response(
                Duration::ZERO,
                Duration::from_millis(1),
                200,
                Some(&format!("v{i}")),
            );
        }
        assert_eq!(r.by_version.len(), MAX_VERSIONS + 1);
        assert_eq!(r.by_version[OTHER_VERSION].len(), 10);
    }
}
