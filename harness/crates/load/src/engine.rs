//! Runs a [`LoadPlan`]: open-loop scheduling or closed-loop connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::client::{Conn, Connector, ErrorKind};
use crate::error::{LoadError, Result};
use crate::http1;
use crate::plan::{LoadPlan, Mode, Stop};
use crate::progress::Progress;
use crate::record::{Recorder, body_version};
use crate::schedule::{Schedule, after};

/// What a run measured. Histograms are in microseconds.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub url: String,
    pub method: String,
    pub mode: Mode,
    pub http2: bool,
    pub tenant: Option<String>,
    pub tier: Option<String>,
    /// Wall-clock time the measured period began.
    pub started_at: SystemTime,
    pub warmup: Duration,
    /// From the start of measurement to the last completion.
    pub elapsed: Duration,
    pub recorder: Recorder,
}

impl LoadResult {
    /// Requests per second asked for (open loop only).
    pub fn asked_rate(&self) -> Option<f64> {
        match self.mode {
            Mode::Open { rate, .. } => Some(rate),
            Mode::Closed { .. } => None,
        }
    }

    /// Completed requests (responses and errors) per second of measurement.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.recorder.total() as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency of every response, µs.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.recorder.latency
    }

    /// Latency at quantile `q` (0.0..=1.0), e.g. `result.quantile(0.99)`.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.recorder.latency.value_at_quantile(q))
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        }
    }
}

/// State shared by every request of one run.
struct Ctx {
    connector: Arc<Connector>,
    /// The hand-rolled HTTP/1.1 client's target when the plan is eligible.
    fast: Option<http1::Target>,
    rec: Arc<Mutex<Recorder>>,
    measure_start: Instant,
    timeout: Duration,
}

impl Ctx {
    /// One request on `conn`, (re)connecting first when needed; a failed
    /// connection is dropped so the next request opens a fresh one.
    async fn exchange(
        &self,
        conn: &mut Option<Conn>,
        inline: bool,
    ) -> Result<(u16, Bytes), ErrorKind> {
        let attempt = async {
            // A reused connection the server has closed is replaced without
            // counting an error: no request was sent on it. A fresh one that is
            // not ready is a real failure.
            let mut reused = conn.as_ref().is_some_and(|c| !c.is_closed());
            loop {
                if !reused {
                    // Boxed: the TLS connect future is large, and inlining it
                    // would make every request's future (moved per request) as big.
                    *conn = Some(Box::pin(self.connector.connect(inline)).await?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err(ErrorKind::Other);
                };
                if c.ready().await {
                    return c.send(self.connector.request()).await;
                }
                if !reused {
                    return Err(ErrorKind::Reset);
                }
                reused = false;
            }
        };
        let res = tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(ErrorKind::Timeout));
        if res.is_err() {
            *conn = None;
        }
        res
    }

    /// Records the outcome of a request whose latency counts from `origin`.
    /// Requests that began before measurement (warmup) are not recorded.
    /// Returns the completion time.
    fn record(&self, origin: Instant, res: &Result<(u16, Bytes), ErrorKind>) -> Instant {
        match res {
            Ok((status, body)) => self.record_parts(origin, Ok(*status), body),
            Err(kind) => self.record_parts(origin, Err(*kind), &[]),
        }
    }

    /// [`Ctx::record`] for a status (or error) and the response body.
    fn record_parts(&self, origin: Instant, res: Result<u16, ErrorKind>, body: &[u8]) -> Instant {
        let done = Instant::now();
        if origin < self.measure_start {
            return done;
        }
        let at = done - self.measure_start;
        // Parse outside the lock; only the histogram updates are serialized.
        let version = match res {
            Ok(_) => body_version(body),
            Err(_) => None,
        };
        let mut rec = self.rec.lock().expect("recorder lock");
        match res {
            Ok(status) => rec.response(at, done - origin, status, version.as_deref()),
            Err(kind) => rec.error(at, kind),
        }
        done
    }
}

