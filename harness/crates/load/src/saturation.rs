//! Tells when the generator, not the target, held the open-loop schedule back.
//!
//! Every [`WINDOW`] each generator thread compares three things: how late its
//! schedule is (the intended time of its next unsent request against the
//! clock), whether that lag is shrinking, and how busy the thread was (time on
//! the CPU plus time waiting for one, from `/proc/thread-self/schedstat`). A
//! schedule can fall behind for two reasons:
//!
//! - the target is slow and every pooled connection is waiting on it: the
//!   generator idles, so its busy share is low. Latency counted from the
//!   intended send time blames the target, rightly;
//! - the generator cannot keep up (its core is saturated, or the machine gives
//!   it too little CPU): busy near 100% while the lag stays above [`LAG_BOUND`]
//!   and does not shrink. Latency then measures the generator's own queue.
//!
//! A window of the second kind is *saturated*; a run is saturated once one
//! thread had [`MIN_STRETCH`] of them in a row (a single window is a hiccup,
//! e.g. a neighbour taking the core for a few ms). Catching up after a target
//! stall also keeps the thread busy with a large lag, but the lag shrinks, so
//! it never counts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Length of one observation window.
pub const WINDOW: Duration = Duration::from_millis(100);
/// A schedule at most this late is on time (batching and scheduling noise).
pub const LAG_BOUND: Duration = Duration::from_millis(10);
/// Busy share (CPU + run-queue wait) from which the generator thread counts as the bottleneck.
pub const BUSY: f64 = 0.9;
/// Consecutive saturated windows that make a run saturated.
pub const MIN_STRETCH: u32 = 3;

/// Time the current thread has spent on a CPU and waiting for one, in ns.
pub struct ThreadClock {
    schedstat: Option<File>,
}

impl ThreadClock {
    /// For the calling thread; use it only from that thread.
    pub fn for_current_thread() -> ThreadClock {
        ThreadClock {
            schedstat: File::open("/proc/thread-self/schedstat").ok(),
        }
    }

    /// On-CPU plus run-queue time (schedstat), or on-CPU time alone when
    /// schedstat is unavailable.
    pub fn busy_ns(&self) -> u64 {
        if let Some(f) = &self.schedstat {
            let mut buf = [0u8; 96];
            if let Ok(n) = f.read_at(&mut buf, 0) {
                let mut fields = std::str::from_utf8(&buf[..n])
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(|x| x.parse::<u64>().unwrap_or(0));
                if let (Some(cpu), Some(wait)) = (fields.next(), fields.next()) {
                    return cpu + wait;
                }
            }
        }
        thread_cpu_ns()
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One thread's verdict so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Verdict {
    /// A stretch of [`MIN_STRETCH`] saturated windows happened.
    pub saturated: bool,
    /// Seconds of saturated windows (those of every stretch that counted).
    pub saturated_s: f64,
    /// Requests sent during those windows.
    pub sent_while_saturated: u64,
}

impl Verdict {
    /// Requests per second this thread managed while saturated.
    pub fn rate(&self) -> Option<f64> {
        (self.saturated && self.saturated_s > 0.0)
            .then(|| self.sent_while_saturated as f64 / self.saturated_s)
    }
}

/// The window-by-window judge of one generator thread.
pub struct Detector {
    clock: ThreadClock,
    at: Instant,
    busy_ns: u64,
    lag: Duration,
    sent: u64,
    /// Current stretch of saturated windows: count, seconds, requests.
    stretch: (u32, f64, u64),
    verdict: Verdict,
}

impl Detector {
    /// Starts the first window now; call from the generator thread.
    pub fn start(now: Instant) -> Detector {
        let clock = ThreadClock::for_current_thread();
        let busy_ns = clock.busy_ns();
        Detector {
            clock,
            at: now,
            busy_ns,
            lag: Duration::ZERO,
            sent: 0,
            stretch: (0, 0.0, 0),
            verdict: Verdict::default(),
        }
    }

    /// Closes a window: `lag` is how late the schedule is now, `sent` how many
    /// requests the thread has sent so far. Returns true while the thread is
    /// in a saturated stretch.
    pub fn window(&mut self, now: Instant, lag: Duration, sent: u64) -> bool {
        let wall = now.saturating_duration_since(self.at).as_nanos() as f64;
        let busy_ns = self.clock.busy_ns();
        let busy = if wall > 0.0 {
            busy_ns.saturating_sub(self.busy_ns) as f64 / wall
        } else {
            0.0
        };
        self.at = now;
        self.busy_ns = busy_ns;
        self.observe(wall / 1e9, busy, lag, sent)
    }

