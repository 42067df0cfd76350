//! Open- and closed-loop HTTP load generation with HDR latency reports.
//!
//! `meshtest load` calls [`run_load`]; Gherkin steps build a [`LoadPlan`] and
//! call [`run`] directly, then inspect the [`LoadResult`].

pub mod channel;
pub mod cli;
pub mod client;
pub mod closed;
pub mod compare;
pub mod duration;
pub mod engine;
pub mod error;
pub mod hgrm;
pub mod html;
pub mod http1;
pub mod lane;
mod limits;
pub mod metrics;
pub mod open;
pub mod plan;
pub mod progress;
pub mod record;
pub mod report;
pub mod saturation;
pub mod schedule;
pub mod summary;
pub mod target;
pub mod threshold;
pub mod timeline;
pub mod timer;
pub mod tls;
pub mod workers;

use std::path::PathBuf;

pub use cli::{CompareArgs, LoadArgs};
pub use client::ErrorKind;
pub use engine::{LoadResult, run};
pub use error::LoadError;
pub use plan::{ClientChoice, LoadPlan, Mode, Stop};
pub use report::{write_report, write_report_with};
pub use summary::Summary;
pub use threshold::{Threshold, ThresholdOut, Verdict};

/// What `meshtest load` produced.
#[derive(Debug)]
pub struct Outcome {
    pub result: LoadResult,
    /// The summary as written, thresholds judged.
    pub summary: Summary,
    /// Directory holding summary.json, NAME.hgrm and index.html.
    pub report_dir: PathBuf,
}

impl Outcome {
    /// Why the run failed, one reason a line; empty when it passed. A run fails
    /// when no request got a response at all, and when a `--threshold` failed
    /// or could not be checked (every threshold of a run whose generator
    /// saturated is unchecked). A saturated run without thresholds passes: it
    /// judged nothing, and its summary says it saturated.
    pub fn failures(&self) -> Vec<String> {
        let s = &self.summary;
        let mut why = Vec::new();
        if s.responses() == 0 {
            let kinds: Vec<String> = s
                .error_counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(kind, n)| format!("{kind} x{n}"))
                .collect();
            why.push(if kinds.is_empty() {
                format!("no request got a response ({} requests)", s.requests.total)
            } else {
                format!(
                    "no request got a response ({} of {} failed without one: {})",
                    s.requests.transport_errors,
                    s.requests.total,
                    kinds.join(", ")
                )
            });
        }
        let broken: Vec<String> = s
            .thresholds
            .iter()
            .filter(|t| !t.passed)
            .map(|t| format!("{} ({})", t.expression, t.verdict))
            .collect();
        if !broken.is_empty() {
            why.push(format!(
                "{} of {} thresholds not met: {}",
                broken.len(),
                s.thresholds.len(),
                broken.join(", ")
            ));
        }
        why
    }

    /// True when something answered and every threshold held (exit code 0;
    /// otherwise 1).
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// `meshtest load`: validate flags, run, judge the thresholds, write the
/// report, print a short summary on stdout. Input mistakes are
/// `LoadError::Input` (exit code 2); a run that fails its thresholds or gets
/// no response is `Ok` with [`Outcome::passed`] false (exit code 1).
pub async fn run_load(args: LoadArgs) -> Result<Outcome, LoadError> {
    let plan = LoadPlan::from_args(&args)?;
    check_workers(&args, &plan)?;
    let started = std::time::SystemTime::now();
    if let Some(out) = &args.worker_out {
        // A worker: its parent merges and reports.
        let result = run(&plan).await?;
        workers::write_record(out, &result)?;
        let summary = Summary::from_result(&plan.name, &result);
        return Ok(Outcome {
            result,
            summary,
            report_dir: out.clone(),
        });
    }
    let (result, rows) = if args.workers > 1 {
        // The binary running this takes `load ARGS` (meshtest does).
        let exe = std::env::current_exe()
            .map_err(|e| LoadError::Unchecked(format!("finding this binary for --workers: {e}")))?;
        workers::run(&args, &plan, args.workers, &exe, &["load"]).await?
    } else {
        (run(&plan).await?, Vec::new())
    };
    let dir = plan
        .report_dir
        .clone()
        .unwrap_or_else(|| report::default_dir(started));
    let mut summary = Summary::from_result(&plan.name, &result);
    summary.workers = rows;
    summary.thresholds = plan
        .thresholds
        .iter()
        .map(|t| t.evaluate(&summary))
        .collect();
    write_report_with(&dir, &plan.name, &result, &summary)?;
    let outcome = Outcome {
        result,
        summary,
        report_dir: dir,
    };
    print_summary(&outcome);
    Ok(outcome)
}

