//! Compares two runs' summary.json and decides whether p99 regressed.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, Result};
use crate::summary::Summary;

/// Reads a summary from a report directory or a summary.json path.
pub fn load_summary(path: &Path) -> Result<Summary> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| LoadError::input(format!("{}: cannot read summary: {e}", file.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        LoadError::input(format!(
            "{}: not a meshtest load summary: {e}",
            file.display()
        ))
    })
}

/// The differences between two runs, ready to print.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub table: String,
    pub regressed: bool,
    /// p99 change in percent (CUR vs BASE); infinite when BASE p99 is 0 and CUR is not.
    pub p99_change_pct: f64,
}

fn change_pct(base: f64, cur: f64) -> f64 {
    if base == 0.0 {
        if cur == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (cur - base) / base * 100.0
    }
}

/// Regressed when CUR p99 is more than `max_p99_regression_pct` percent above BASE p99.
pub fn compare(base: &Summary, cur: &Summary, max_p99_regression_pct: f64) -> Comparison {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<20} {:>12} {:>12} {:>10}",
        "metric", "base", "cur", "change"
    );
    let lat = [
        ("p50 (ms)", base.latency_ms.p50, cur.latency_ms.p50),
        ("p90 (ms)", base.latency_ms.p90, cur.latency_ms.p90),
        ("p99 (ms)", base.latency_ms.p99, cur.latency_ms.p99),
        ("p99.9 (ms)", base.latency_ms.p99_9, cur.latency_ms.p99_9),
        ("max (ms)", base.latency_ms.max, cur.latency_ms.max),
        ("achieved rate (/s)", base.rate.achieved, cur.rate.achieved),
    ];
    for (name, b, c) in lat {
        let _ = writeln!(
            t,
            "{name:<20} {b:>12.3} {c:>12.3} {:>+9.1}%",
            change_pct(b, c)
        );
    }
    let (be, ce) = (base.error_rate() * 100.0, cur.error_rate() * 100.0);
    let _ = writeln!(
        t,
        "{:<20} {be:>11.3}% {ce:>11.3}% {:>+8.3}pp",
        "error rate",
        ce - be
    );
    let p99_change_pct = change_pct(base.latency_ms.p99, cur.latency_ms.p99);
    let regressed = p99_change_pct > max_p99_regression_pct;
    let _ = writeln!(
        t,
        "{}: p99 {:+.1}% (limit +{max_p99_regression_pct}%)",
        if regressed { "REGRESSED" } else { "ok" },
        p99_change_pct
    );
    Comparison {
        table: t,
        regressed,
        p99_change_pct,
    }
}
