//! Open-loop schedule: the fixed intended send time of every request.

use std::time::{Duration, Instant};

use crate::plan::{MAX_RATE, MIN_RATE, Stop};

/// `t + d`, never panicking: `d` is capped at [`crate::duration::MAX`]
/// (10,000 years), and an instant the clock cannot represent falls back to `t`.
/// Plans are range-checked ([`crate::LoadPlan::validate`]), so the caps never bite
/// in practice; they make the arithmetic total.
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(crate::duration::MAX)).unwrap_or(t)
}

/// `secs` as a Duration, saturating at [`crate::duration::MAX`]; NaN and
/// negatives are zero.
pub fn secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(secs)
            .unwrap_or(crate::duration::MAX)
            .min(crate::duration::MAX)
    }
}

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
    ///
    /// A rate outside `MIN_RATE..=MAX_RATE` (or NaN) is clamped into it and
    /// counts saturate, so no input panics; validated plans never need either.
    pub fn new(start: Instant, rate: f64, warmup: Duration, stop: Stop) -> Schedule {
        let rate = if rate.is_nan() {
            MIN_RATE
        } else {
            rate.clamp(MIN_RATE, MAX_RATE)
        };
        // Float-to-int casts saturate.
        let first_measured = (warmup.as_secs_f64() * rate).ceil() as u64;
        let measured = match stop {
            Stop::Requests(n) => n,
            Stop::Duration(d) => (d.as_secs_f64() * rate).ceil() as u64,
        };
        Schedule {
            start,
            rate,
            first_measured,
            total: first_measured.saturating_add(measured),
        }
    }

    /// Intended send time of request `i`. Computed from `i` rather than by
    /// adding intervals, so float error never accumulates into drift.
    pub fn at(&self, i: u64) -> Instant {
        after(self.start, secs(i as f64 / self.rate))
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

    /// Time the measured requests take to send: `measured / rate`.
    pub fn span(&self) -> Duration {
        secs(self.measured() as f64 / self.rate)
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

    #[test]
    fn absurd_inputs_saturate_instead_of_panicking() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        for rate in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e-300, 1e300] {
            for stop in [
                Stop::Requests(u64::MAX),
                Stop::Duration(Duration::MAX),
                Stop::Duration(day),
            ] {
                let s = Schedule::new(t0, rate, Duration::MAX, stop);
                assert!(s.total() >= s.measured());
                let _ = (s.at(0), s.at(u64::MAX), s.measure_start(), s.span());
            }
        }
        let s = Schedule::new(t0, 1e300, Duration::ZERO, Stop::Duration(day));
        assert_eq!(s.rate(), MAX_RATE);
        assert_eq!(after(t0, Duration::MAX), after(t0, crate::duration::MAX));
        assert_eq!(secs(f64::NAN), Duration::ZERO);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(1e300), crate::duration::MAX);
        assert_eq!(secs(1.5), Duration::from_millis(1500));
    }
}
