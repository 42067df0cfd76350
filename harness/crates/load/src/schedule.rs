//! Open-loop schedule: the fixed intended send time of every request.

use std::time::{Duration, Instant};

use crate::plan::Stop;

/// Request `i` is intended to leave at `start + i / rate`, whatever happened to
/// earlier requests. Latency is measured from that instant (wrk2 style), so a
/// stalled server cannot slow the schedule down and hide its own stall.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    first_measured: u64,
    total: u64,
}

impl Schedule {
    /// Warmup requests come first (`ceil(warmup * rate)` of them), then the
    /// measured ones: `n` for `Stop::Requests(n)`, or every intended time inside
    /// the measured duration.
    pub fn new(start: Instant, rate: f64, warmup: Duration, stop: Stop) -> Schedule {
        let first_measured = (warmup.as_secs_f64() * rate).ceil() as u64;
        let measured = match stop {
            Stop::Requests(n) => n,
            Stop::Duration(d) => (d.as_secs_f64() * rate).ceil() as u64,
        };
        Schedule {
            start,
            rate,
            first_measured,
            total: first_measured + measured,
        }
    }

    /// Intended send time of request `i`. Computed from `i` rather than by
    /// adding intervals, so float error never accumulates into drift.
    pub fn at(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Number of requests to send, warmup included.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Number of measured requests.
    pub fn measured(&self) -> u64 {
        self.total - self.first_measured
    }

    /// Start of measurement: requests intended before it are warmup.
    pub fn measure_start(&self) -> Instant {
        self.at(self.first_measured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_intended_times() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            2000.0,
            Duration::ZERO,
            Stop::Duration(Duration::from_secs(10)),
        );
        assert_eq!(s.total(), 20_000);
        assert_eq!(s.at(0), t0);
        assert_eq!(s.at(1) - t0, Duration::from_micros(500));
        assert_eq!(s.at(19_999) - t0, Duration::from_micros(9_999_500));
        assert_eq!(s.measure_start(), t0);
    }

    #[test]
    fn warmup_precedes_measured_requests() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 100.0, Duration::from_secs(2), Stop::Requests(50));
        assert_eq!(s.total(), 250);
        assert_eq!(s.measured(), 50);
        assert_eq!(s.measure_start() - t0, Duration::from_secs(2));
    }
}
