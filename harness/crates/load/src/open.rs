//! Open loop on one generator thread: its slice of the schedule, a dispatcher and a bounded pool of connection slots.
//!
//! Request `i` of the run belongs to lane `i % threads`. The lane's dispatcher
//! sleeps on a [`PreciseTimer`] until its next request is due, then hands every
//! due request to an idle slot (one kept-alive connection each), opening a new
//! slot while the pool is below its cap. When every slot is busy at the cap,
//! due requests wait (and the wait counts, latency being measured from the
//! intended send time) until a slot frees up; a slot that finishes takes an
//! overdue request itself, so catching up needs no dispatcher wake-up per
//! request.
//!
//! Sends are batched: after a round the dispatcher sleeps at least `batch`,
//! so at high rates it wakes once per batch rather than once per request
//! (wrk2 does the same with its 1 ms timers), and the responses to a round
//! come back together, which saves wake-ups on both sides. A request's
//! lateness is part of its latency either way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::channel::{Channel, H2Conn};
use crate::error::{LoadError, Result};
use crate::lane::{Lane, LaneOut, spawn_ticker};
use crate::saturation::Detector;
use crate::schedule::Schedule;
use crate::timer::PreciseTimer;

/// No request waiting in a slot.
const NO_JOB: u64 = u64::MAX;

/// How one lane takes part in the open loop.
#[derive(Debug, Clone, Copy)]
pub struct LanePlan {
    pub schedule: Schedule,
    /// This lane's requests are `index, index + stride, ...` of the schedule.
    pub stride: u64,
    /// Most connections (slots) this lane opens.
    pub cap: usize,
    /// Least time between two dispatcher rounds.
    pub batch: Duration,
    pub http2: bool,
}

/// A connection slot: one kept-alive connection, one request at a time.
struct Slot {
    job: AtomicU64,
    wake: Notify,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Arc<Slot>>,
    open: usize,
    peak: usize,
}

/// The lane's schedule slice and pool, shared by its dispatcher and slots
/// (all on one thread: the locks are never contended).
struct OpenLane {
    lane: Arc<Lane>,
    plan: LanePlan,
    first: u64,
    count: u64,
    /// Next unclaimed request (index into this lane's slice).
    next: AtomicU64,
    pool: Mutex<Pool>,
    /// The dispatcher waits for a slot to go idle.
    dispatcher_waits: AtomicBool,
    slot_idle: Notify,
    h2: Option<Arc<H2Conn>>,
}

/// What the dispatcher does next.
enum Next {
    /// Sleep until the next request is due.
    At(Instant),
    /// Due requests wait for a slot.
    PoolFull,
    /// Every request of the lane is claimed.
    Done,
}

impl OpenLane {
    fn intended(&self, j: u64) -> Instant {
        self.plan.schedule.at(self
            .first
            .saturating_add(j.saturating_mul(self.plan.stride)))
    }

    /// Claims the next request if it was due a whole batch before `now`: the
    /// dispatcher has had its round for it, so the schedule is behind (the
    /// pool was full) and a slot that just finished sends it at once. On
    /// schedule, requests leave only in the dispatcher's rounds: sends
    /// spread between rounds would spread the responses too, and each
    /// response that arrives alone wakes the thread (and the target) once
    /// more: against Envoy at 30,000/s that cost about 10% more CPU per
    /// request.
    fn claim_overdue(&self, now: Instant) -> Option<u64> {
        // A cancelled run starts nothing new, also from a slot that never waits for the
        // dispatcher (a lane behind its schedule claims overdue requests itself).
        if self.lane.shared.cancelled() {
            return None;
        }
        let j = self.next.load(Relaxed);
        (j < self.count && self.intended(j) + self.plan.batch <= now).then(|| {
            self.next.store(j + 1, Relaxed);
            j
        })
    }

    fn all_claimed(&self) -> bool {
        self.next.load(Relaxed) >= self.count || self.lane.shared.cancelled()
    }

    /// How late the schedule is: now minus the intended time of the next
    /// unclaimed request (zero when it is not due yet).
    fn lag(&self, now: Instant) -> Duration {
        let j = self.next.load(Relaxed);
        if j >= self.count {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.intended(j))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().expect("pool lock")
    }

    /// Puts a slot that found nothing due back in the pool.
    fn park(&self, slot: &Arc<Slot>) {
        self.pool().idle.push(slot.clone());
        self.nudge();
    }

    /// Hands every due request to a slot; says what to wait for next.
    fn assign_due(self: &Arc<Self>, now: Instant, slots: &mut JoinSet<()>) -> Next {
        loop {
            if self.lane.shared.cancelled() {
                // Everything left counts as claimed, so idle slots exit too.
                self.next.fetch_max(self.count, Relaxed);
                return Next::Done;
            }
            let j = self.next.load(Relaxed);
            if j >= self.count {
                return Next::Done;
            }
            let t = self.intended(j);
            if t > now {
                return Next::At(t);
            }
            let mut pool = self.pool();
            if let Some(slot) = pool.idle.pop() {
                drop(pool);
                self.next.store(j + 1, Relaxed);
                slot.job.store(j, Relaxed);
                slot.wake.notify_one();
            } else if pool.open < self.plan.cap {
                pool.open += 1;
                pool.peak = pool.peak.max(pool.open);
                drop(pool);
                self.next.store(j + 1, Relaxed);
                let slot = Arc::new(Slot {
                    job: AtomicU64::new(NO_JOB),
                    wake: Notify::new(),
                });
                slots.spawn(slot_loop(self.clone(), slot, j));
            } else {
                return Next::PoolFull;
            }
        }
    }

