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
/// The timeline never holds more buckets than this; when a run outgrows it,
/// adjacent buckets are merged and the bucket width doubles.
pub const MAX_TIMELINE_BUCKETS: usize = 600;

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

/// One timeline bucket: completions during `[start_s, start_s + width_s)` of the
/// measured period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub start_s: u64,
    pub width_s: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: u64,
    /// For merged buckets this is the max of the parts' p99 (an upper bound).
    pub p99_us: u64,
    pub max_us: u64,
}

/// Per-second (or coarser, see [`MAX_TIMELINE_BUCKETS`]) throughput and latency.
#[derive(Debug, Clone)]
pub struct Timeline {
    width_s: u64,
    done: Vec<Bucket>,
    open_index: u64,
    open: Bucket,
    open_hist: Histogram<u64>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            width_s: 1,
            done: Vec::new(),
            open_index: 0,
            open: Bucket {
                width_s: 1,
                ..Bucket::default()
            },
            open_hist: new_histogram(),
        }
    }
}

impl Timeline {
    fn add(&mut self, at: Duration, latency_us: Option<u64>) {
        let idx = at.as_secs() / self.width_s;
        if idx != self.open_index {
            self.roll(idx);
        }
        self.open.requests += 1;
        match latency_us {
            Some(us) => self.open_hist.saturating_record(us),
            None => self.open.errors += 1,
        }
    }

    /// Closes the open bucket and opens bucket `idx` (late completions with a
    /// smaller index are folded into the open bucket; they are rare and bounded
    /// by the timeout).
    fn roll(&mut self, idx: u64) {
        if idx < self.open_index {
            return;
        }
        self.close_open();
        // Empty seconds still appear, so throughput plots show gaps as zero.
        while (self.done.len() as u64) < idx {
            let start_s = self.done.len() as u64 * self.width_s;
            self.done.push(Bucket {
                start_s,
                width_s: self.width_s,
                ..Bucket::default()
            });
        }
        while self.done.len() >= MAX_TIMELINE_BUCKETS {
            self.halve();
        }
        self.open_index = self.done.len() as u64;
        self.open = Bucket {
            start_s: self.open_index * self.width_s,
            width_s: self.width_s,
            ..Bucket::default()
        };
    }

    fn close_open(&mut self) {
        let h = &self.open_hist;
        if !h.is_empty() {
            self.open.p50_us = h.value_at_quantile(0.5);
            self.open.p99_us = h.value_at_quantile(0.99);
            self.open.max_us = h.max();
        }
        self.open_hist.reset();
        let idx = self.open_index as usize;
        if idx < self.done.len() {
            merge_into(&mut self.done[idx], &self.open);
        } else {
            self.done.push(self.open);
        }
    }

    fn halve(&mut self) {
        let old = std::mem::take(&mut self.done);
        self.width_s *= 2;
        for pair in old.chunks(2) {
            let mut b = pair[0];
            b.width_s = self.width_s;
            if let Some(next) = pair.get(1) {
                merge_into(&mut b, next);
            }
            self.done.push(b);
        }
    }

    /// All buckets including the one still open.
    pub fn buckets(&self) -> Vec<Bucket> {
        let mut copy = self.clone();
        if copy.open.requests > 0 {
            copy.close_open();
        }
        copy.done
    }

    pub fn width_s(&self) -> u64 {
        self.width_s
    }
}

fn merge_into(dst: &mut Bucket, src: &Bucket) {
    dst.requests += src.requests;
    dst.errors += src.errors;
    dst.p50_us = dst.p50_us.max(src.p50_us);
    dst.p99_us = dst.p99_us.max(src.p99_us);
    dst.max_us = dst.max_us.max(src.max_us);
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
        // Plain record only: in open loop the latency already counts from the
        // intended send time, so record_correct would double-correct.
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        self.latency.saturating_record(us);
        self.by_class[class_index(status)].saturating_record(us);
        if let Some(v) = version {
            let hist = if self.by_version.contains_key(v) {
                self.by_version.get_mut(v)
            } else if self.by_version.len() < MAX_VERSIONS {
                Some(
                    self.by_version
                        .entry(v.to_string())
                        .or_insert_with(new_histogram),
                )
            } else {
                Some(
                    self.by_version
                        .entry(OTHER_VERSION.to_string())
                        .or_insert_with(new_histogram),
                )
            };
            if let Some(h) = hist {
                h.saturating_record(us);
            }
        }
        *self.status.entry(status).or_insert(0) += 1;
        self.responses += 1;
        if status < 400 {
            self.ok += 1;
        }
        self.timeline.add(done_at, Some(us));
        self.last_done = self.last_done.max(done_at);
    }

    /// Records one request that got no response.
    pub fn error(&mut self, done_at: Duration, kind: ErrorKind) {
        self.errors.add(kind, 1);
        self.timeline.add(done_at, None);
        self.last_done = self.last_done.max(done_at);
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

    #[test]
    fn timeline_is_per_second_and_bounded() {
        let mut t = Timeline::default();
        for s in 0..5u64 {
            for _ in 0..=s {
                t.add(
                    Duration::from_secs(s) + Duration::from_millis(5),
                    Some(1000 * (s + 1)),
                );
            }
        }
        let b = t.buckets();
        assert_eq!(b.len(), 5);
        assert_eq!(b[3].requests, 4);
        assert_eq!(b[3].start_s, 3);
        assert_eq!(t.width_s(), 1);

        let mut t = Timeline::default();
        let hours = 3 * 3600u64;
        for s in (0..hours).step_by(7) {
            t.add(Duration::from_secs(s), Some(10));
        }
        let b = t.buckets();
        assert!(b.len() <= MAX_TIMELINE_BUCKETS, "{} buckets", b.len());
        assert!(t.width_s() > 1);
        assert_eq!(b.iter().map(|b| b.requests).sum::<u64>(), hours.div_ceil(7));
    }
}