/// `--workers` against the rest of the flags.
fn check_workers(args: &LoadArgs, plan: &LoadPlan) -> Result<(), LoadError> {
    let n = args.workers;
    if !(1..=workers::MAX_WORKERS).contains(&n) {
        return Err(LoadError::input(format!(
            "--workers: {n} is not between 1 and {}",
            workers::MAX_WORKERS
        )));
    }
    if n == 1 {
        return Ok(());
    }
    if args.worker_out.is_some() {
        return Err(LoadError::input("--workers: a worker runs no workers"));
    }
    if args.metrics_listen.is_some() {
        return Err(LoadError::input(
            "--workers with --metrics-listen: each worker is its own process; serve metrics without --workers",
        ));
    }
    if let Mode::Closed { connections } = plan.mode
        && connections < n
    {
        return Err(LoadError::input(format!(
            "--workers {n}: needs at least as many --connections ({connections})"
        )));
    }
    if let Stop::Requests(r) = plan.stop
        && r < n as u64
    {
        return Err(LoadError::input(format!(
            "--workers {n}: needs at least as many --requests ({r})"
        )));
    }
    Ok(())
}

fn print_summary(o: &Outcome) {
    let (s, dir) = (&o.summary, &o.report_dir);
    let asked = s.rate.asked.map_or("-".into(), |a| format!("{a:.1}"));
    let l = &s.latency_ms;
    println!(
        "{} loop {} {}: {} requests in {:.2}s, {} ok, {} errors; rate asked {asked} achieved {:.1}/s",
        s.mode,
        s.method,
        s.url,
        s.requests.total,
        s.duration_s,
        s.requests.ok,
        s.requests.errors,
        s.rate.achieved
    );
    println!("{}", generator_line(s));
    for w in &s.workers {
        println!(
            "worker {}: {} requests, {} errors, {:.1}/s, p50 {:.3} ms, p99 {:.3} ms",
            w.worker, w.requests, w.errors, w.achieved_rps, w.p50_ms, w.p99_ms
        );
    }
    // What the errors were, so a 403 storm and a TLS failure do not read alike.
    let statuses: Vec<String> = s
        .status_counts
        .iter()
        .map(|(code, n)| format!("{code} x{n}"))
        .collect();
    let failures: Vec<String> = s
        .error_counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| format!("{kind} x{n}"))
        .collect();
    if !statuses.is_empty() {
        println!("status: {}", statuses.join(", "));
    }
    if !failures.is_empty() {
        println!("no response: {}", failures.join(", "));
    }
    if s.responses() > 0 {
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        );
    } else {
        println!("latency ms: none (no request got a response)");
    }
    if let Some(msg) = s.saturation.message() {
        println!(
            "{msg}: for {:.1}s its schedule ran more than {} ms late while its threads were busy, \
             so those latencies are the generator's own queue, not the target's; every threshold is UNCHECKED \
             (use --threads or a lower --rate)",
            s.saturation.saturated_s, s.saturation.lag_bound_ms
        );
    }
    for t in &s.thresholds {
        println!("{}", t.line());
    }
    println!("report: {}", dir.display());
    for why in o.failures() {
        println!("FAILED: {why}");
    }
    if o.passed() && !s.thresholds.is_empty() {
        println!("ok: all {} thresholds held", s.thresholds.len());
    }
}

/// "generator: 1 thread, 14 of 512 connections used, sends p99 0.21 ms late".
fn generator_line(s: &Summary) -> String {
    let threads = if s.threads == 1 {
        "1 thread".to_string()
    } else {
        format!("{} threads", s.threads)
    };
    let pool = if s.mode == "open" {
        format!(
            "{} of {} connections used",
            s.connections_used, s.connections
        )
    } else {
        format!("{} connections", s.connections_used)
    };
    let lag = s
        .saturation
        .send_lag_ms
        .as_ref()
        .map(|l| {
            format!(
                ", sends late by p50 {:.3} / p99 {:.3} / max {:.3} ms",
                l.p50, l.p99, l.max
            )
        })
        .unwrap_or_default();
    format!("generator: {threads}, {pool}{lag}")
}

/// `meshtest report compare BASE CUR`: prints the differences and the rules,
/// and returns true when CUR regressed (exit code 1). Flags out of range and
/// unreadable summaries are `LoadError::Input` (exit code 2); a BASE without a
/// successful response is `LoadError::Unchecked` (exit code 3) unless CUR
/// regressed on its own.
pub fn run_compare(args: CompareArgs) -> Result<bool, LoadError> {
    let gates = compare::Gates::from_args(&args)?;
    let base = compare::load_summary(&args.base)?;
    let cur = compare::load_summary(&args.cur)?;
    let c = compare::compare(&base, &cur, &gates);
    print!("{}", c.table);
    if let Some(why) = c.unchecked {
        return Err(LoadError::Unchecked(format!(
            "{}: {why}",
            args.base.display()
        )));
    }
    Ok(c.regressed)
}
