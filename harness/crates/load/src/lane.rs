//! Generator threads: each runs its share of a load on its own current-thread runtime and recorder.
//!
//! A run is split into *lanes*, one per thread. A lane never shares its
//! connections, schedule or histograms with another while the run goes on, so
//! there is no cross-thread lock or wake-up per request; the lanes' recorders
//! are merged exactly once the run is over, and their per-second timeline
//! parts join the run's timeline as each second ends.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Connector, ErrorKind};
use crate::error::{LoadError, Result};
use crate::http1;
use crate::record::{Recorder, body_version, new_histogram};
use crate::saturation::Verdict;
use crate::timeline::{SecondPart, Timeline};

/// What every lane of a run reads, and the timeline they all feed.
pub struct Shared {
    pub connector: Arc<Connector>,
    /// The hand-rolled HTTP/1.1 client's target when the plan is eligible.
    pub fast: Option<http1::Target>,
    pub measure_start: Instant,
    pub timeout: Duration,
    pub timeline: Mutex<Timeline>,
    /// The plan's cancel flag: once set, no request starts.
    pub cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A lane's measurements; locked by its own thread only (uncontended), and
/// once a second by the progress line.
pub struct LaneRec {
    pub rec: Recorder,
    /// Open loop: actual minus intended send time of every measured request, µs.
    pub send_lag: Histogram<u64>,
    part: SecondPart,
}

/// One generator thread's share of a run.
pub struct Lane {
    pub index: usize,
    pub shared: Arc<Shared>,
    rec: Mutex<LaneRec>,
    /// The lane is in a saturated stretch right now (for the progress line).
    pub saturated_now: AtomicBool,
}

/// What a lane reports when its thread is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaneOut {
    /// Most connections the lane had open at once.
    pub peak_connections: usize,
    pub verdict: Verdict,
}

impl Lane {
    pub fn new(index: usize, shared: Arc<Shared>) -> Lane {
        Lane {
            index,
            shared,
            rec: Mutex::new(LaneRec {
                rec: Recorder::default(),
                send_lag: new_histogram(),
                part: SecondPart::default(),
            }),
            saturated_now: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, LaneRec> {
        self.rec.lock().expect("lane recorder lock")
    }

    /// Records the outcome of a request whose latency counts from `origin`
    /// (open loop: its intended send time; `sent` is when it actually left).
    /// Requests that began before measurement (warmup) are not recorded.
    /// Returns the completion time.
    pub fn record(
        &self,
        origin: Instant,
        sent: Option<Instant>,
        res: Result<u16, ErrorKind>,
        body: &[u8],
    ) -> Instant {
        let done = Instant::now();
        let start = self.shared.measure_start;
        if origin < start {
            return done;
        }
        let at = done - start;
        // Parse outside the lock.
        let version = match res {
            Ok(_) => body_version(body),
            Err(_) => None,
        };
        let mut r = self.lock();
        if r.part.is_past(at) {
            self.hand_over(&mut r, at.as_secs());
        }
        let us = match res {
            Ok(status) => Some(r.rec.count_response(
                at,
                done.saturating_duration_since(origin),
                status,
                version.as_deref(),
            )),
            Err(kind) => {
                r.rec.count_error(at, kind);
                None
            }
        };
        r.part.add(us);
        if let Some(sent) = sent {
            let lag = sent.saturating_duration_since(origin).as_micros();
            r.send_lag
                .saturating_record(lag.min(u64::MAX as u128) as u64);
        }
        done
    }

    /// Hands a second that has ended over to the run's timeline; called about
    /// every 100 ms so a quiet lane's seconds are not merged late.
    pub fn tick(&self, now: Instant) {
        let Some(at) = now.checked_duration_since(self.shared.measure_start) else {
            return;
        };
        let mut r = self.lock();
        if r.part.is_past(at) {
            self.hand_over(&mut r, at.as_secs());
        }
    }

    /// Hands the last second over; the lane records nothing after this.
    pub fn finish(&self) {
        let mut r = self.lock();
        let next = r.part.second + 1;
        self.hand_over(&mut r, next);
    }

    fn hand_over(&self, r: &mut LaneRec, next_second: u64) {
        if r.part.requests > 0 {
            self.shared
                .timeline
                .lock()
                .expect("timeline lock")
                .add_part(&r.part);
        }
        r.part.advance(next_second);
    }
}

/// Runs `work` once per lane, each on a thread of its own with a
/// current-thread tokio runtime, and waits for all of them. Tasks a lane
/// spawns stay on its thread.
pub async fn on_threads<F, Fut>(lanes: &[Arc<Lane>], work: F) -> Result<Vec<LaneOut>>
where
    F: Fn(Arc<Lane>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = Result<LaneOut>> + 'static,
{
    let mut waits = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (lane, work) = (lane.clone(), work.clone());
        std::thread::Builder::new()
            .name(format!("meshtest-load-{}", lane.index))
            .spawn(move || {
                let out = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LoadError::Internal(format!("generator runtime: {e}")))
                    .and_then(|rt| rt.block_on(work(lane.clone())));
                lane.finish();
                let _ = tx.send(out);
            })
            .map_err(|e| LoadError::io("spawning", "generator thread", e))?;
        waits.push(rx);
    }
    let mut outs = Vec::with_capacity(waits.len());
    for rx in waits {
        let out = rx
            .await
            .map_err(|_| LoadError::Internal("a generator thread panicked".into()))?;
        outs.push(out?);
    }
    Ok(outs)
}

/// Calls [`Lane::tick`] every 100 ms until aborted, and `also` with the tick
/// time (the open loop's saturation windows).
pub fn spawn_ticker(
    lane: Arc<Lane>,
    mut also: impl FnMut(Instant) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::saturation::WINDOW);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // The actual time, not the tick's: a late tick is what saturation looks like.
            let now = Instant::now();
            lane.tick(now);
            also(now);
        }
    })
}

/// Whether a lane is saturated right now, for the progress line.
pub fn any_saturated(lanes: &[Arc<Lane>]) -> bool {
    lanes
        .iter()
        .any(|l| l.saturated_now.load(Ordering::Relaxed))
}
