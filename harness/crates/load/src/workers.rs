//! `--workers N`: one load as N processes of this binary, merged exactly.
//!
//! Open loop: worker k sends requests k, k+N, k+2N, ... of the one schedule (each its own
//! schedule at rate R/N, started k/R after a common start), so together they keep the schedule
//! one process would. Closed loop: the connections (and `--requests`) are shared out. Each
//! worker hands back its whole record, histograms as (value, count) pairs of their buckets;
//! HdrHistograms with equal bounds add bucket by bucket, so the merged percentiles are those of
//! all the workers' samples, exactly as for generator threads. Per-second timeline rows add
//! their counts; their percentiles are the slowest worker's (an upper bound, as for merged
//! buckets). The same merge serves workers on other machines (e.g. a Kubernetes Job), which
//! only have to run `load ... --worker-out FILE` and hand the file back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::LoadArgs;
use crate::client::ErrorKind;
use crate::engine::LoadResult;
use crate::error::{LoadError, Result};
use crate::plan::{LoadPlan, Mode, Stop};
use crate::record::{Recorder, new_histogram};
use crate::saturation::Saturation;
use crate::timeline::{Bucket, Timeline};

/// Most `--workers`.
pub const MAX_WORKERS: usize = 64;
/// Time the parent gives its workers to start before the common schedule begins.
const START_MARGIN: Duration = Duration::from_millis(500);

/// A histogram as the (value, count) pairs of its non-empty buckets.
type Pairs = Vec<(u64, u64)>;

fn pairs(h: &Histogram<u64>) -> Pairs {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn histogram(p: &Pairs) -> Histogram<u64> {
    let mut h = new_histogram();
    for (v, n) in p {
        // Each value is its bucket's highest equivalent value: it lands in the same bucket.
        let _ = h.record_n(*v, *n);
    }
    h
}

/// What one worker measured, as it hands it back (JSON in the `--worker-out` file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRecord {
    pub latency: Pairs,
    pub by_class: Vec<Pairs>,
    pub by_version: BTreeMap<String, Pairs>,
    pub status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub ok: u64,
    pub responses: u64,
    pub last_done_us: u64,
    pub elapsed_us: u64,
    pub threads: usize,
    pub connections_used: usize,
    pub saturated: bool,
    pub saturated_rate: Option<f64>,
    pub saturated_s: f64,
    pub send_lag: Option<Pairs>,
    /// Timeline buckets: (start_s, width_s, requests, errors, p50_us, p99_us, max_us).
    pub timeline: Vec<(u64, u64, u64, u64, u64, u64, u64)>,
}

impl WorkerRecord {
    pub fn of(r: &LoadResult) -> WorkerRecord {
        let rec = &r.recorder;
        WorkerRecord {
            latency: pairs(&rec.latency),
            by_class: rec.by_class.iter().map(pairs).collect(),
            by_version: rec
                .by_version
                .iter()
                .map(|(k, h)| (k.clone(), pairs(h)))
                .collect(),
            status: rec.status.clone(),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), rec.errors.get(*k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ok: rec.ok,
            responses: rec.responses,
            last_done_us: rec.last_done.as_micros() as u64,
            elapsed_us: r.elapsed.as_micros() as u64,
            threads: r.threads,
            connections_used: r.connections_used,
            saturated: r.saturation.saturated,
            saturated_rate: r.saturation.rate,
            saturated_s: r.saturation.saturated_s,
            send_lag: r.send_lag.as_ref().map(pairs),
            timeline: rec
                .timeline
                .buckets()
                .iter()
                .map(|b| {
                    (
                        b.start_s, b.width_s, b.requests, b.errors, b.p50_us, b.p99_us, b.max_us,
                    )
                })
                .collect(),
        }
    }

    fn recorder(&self) -> Recorder {
        let mut rec = Recorder {
            latency: histogram(&self.latency),
            status: self.status.clone(),
            ok: self.ok,
            responses: self.responses,
            last_done: Duration::from_micros(self.last_done_us),
            ..Recorder::default()
        };
        for (mine, theirs) in rec.by_class.iter_mut().zip(&self.by_class) {
            *mine = histogram(theirs);
        }
        rec.by_version = self
            .by_version
            .iter()
            .map(|(k, p)| (k.clone(), histogram(p)))
            .collect();
        for kind in ErrorKind::ALL {
            rec.errors
                .add(kind, self.errors.get(kind.name()).copied().unwrap_or(0));
        }
        rec
    }

