//! Runs a [`LoadPlan`] on its generator threads and merges what they measured.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::client::Connector;
use crate::error::Result;
use crate::lane::{Lane, LaneOut, Shared, on_threads};
use crate::open::LanePlan;
use crate::plan::{LoadPlan, Mode, Stop};
use crate::progress::Progress;
use crate::record::{Recorder, new_histogram};
use crate::saturation::{Saturation, Verdict};
use crate::schedule::{Schedule, after};
use crate::timeline::Timeline;
use crate::{closed, http1, open};

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
    /// Generator threads the run used.
    pub threads: usize,
    /// Most connections open at once (summed over threads; HTTP/2: one per
    /// thread carries all its requests).
    pub connections_used: usize,
    /// Whether the generator, not the target, held the open-loop schedule back.
    pub saturation: Saturation,
    /// Open loop: actual minus intended send time of every measured request, µs.
    pub send_lag: Option<Histogram<u64>>,
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

/// Runs the plan to completion and returns what it measured. The load runs
/// on generator threads of its own (see [`LoadPlan::lanes`]), each with a
/// current-thread tokio runtime, whatever runtime the caller uses.
pub async fn run(plan: &LoadPlan) -> Result<LoadResult> {
    plan.validate()?;
    let connector = Connector::new(plan)?;
    let threads = plan.lanes();
    // A worker starts its share of the schedule when its parent said.
    if let Some(at) = plan.start_at
        && let Ok(wait) = at.duration_since(SystemTime::now())
    {
        tokio::time::sleep(wait).await;
    }
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let schedule = match plan.mode {
        Mode::Open { rate, .. } => Some(Schedule::new(start, rate, plan.warmup, plan.stop)),
        Mode::Closed { .. } => None,
    };
    let measure_start = schedule.map_or(after(start, plan.warmup), |s| s.measure_start());
    let shared = Arc::new(Shared {
        connector,
        fast: http1::Target::for_plan(plan),
        measure_start,
        timeout: plan.timeout,
        timeline: Mutex::new(Timeline::default()),
        cancel: plan.cancel.clone(),
    });
    let lanes: Vec<Arc<Lane>> = (0..threads)
        .map(|i| Arc::new(Lane::new(i, shared.clone())))
        .collect();
    let progress = plan
        .progress
        .then(|| Progress::start(lanes.clone(), asked(plan.mode), measure_start));
    let exporter = match plan.metrics_listen {
        Some(addr) => {
            let e = crate::metrics::Exporter::start(
                addr,
                plan.name.clone(),
                lanes.clone(),
                asked(plan.mode),
            )
            .await
            .map_err(|e| crate::LoadError::input(format!("--metrics-listen {addr}: {e}")))?;
            if plan.progress {
                eprintln!("metrics at http://{}/metrics", e.addr);
            }
            Some(e)
        }
        None => None,
    };
    let outs = run_lanes(plan, &lanes, schedule).await;
    drop(exporter);
    drop(progress);
    let outs = outs?;

    let mut recorder = Recorder::default();
    let mut send_lag = new_histogram();
    for lane in &lanes {
        let r = lane.lock();
        recorder.merge(&r.rec);
        let _ = send_lag.add(&r.send_lag);
    }
    recorder.timeline = shared.timeline.lock().expect("timeline lock").clone();
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
    let verdicts: Vec<Verdict> = outs.iter().map(|o| o.verdict).collect();
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
        threads,
        connections_used: outs.iter().map(|o| o.peak_connections).sum(),
        saturation: Saturation::combine(
            &verdicts,
            asked(plan.mode).unwrap_or(0.0) / threads as f64,
        ),
        send_lag: schedule.map(|_| send_lag),
    })
}

fn asked(mode: Mode) -> Option<f64> {
    match mode {
        Mode::Open { rate, .. } => Some(rate),
        Mode::Closed { .. } => None,
    }
}

/// `total` split into `parts` shares as even as possible; share `i`.
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

async fn run_lanes(
    plan: &LoadPlan,
    lanes: &[Arc<Lane>],
    schedule: Option<Schedule>,
) -> Result<Vec<LaneOut>> {
    let n = lanes.len();
    match (plan.mode, schedule) {
        (
            Mode::Open {
                max_connections, ..
            },
            Some(schedule),
        ) => {
            let (batch, http2) = (plan.batch_at(schedule.rate() / n as f64), plan.http2);
            on_threads(lanes, move |lane| {
                let lp = LanePlan {
                    schedule,
                    stride: n as u64,
                    cap: share(max_connections, n, lane.index).max(1),
                    batch,
                    http2,
                };
                open::run_lane(lane, lp)
            })
            .await
        }
        (Mode::Closed { connections }, _) => {
            let (stop, issued) = (plan.stop, Arc::new(AtomicU64::new(0)));
            on_threads(lanes, move |lane| {
                let c = share(connections, n, lane.index);
                closed::run_lane(lane, c, stop, issued.clone())
            })
            .await
        }
        (Mode::Open { .. }, None) => unreachable!("open mode always has a schedule"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_add_up() {
        for total in [1, 7, 512, 1000] {
            for parts in 1..=8.min(total) {
                let s: Vec<usize> = (0..parts).map(|i| super::share(total, parts, i)).collect();
                assert_eq!(s.iter().sum::<usize>(), total);
                assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
            }
        }
    }
}