    /// [`Detector::window`] with the busy share already measured.
    fn observe(&mut self, secs: f64, busy: f64, lag: Duration, sent: u64) -> bool {
        let sat = judge(busy, lag, self.lag);
        let sent_now = sent.saturating_sub(self.sent);
        (self.lag, self.sent) = (lag, sent);
        self.stretch = if sat {
            (
                self.stretch.0 + 1,
                self.stretch.1 + secs,
                self.stretch.2 + sent_now,
            )
        } else {
            (0, 0.0, 0)
        };
        let (n, s, r) = self.stretch;
        if n == MIN_STRETCH {
            // The stretch now counts, its earlier windows included.
            self.verdict.saturated = true;
            self.verdict.saturated_s += s;
            self.verdict.sent_while_saturated += r;
        } else if n > MIN_STRETCH {
            self.verdict.saturated_s += secs;
            self.verdict.sent_while_saturated += sent_now;
        }
        n >= MIN_STRETCH
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
}

/// One window: saturated when the thread was busy, the schedule is more than
/// [`LAG_BOUND`] late, and it is not catching up.
pub fn judge(busy: f64, lag: Duration, lag_before: Duration) -> bool {
    busy >= BUSY && lag > LAG_BOUND && lag >= lag_before
}

/// The run's saturation, from its threads' verdicts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Saturation {
    /// Some generator thread could not keep to its schedule (see the module docs).
    pub saturated: bool,
    /// About how many requests per second the generator sent while saturated:
    /// what the saturated threads managed then, plus the asked share of the
    /// others. None when not saturated.
    pub rate: Option<f64>,
    /// Longest time any one thread spent saturated, seconds.
    pub saturated_s: f64,
}

impl Saturation {
    pub fn combine(threads: &[Verdict], asked_per_thread: f64) -> Saturation {
        let saturated = threads.iter().any(|v| v.saturated);
        Saturation {
            saturated,
            rate: saturated.then(|| {
                threads
                    .iter()
                    .map(|v| v.rate().unwrap_or(asked_per_thread))
                    .sum()
            }),
            saturated_s: threads.iter().map(|v| v.saturated_s).fold(0.0, f64::max),
        }
    }

    /// "generator saturated at ~38800/s" (None when not saturated).
    pub fn message(&self) -> Option<String> {
        self.rate
            .filter(|_| self.saturated)
            .map(|r| format!("generator saturated at ~{}/s", round_rate(r)))
    }
}

/// Two significant digits for rates of 100/s and more: the figure is approximate.
fn round_rate(r: f64) -> u64 {
    if r < 100.0 {
        return r.round() as u64;
    }
    let step = 10f64.powi(r.log10().floor() as i32 - 1);
    ((r / step).round() * step) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn only_a_busy_thread_falling_behind_is_saturated() {
        // Busy and falling further behind: saturated.
        assert!(judge(0.99, 50 * MS, 40 * MS));
        // Idle while behind: the target (a full pool) holds the schedule back.
        assert!(!judge(0.2, 500 * MS, 400 * MS));
        // Busy but catching up after a stall.
        assert!(!judge(1.0, 300 * MS, 400 * MS));
        // Busy and on time.
        assert!(!judge(1.0, 2 * MS, 1 * MS));
    }

    #[test]
    fn a_run_needs_a_stretch_of_saturated_windows() {
        let mut d = Detector::start(Instant::now());
        // One busy window with a lag spike is a hiccup.
        assert!(!d.observe(0.1, 1.0, 30 * MS, 100));
        assert!(!d.observe(0.1, 1.0, 2 * MS, 200));
        assert!(!d.verdict().saturated);
        // Three in a row, lag growing: saturated, all three windows counted.
        assert!(!d.observe(0.1, 0.95, 20 * MS, 300));
        assert!(!d.observe(0.1, 0.99, 40 * MS, 400));
        assert!(d.observe(0.1, 1.0, 60 * MS, 500));
        assert!(d.observe(0.1, 1.0, 80 * MS, 600));
        assert!(!d.observe(0.1, 1.0, 70 * MS, 700));
        let v = d.verdict();
        assert!(v.saturated);
        assert_eq!(v.sent_while_saturated, 400);
        assert!((v.saturated_s - 0.4).abs() < 1e-9, "{v:?}");
        assert_eq!(v.rate(), Some(1000.0));
    }

    #[test]
    fn the_run_combines_its_threads() {
        let sat = Verdict {
            saturated: true,
            saturated_s: 2.0,
            sent_while_saturated: 76_000,
        };
        let s = Saturation::combine(&[sat, Verdict::default()], 30_000.0);
        assert!(s.saturated);
        assert_eq!(s.rate, Some(68_000.0));
        assert_eq!(s.message().unwrap(), "generator saturated at ~68000/s");
        let s = Saturation::combine(&[Verdict::default()], 30_000.0);
        assert_eq!((s.saturated, s.rate, s.message()), (false, None, None));
        assert_eq!(round_rate(38_849.0), 39_000);
        assert_eq!(round_rate(1_234.0), 1_200);
        assert_eq!(round_rate(42.4), 42);
    }

    #[test]
    fn the_thread_clock_advances() {
        let c = ThreadClock::for_current_thread();
        let a = c.busy_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(c.busy_ns() > a);
    }
}