    fn buckets(&self) -> Vec<Bucket> {
        self.timeline
            .iter()
            .map(
                |&(start_s, width_s, requests, errors, p50_us, p99_us, max_us)| Bucket {
                    start_s,
                    width_s,
                    requests,
                    errors,
                    p50_us,
                    p99_us,
                    max_us,
                },
            )
            .collect()
    }
}

/// One worker's row in the merged summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRow {
    pub worker: usize,
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub connections_used: usize,
}

impl WorkerRow {
    fn of(worker: usize, r: &WorkerRecord) -> WorkerRow {
        let latency = histogram(&r.latency);
        let errors: u64 = r.errors.values().sum();
        let secs = (r.elapsed_us as f64 / 1e6).max(1e-9);
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        WorkerRow {
            worker,
            requests: r.responses + errors,
            responses: r.responses,
            errors,
            achieved_rps: ((r.responses + errors) as f64 / secs * 10.0).round() / 10.0,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            connections_used: r.connections_used,
        }
    }
}

/// Every worker's record merged into one result, as one process with all their threads would
/// have measured it (`plan` is the whole load's plan).
pub fn merge(plan: &LoadPlan, started_at: SystemTime, records: &[WorkerRecord]) -> LoadResult {
    let mut recorder = Recorder::default();
    let mut send_lag: Option<Histogram<u64>> = None;
    for r in records {
        recorder.merge(&r.recorder());
        if let Some(p) = &r.send_lag {
            let _ = send_lag.get_or_insert_with(new_histogram).add(histogram(p));
        }
    }
    recorder.timeline = Timeline::from_buckets(records.iter().map(WorkerRecord::buckets));
    let saturated = records.iter().any(|r| r.saturated);
    LoadResult {
        url: plan.target.uri.to_string(),
        method: plan.method.to_string(),
        mode: plan.mode,
        http2: plan.http2,
        tenant: plan.tenant.clone(),
        tier: plan.tier.clone(),
        started_at: started_at.checked_add(plan.warmup).unwrap_or(started_at),
        warmup: plan.warmup,
        elapsed: records
            .iter()
            .map(|r| Duration::from_micros(r.elapsed_us))
            .max()
            .unwrap_or_default(),
        recorder,
        threads: records.iter().map(|r| r.threads).sum(),
        connections_used: records.iter().map(|r| r.connections_used).sum(),
        saturation: Saturation {
            saturated,
            rate: saturated.then(|| {
                records
                    .iter()
                    .map(|r| r.saturated_rate.unwrap_or(0.0))
                    .sum()
            }),
            saturated_s: records.iter().map(|r| r.saturated_s).fold(0.0, f64::max),
        },
        send_lag,
    }
}

/// `total` split into `parts` shares as even as possible; share `i`.
fn share(total: u64, parts: u64, i: u64) -> u64 {
    total / parts + u64::from(i < total % parts)
}

/// The flags of worker `k` of `n`: the whole load's flags with its share of the rate,
/// connections and requests, its own start time, and none of the parent's reporting.
pub fn worker_args(
    a: &LoadArgs,
    plan: &LoadPlan,
    k: usize,
    n: usize,
    start: SystemTime,
    out: &Path,
) -> Vec<String> {
    let mut v = vec![a.url.clone()];
    let mut flag = |name: &str, value: String| {
        v.push(name.to_string());
        v.push(value);
    };
    let (k64, n64) = (k as u64, n as u64);
    match plan.mode {
        Mode::Open {
            rate,
            max_connections,
        } => {
            flag("--rate", format!("{}", rate / n as f64));
            flag(
                "--connections",
                share(max_connections as u64, n64, k64).max(1).to_string(),
            );
        }
        Mode::Closed { connections } => {
            flag(
                "--connections",
                share(connections as u64, n64, k64).to_string(),
            );
        }
    }
    match plan.stop {
        Stop::Duration(d) => flag("--duration", format!("{}ms", d.as_millis())),
        Stop::Requests(r) => flag("--requests", share(r, n64, k64).to_string()),
    }
    if let Some(w) = &a.warmup {
        flag("--warmup", w.clone());
    }
    flag("-X", a.method.clone());
    for h in &a.headers {
        flag("-H", h.clone());
    }
    for (name, path) in [
        ("--body", &a.body),
        ("--cacert", &a.cacert),
        ("--cert", &a.cert),
        ("--key", &a.key),
    ] {
        if let Some(p) = path {
            flag(name, p.display().to_string());
        }
    }
    if let Some(t) = a.threads {
        flag("--threads", share(t as u64, n64, k64).max(1).to_string());
    }
    flag("--timeout", a.timeout.clone());
    flag("--client", a.client.clone());
    if let Some(b) = &a.send_batch {
        flag("--send-batch", b.clone());
    }
    // Open loop: worker k's schedule starts k/R after the common start, so its requests are
    // k, k+N, ... of the one schedule.
    let phase = match plan.mode {
        Mode::Open { rate, .. } => Duration::from_secs_f64(k as f64 / rate),
        Mode::Closed { .. } => Duration::ZERO,
    };
    let at = start + phase;
    flag(
        "--worker-start",
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros()
            .to_string(),
    );
    flag("--worker-out", out.display().to_string());
    if a.http2 {
        v.push("--http2".into());
    }
    v.push("--no-progress".into());
    v
}

