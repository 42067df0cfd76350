//! Live progress on stderr about once per second.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lane::{Lane, any_saturated};
use crate::record::new_histogram;

/// Prints progress until dropped. On a terminal the line is rewritten in place;
/// otherwise (CI logs, pipes) one plain line per second.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Progress {
    /// Reads the generator threads' recorders once a second (a short,
    /// uncontended lock on each).
    pub fn start(lanes: Vec<Arc<Lane>>, asked: Option<f64>, measure_start: Instant) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last_total = 0u64;
            let mut latency = new_histogram();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let (mut total, mut failed) = (0, 0);
                latency.reset();
                for lane in &lanes {
                    let r = lane.lock();
                    total += r.rec.total();
                    failed += r.rec.failed();
                    let _ = latency.add(&r.rec.latency);
                }
                let p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
                // Said as it happens, so nobody reads the latencies that
                // follow as the target's.
                let saturated = if any_saturated(&lanes) {
                    " | GENERATOR SATURATED: it cannot keep the asked rate"
                } else {
                    ""
                };
                let line = if now < measure_start {
                    format!("warmup, {:.1}s to go", (measure_start - now).as_secs_f64())
                } else {
                    let secs = (now - measure_start).as_secs_f64();
                    let asked = asked
                        .map(|a| format!(" (asked {a:.0})"))
                        .unwrap_or_default();
                    format!(
                        "[{secs:5.1}s] {} req/s{asked} | total {total} | errors {failed} | p99 {p99_ms:.2} ms{saturated}",
                        total.saturating_sub(last_total)
                    )
                };
                last_total = total;
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Progress { task, tty }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            // Leave the cursor on a fresh line after the in-place updates.
            eprintln!();
        }
    }
}
