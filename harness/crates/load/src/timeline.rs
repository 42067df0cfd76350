//! Per-second throughput and latency, bounded in memory, merged exactly across generator threads.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::record::new_histogram;

/// The timeline never holds more buckets than this; when a run outgrows it,
/// adjacent buckets are merged and the bucket width doubles.
pub const MAX_TIMELINE_BUCKETS: usize = 600;

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
    pub(crate) fn add(&mut self, at: Duration, latency_us: Option<u64>) {
        self.enter(at.as_secs());
        self.open.requests += 1;
        match latency_us {
            Some(us) => self.open_hist.saturating_record(us),
            None => self.open.errors += 1,
        }
    }

    /// Adds one generator thread's completions of one second. Each thread
    /// hands its seconds over in order, shortly after they end, so the
    /// merged percentiles are those of the union of the threads' samples.
    pub(crate) fn add_part(&mut self, part: &SecondPart) {
        if part.requests == 0 {
            return;
        }
        self.enter(part.second);
        self.open.requests += part.requests;
        self.open.errors += part.errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.open_hist.add(&part.hist);
    }

    /// Makes the bucket holding second `s` the open one.
    fn enter(&mut self, s: u64) {
        let idx = s / self.width_s;
        if idx != self.open_index {
            self.roll(idx);
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

    /// Several processes' timelines side by side (`--workers`): the widest bucket width wins,
    /// counts add, percentiles are the slowest part's (an upper bound, as for merged buckets).
    pub fn from_buckets(parts: impl IntoIterator<Item = Vec<Bucket>>) -> Timeline {
        let parts: Vec<Vec<Bucket>> = parts.into_iter().collect();
        let width = parts
            .iter()
            .flat_map(|p| p.iter().map(|b| b.width_s))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut done: Vec<Bucket> = Vec::new();
        for b in parts.iter().flatten() {
            let idx = (b.start_s / width) as usize;
            while done.len() <= idx {
                let start_s = done.len() as u64 * width;
                done.push(Bucket {
                    start_s,
                    width_s: width,
                    ..Bucket::default()
                });
            }
            merge_into(&mut done[idx], b);
        }
        let open_index = done.len() as u64;
        Timeline {
            width_s: width,
            done,
            open_index,
            open: Bucket {
                start_s: open_index * width,
                width_s: width,
                ..Bucket::default()
            },
            open_hist: new_histogram(),
        }
    }
}

fn merge_into(dst: &mut Bucket, src: &Bucket) {
    dst.requests += src.requests;
    dst.errors += src.errors;
    dst.p50_us = dst.p50_us.max(src.p50_us);
    dst.p99_us = dst.p99_us.max(src.p99_us);
    dst.max_us = dst.max_us.max(src.max_us);
}

/// One generator thread's completions during one second, before they join
/// the run's [`Timeline`].
#[derive(Debug, Clone)]
pub struct SecondPart {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Default for SecondPart {
    fn default() -> Self {
        SecondPart {
            second: 0,
            requests: 0,
            errors: 0,
            hist: new_histogram(),
        }
    }
}

impl SecondPart {
    /// Counts one completion at `at`. Returns true when `at` lies in a later
    /// second: the caller must hand this part over ([`SecondPart::advance`])
    /// first. Late completions (an earlier second) count in this one.
    pub fn is_past(&self, at: Duration) -> bool {
        at.as_secs() > self.second
    }

    pub fn add(&mut self, latency_us: Option<u64>) {
        self.requests += 1;
        match latency_us {
            Some(us) => self.hist.saturating_record(us),
            None => self.errors += 1,
        }
    }

    /// Empties the part and moves it to second `s` (never backwards).
    pub fn advance(&mut self, s: u64) {
        self.second = self.second.max(s);
        self.requests = 0;
        self.errors = 0;
        self.hist.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn parts_of_two_threads_merge_like_one_recorder() {
        // The same samples, once through one timeline and once split between
        // two threads' parts: identical buckets, percentiles included.
        let mut one = Timeline::default();
        let mut merged = Timeline::default();
        let mut parts = [SecondPart::default(), SecondPart::default()];
        for s in 0..4u64 {
            for k in 0..100u64 {
                let at = Duration::from_secs(s) + Duration::from_millis(k * 9);
                let lat = (k % 2 == 0).then_some(100 + k * k * (s + 1));
                one.add(at, lat);
                let p = &mut parts[(k % 2) as usize];
                if p.is_past(at) {
                    merged.add_part(p);
                    p.advance(at.as_secs());
                }
                p.add(lat);
            }
        }
        for p in &parts {
            merged.add_part(p);
        }
        assert_eq!(one.buckets(), merged.buckets());
        assert_eq!(merged.buckets()[2].errors, 50);
    }
}