    /// Waits until some slot is idle, or busy slots have claimed every request.
    async fn wait_for_idle(&self) {
        let notified = self.slot_idle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.dispatcher_waits.store(true, Relaxed);
        if self.pool().idle.is_empty() && !self.all_claimed() {
            notified.await;
        }
        self.dispatcher_waits.store(false, Relaxed);
    }

    /// Tells a waiting dispatcher that the pool changed.
    fn nudge(&self) {
        if self.dispatcher_waits.load(Relaxed) {
            self.slot_idle.notify_waiters();
        }
    }
}

/// Runs this lane's share of the open loop to completion.
pub async fn run_lane(lane: Arc<Lane>, plan: LanePlan) -> Result<LaneOut> {
    let first = lane.index as u64;
    let total = plan.schedule.total();
    let count = total.saturating_sub(first).div_ceil(plan.stride.max(1));
    let ol = Arc::new(OpenLane {
        lane: lane.clone(),
        plan,
        first,
        count,
        next: AtomicU64::new(0),
        pool: Mutex::new(Pool::default()),
        dispatcher_waits: AtomicBool::new(false),
        slot_idle: Notify::new(),
        h2: plan.http2.then(|| Arc::new(H2Conn::default())),
    });
    let verdict = Arc::new(Mutex::new(Detector::start(Instant::now())));
    let ticker = {
        let (ol, verdict) = (ol.clone(), verdict.clone());
        spawn_ticker(lane.clone(), move |now| {
            let sent = ol.next.load(Relaxed);
            let sat = verdict
                .lock()
                .expect("detector lock")
                .window(now, ol.lag(now), sent);
            ol.lane.saturated_now.store(sat, Relaxed);
        })
    };
    let mut slots = JoinSet::new();
    let res = dispatch(&ol, &mut slots).await;
    // Everything is claimed: wake the idle slots so they exit, then wait for
    // the busy ones to finish their last request.
    for slot in std::mem::take(&mut ol.pool().idle) {
        slot.wake.notify_one();
    }
    while slots.join_next().await.is_some() {}
    ticker.abort();
    res?;
    let verdict = verdict.lock().expect("detector lock").verdict();
    let peak = ol.pool().peak;
    Ok(LaneOut {
        // HTTP/2 multiplexes every slot over one connection per lane.
        peak_connections: if plan.http2 { peak.min(1) } else { peak },
        verdict,
    })
}

async fn dispatch(ol: &Arc<OpenLane>, slots: &mut JoinSet<()>) -> Result<()> {
    let mut timer =
        PreciseTimer::new().map_err(|e| LoadError::io("creating", "schedule timer", e))?;
    loop {
        let now = Instant::now();
        match ol.assign_due(now, slots) {
            Next::Done => return Ok(()),
            Next::PoolFull => ol.wait_for_idle().await,
            Next::At(t) => timer
                .sleep_until(t.max(now + ol.plan.batch))
                .await
                .map_err(|e| LoadError::io("waiting on", "schedule timer", e))?,
        }
    }
}

/// One connection slot: sends the request it was given, then takes overdue
/// requests itself; parks in the pool otherwise.
async fn slot_loop(ol: Arc<OpenLane>, slot: Arc<Slot>, first_job: u64) {
    let shared = ol.lane.shared.clone();
    let mut channel = Channel::new(&shared, ol.h2.clone());
    let mut next = Some((first_job, Instant::now()));
    loop {
        let (j, sent) = match next.take() {
            Some(job) => job,
            None if ol.all_claimed() => break,
            None => {
                ol.park(&slot);
                match wait_for_job(&ol, &slot).await {
                    Some(j) => (j, Instant::now()),
                    None => break,
                }
            }
        };
        let intended = ol.intended(j);
        let res = channel.exchange(&shared, sent).await;
        let done = ol.lane.record(intended, Some(sent), res, channel.body());
        // The completion time doubles as the next send time: no clock read.
        next = ol.claim_overdue(done).map(|j| (j, done));
    }
    ol.pool().open -= 1;
    ol.nudge();
}

/// Waits in the pool until the dispatcher hands this slot a request; None
/// once every request of the lane is claimed.
async fn wait_for_job(ol: &OpenLane, slot: &Slot) -> Option<u64> {
    loop {
        slot.wake.notified().await;
        match slot.job.swap(NO_JOB, Relaxed) {
            NO_JOB if ol.all_claimed() => return None,
            NO_JOB => {}
            j => return Some(j),
        }
    }
}