/// Runs the plan to completion and returns what it measured. Spawns its tasks
/// on the current tokio runtime (a current-thread runtime is the most
/// efficient when the generator is pinned to one core).
pub async fn run(plan: &LoadPlan) -> Result<LoadResult> {
    plan.validate()?;
    let connector = Connector::new(plan)?;
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let schedule = match plan.mode {
        Mode::Open { rate, .. } => Some(Schedule::new(start, rate, plan.warmup, plan.stop)),
        Mode::Closed { .. } => None,
    };
    let measure_start = schedule.map_or(after(start, plan.warmup), |s| s.measure_start());
    let ctx = Arc::new(Ctx {
        connector,
        fast: http1::Target::for_plan(plan),
        rec: rec.clone(),
        measure_start,
        timeout: plan.timeout,
    });
    let progress = plan.progress.then(|| {
        Progress::start(
            rec.clone(),
            match plan.mode {
                Mode::Open { rate, .. } => Some(rate),
                Mode::Closed { .. } => None,
            },
            measure_start,
        )
    });

    match (plan.mode, schedule) {
        (
            Mode::Open {
                max_connections, ..
            },
            Some(s),
        ) => open_loop(ctx.clone(), s, max_connections.max(1)).await?,
        (Mode::Closed { connections }, _) => closed_loop(ctx.clone(), connections, plan.stop).await,
        (Mode::Open { .. }, None) => unreachable!("open mode always has a schedule"),
    }
    drop(progress);

    let recorder = rec.lock().expect("recorder lock").clone();
    let planned = match plan.stop {
        Stop::Duration(d) => d,
        Stop::Requests(_) => Duration::ZERO,
    };
    // Open loop: the measured window is at least the schedule's span (n / rate),
    // so a fast server achieves exactly the asked rate rather than n / (n - 1) of it.
    let span = schedule.map_or(Duration::ZERO, |s| s.span());
    let elapsed = if recorder.total() > 0 {
        recorder.last_done.max(span)
    } else {
        planned.max(span)
    };
    Ok(LoadResult {
        url: plan.target.uri.to_string(),
        method: plan.method.to_string(),
        mode: plan.mode,
        http2: plan.http2,
        tenant: plan.tenant.clone(),
        tier: plan.tier.clone(),
        started_at: wall_start.checked_add(plan.warmup).unwrap_or(wall_start),
        warmup: plan.warmup,
        elapsed,
        recorder,
    })
}

/// `connections` workers, each with its own connection, back to back: the
/// hand-rolled HTTP/1.1 client ([`http1`]) when the plan is eligible, hyper otherwise.
async fn closed_loop(ctx: Arc<Ctx>, connections: usize, stop: Stop) {
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let ctx = ctx.clone();
        let issued = issued.clone();
        workers.spawn(async move {
            let mut conn = None;
            let mut fast = ctx.fast.as_ref().map(|_| http1::Worker::default());
            let mut begin = Instant::now();
            let end = match stop {
                Stop::Duration(d) => after(ctx.measure_start, d),
                Stop::Requests(_) => ctx.measure_start,
            };
            loop {
                if begin >= ctx.measure_start {
                    let more = match stop {
                        Stop::Duration(_) => begin < end,
                        Stop::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                    };
                    if !more {
                        break;
                    }
                }
                // The next request starts at the completion time: reuse it
                // rather than read the clock again.
                let res = match (&ctx.fast, &mut fast) {
                    (Some(target), Some(w)) => {
                        let res = w.exchange(target, begin).await;
                        begin = ctx.record_parts(begin, res, w.body());
                        res.map(|_| ())
                    }
                    _ => {
                        let res = ctx.exchange(&mut conn, true).await;
                        begin = ctx.record(begin, &res);
                        res.map(|_| ())
                    }
                };
                if res == Err(ErrorKind::Connect) {
                    // Refused connects fail in microseconds; don't spin a core on them.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    begin = Instant::now();
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Idle connections for the open loop. HTTP/1.1 connections are lent to one
/// request at a time; an HTTP/2 connection is shared by all.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(c) = idle.pop() {
            if c.is_closed() {
                continue;
            }
            if let Some(shared) = c.share() {
                idle.push(c);
                return Some(shared);
            }
            return Some(c);
        }
        None
    }

    fn give_back(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        // One HTTP/2 connection is enough; extra handles are just dropped.
        if conn.share().is_some() && !idle.is_empty() {
            return;
        }
        idle.push(conn);
    }
}

/// Sends each request at its intended time from a dedicated timer thread:
/// `std::thread::sleep` has microsecond resolution where tokio's timer wheel
/// rounds up to whole milliseconds, which would add up to 1 ms to every
/// open-loop latency. At most `max_in_flight` requests run at once; when all are
/// busy the schedule waits, and the wait shows up in latency because it is
/// measured from the intended time.
async fn open_loop(ctx: Arc<Ctx>, schedule: Schedule, max_in_flight: usize) -> Result<()> {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let pool = Arc::new(Pool::default());
    let handle = tokio::runtime::Handle::current();
    let sem = permits.clone();
    let thread = std::thread::Builder::new()
        .name("meshtest-load-schedule".into())
        .spawn(move || {
            for i in 0..schedule.total() {
                let intended = schedule.at(i);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match handle.block_on(sem.clone().acquire_owned()) {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let conn = pool.take();
                let ctx = ctx.clone();
                let pool = pool.clone();
                handle.spawn(async move {
                    let mut conn = conn;
                    let res = ctx.exchange(&mut conn, false).await;
                    let _ = ctx.record(intended, &res);
                    if let Some(c) = conn {
                        pool.give_back(c);
                    }
                    drop(permit);
                });
            }
        })
        .map_err(|e| LoadError::io("spawning", "schedule thread", e))?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| LoadError::Internal(format!("schedule thread: {e}")))?
        .map_err(|_| LoadError::Internal("schedule thread panicked".into()))?;
    // Every permit back means every request has completed.
    let _all = permits
        .acquire_many(max_in_flight as u32)
        .await
        .map_err(|e| LoadError::Internal(format!("waiting for requests: {e}")))?;
    Ok(())
}