/// Runs the load as `n` worker processes (`exe` + `prefix` + the worker's flags), waits for all
/// of them (each bounded by the run's length and its timeout, plus a minute), and merges what
/// they measured. Returns the merged result and a row per worker.
pub async fn run(
    a: &LoadArgs,
    plan: &LoadPlan,
    n: usize,
    exe: &Path,
    prefix: &[&str],
) -> Result<(LoadResult, Vec<WorkerRow>)> {
    let dir = std::env::temp_dir().join(format!("meshtest-load-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| LoadError::Unchecked(format!("{}: {e}", dir.display())))?;
    let start = SystemTime::now() + START_MARGIN;
    let mut children = Vec::new();
    for k in 0..n {
        let out = dir.join(format!("worker-{k}.json"));
        let _ = std::fs::remove_file(&out);
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(prefix)
            .args(worker_args(a, plan, k, n, start, &out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            LoadError::Unchecked(format!("starting worker {k} ({}): {e}", exe.display()))
        })?;
        children.push((k, out, child));
    }
    let bound = match plan.stop {
        Stop::Duration(d) => d + plan.warmup + plan.timeout + Duration::from_secs(60),
        Stop::Requests(_) => Duration::from_secs(24 * 3600),
    };
    let mut records = Vec::new();
    let mut rows = Vec::new();
    for (k, out, child) in children {
        let done = tokio::time::timeout(bound, child.wait_with_output()).await;
        let output = match done {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(LoadError::Unchecked(format!("worker {k}: {e}"))),
            Err(_) => {
                return Err(LoadError::Unchecked(format!(
                    "worker {k} did not finish within {} s",
                    bound.as_secs()
                )));
            }
        };
        let record = read_record(&out).map_err(|why| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            LoadError::Unchecked(format!(
                "worker {k} (exit {:?}): {why}; its stderr: {}",
                output.status.code(),
                stderr.trim()
            ))
        })?;
        rows.push(WorkerRow::of(k, &record));
        records.push(record);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((merge(plan, start, &records), rows))
}

fn read_record(path: &PathBuf) -> std::result::Result<WorkerRecord, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no record at {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a worker's record where its parent reads it.
pub fn write_record(path: &Path, r: &LoadResult) -> Result<()> {
    let json = serde_json::to_vec(&WorkerRecord::of(r))
        .map_err(|e| LoadError::Unchecked(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| LoadError::Unchecked(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_the_trip_exactly() {
        let mut h = new_histogram();
        for v in [1u64, 17, 999, 1_000, 1_001, 123_456, 59_999_999] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let back = histogram(&pairs(&h));
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
    }

    #[test]
    fn merged_workers_are_exactly_the_union_of_their_samples() {
        // Four workers' samples, and the same samples in one histogram.
        let mut all = new_histogram();
        let mut parts = Vec::new();
        for w in 0..4u64 {
            let mut h = new_histogram();
            for i in 0..1000u64 {
                let v = 500 + (i * 37 + w * 1013) % 20_000;
                h.record(v).unwrap();
                all.record(v).unwrap();
            }
            parts.push(pairs(&h));
        }
        let mut merged = new_histogram();
        for p in &parts {
            merged.add(histogram(p)).unwrap();
        }
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
    }

    #[test]
    fn open_loop_workers_share_the_rate_and_interleave_their_starts() {
        let mut a = LoadArgs::for_url("http://127.0.0.1:1/");
        a.rate = Some(1000.0);
        a.requests = Some(10);
        let plan = LoadPlan::from_args(&a).unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let w1 = worker_args(&a, &plan, 1, 4, start, Path::new("/tmp/w1.json"));
        let get = |name: &str| w1[w1.iter().position(|x| x == name).unwrap() + 1].clone();
        assert_eq!(get("--rate"), "250");
        assert_eq!(get("--requests"), "3", "10 requests over 4: 3, 3, 2, 2");
        assert_eq!(
            get("--worker-start"),
            "100001000",
            "1/1000 s after the common start"
        );
    }
}
