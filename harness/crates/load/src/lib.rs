//! Open- and closed-loop HTTP load generation with HDR latency reports.
//!
//! `meshtest load` calls [`run_load`]; Gherkin steps build a [`LoadPlan`] and
//! call [`run`] directly, then inspect the [`LoadResult`].

pub mod cli;
pub mod client;
pub mod compare;
pub mod engine;
pub mod error;
pub mod hgrm;
pub mod html;
pub mod http1;
pub mod plan;
pub mod progress;
pub mod record;
pub mod report;
pub mod schedule;
pub mod summary;
pub mod tls;

use std::path::PathBuf;

pub use cli::{CompareArgs, LoadArgs};
pub use client::ErrorKind;
pub use engine::{LoadResult, run};
pub use error::LoadError;
pub use plan::{ClientChoice, LoadPlan, Mode, Stop};
pub use report::write_report;
pub use summary::Summary;

/// What `meshtest load` produced.
#[derive(Debug)]
pub struct Outcome {
    pub result: LoadResult,
    pub summary: Summary,
    /// Directory holding summary.json, NAME.hgrm and index.html.
    pub report_dir: PathBuf,
}

/// `meshtest load`: validate flags, run, write the report, print a short summary
/// on stdout. Input mistakes are `LoadError::Input` (exit code 2).
pub async fn run_load(args: LoadArgs) -> Result<Outcome, LoadError> {
    let plan = LoadPlan::from_args(&args)?;
    let started = std::time::SystemTime::now();
    let result = run(&plan).await?;
    let dir = plan
        .report_dir
        .clone()
        .unwrap_or_else(|| report::default_dir(started));
    write_report(&dir, &plan.name, &result)?;
    let summary = Summary::from_result(&plan.name, &result);
    print_summary(&summary, &dir);
    Ok(Outcome {
        result,
        summary,
        report_dir: dir,
    })
}

fn print_summary(s: &Summary, dir: &std::path::Path) {
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
    if s.requests.total > s.requests.transport_errors {
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        );
    } else {
        println!("latency ms: none (no request got a response)");
    }
    println!("report: {}", dir.display());
}

/// `meshtest report compare BASE CUR`: prints the differences and returns true
/// when CUR's p99 regressed beyond `--max-p99-regression` (exit code 1).
pub fn run_compare(args: CompareArgs) -> Result<bool, LoadError> {
    if !(args.max_p99_regression.is_finite() && args.max_p99_regression >= 0.0) {
        return Err(LoadError::input(format!(
            "--max-p99-regression {}: must be a non-negative number",
            args.max_p99_regression
        )));
    }
    let base = compare::load_summary(&args.base)?;
    let cur = compare::load_summary(&args.cur)?;
    let c = compare::compare(&base, &cur, args.max_p99_regression);
    print!("{}", c.table);
    Ok(c.regressed)
}
