//! Compares two runs' summary.json: the regression gate behind
//! `meshtest report compare BASE CUR`.
//!
//! CUR regressed when any rule fails:
//!
//! - **successful responses**: CUR has at least one 1xx-3xx response (always on:
//!   a run in which everything failed never passes, whatever its latency);
//! - **p99**: CUR p99 is at most `--max-p99-regression` percent above BASE's;
//! - **error rate**: CUR's error rate is at most `--max-error-rate-increase`
//!   percentage points above BASE's;
//! - **throughput**: CUR's achieved rate is at least `--min-throughput-ratio`
//!   times BASE's.
//!
//! A BASE without a successful response is no baseline: the comparison cannot
//! be made ([`Comparison::unchecked`], exit code 3), unless CUR has none either,
//! which fails on its own. Nor can it when either run's generator saturated
//! (summary.json `saturation`): its latency and throughput were the
//! generator's, so the p99, error-rate and throughput rules are UNCHECKED, as
//! that run's thresholds were.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::cli::CompareArgs;
use crate::error::{LoadError, Result};
use crate::summary::{SCHEMA_VERSION, Summary};

/// Reads a summary from a report directory or a summary.json path.
pub fn load_summary(path: &Path) -> Result<Summary> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| LoadError::input(format!("{}: cannot read summary: {e}", file.display())))?;
    let s: Summary = serde_json::from_str(&text).map_err(|e| {
        LoadError::input(format!(
            "{}: not a meshtest load summary: {e}",
            file.display()
        ))
    })?;
    if !(1..=SCHEMA_VERSION).contains(&s.schema_version) {
        return Err(LoadError::input(format!(
            "{}: schema_version {} is not one this meshtest reads (1 to {SCHEMA_VERSION})",
            file.display(),
            s.schema_version
        )));
    }
    Ok(s)
}

/// Largest `--max-p99-regression`, percent.
pub const MAX_P99_REGRESSION_PCT: f64 = 10_000.0;

/// The limits a comparison enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gates {
    /// `--max-p99-regression`, percent (0 to 10000).
    pub max_p99_regression_pct: f64,
    /// `--max-error-rate-increase`, percentage points (0 to 100).
    pub max_error_rate_increase_pp: f64,
    /// `--min-throughput-ratio`, CUR achieved rate / BASE achieved rate (0 to 1).
    pub min_throughput_ratio: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_p99_regression_pct: 10.0,
            max_error_rate_increase_pp: 0.5,
            min_throughput_ratio: 0.95,
        }
    }
}

fn in_range(flag: &str, value: f64, lo: f64, hi: f64, unit: &str) -> Result<f64> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(LoadError::input(format!(
            "{flag} {value}: must be a number from {lo} to {hi}{unit}"
        )))
    }
}

impl Gates {
    /// Range-checks the three flags; each error names its flag.
    pub fn from_args(a: &CompareArgs) -> Result<Gates> {
        Ok(Gates {
            max_p99_regression_pct: in_range(
                "--max-p99-regression",
                a.max_p99_regression,
                0.0,
                MAX_P99_REGRESSION_PCT,
                " (percent)",
            )?,
            max_error_rate_increase_pp: in_range(
                "--max-error-rate-increase",
                a.max_error_rate_increase,
                0.0,
                100.0,
                " (percentage points)",
            )?,
            min_throughput_ratio: in_range(
                "--min-throughput-ratio",
                a.min_throughput_ratio,
                0.0,
                1.0,
                " (CUR achieved rate / BASE achieved rate)",
            )?,
        })
    }
}

/// One rule of the gate and how it came out.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// "successful responses", "p99", "error rate" or "throughput".
    pub name: &'static str,
    /// None when the rule could not be judged (BASE has no successful response).
    pub passed: Option<bool>,
    /// What was measured against what limit.
    pub detail: String,
}

/// The differences between two runs, ready to print.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub table: String,
    /// True when any rule failed: exit code 1.
    pub regressed: bool,
    /// Why the comparison could not be made (BASE has no successful response),
    /// when CUR did not fail on its own: exit code 3.
    pub unchecked: Option<String>,
    pub rules: Vec<Rule>,
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

/// Float slack at a limit's edge, so a value exactly at the limit passes.
const EPS: f64 = 1e-9;

/// "CUR's generator saturated at ~39000/s, so ..." when a run's generator saturated.
fn saturated(base: &Summary, cur: &Summary) -> Option<String> {
    let runs: Vec<String> = [("BASE", base), ("CUR", cur)]
        .iter()
        .filter_map(|(name, s)| s.saturation.message().map(|m| format!("{name}'s {m}")))
        .collect();
    (!runs.is_empty()).then(|| {
        format!(
            "{}, so its latency and throughput measure the generator, not the target",
            runs.join(" and ")
        )
    })
}

/// Judges CUR against BASE with `gates`.
pub fn compare(base: &Summary, cur: &Summary, gates: &Gates) -> Comparison {
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
    let _ = writeln!(
        t,
        "{:<20} {:>12} {:>12}",
        "ok / total",
        format!("{}/{}", base.requests.ok, base.requests.total),
        format!("{}/{}", cur.requests.ok, cur.requests.total)
    );

    let mut rules = Vec::new();
    rules.push(Rule {
        name: "successful responses",
        passed: Some(cur.requests.ok > 0),
        detail: if cur.requests.ok > 0 {
            format!(
                "CUR has {} of {} requests ok",
                cur.requests.ok, cur.requests.total
            )
        } else {
            format!(
                "CUR has no successful response (0 of {} requests ok)",
                cur.requests.total
            )
        },
    });
    let no_base = if base.requests.ok == 0 {
        Some(format!(
            "BASE has no successful response (0 of {} requests ok), so it is no baseline",
            base.requests.total
        ))
    } else if base.rate.achieved.is_nan() || base.rate.achieved <= 0.0 {
        Some("BASE has an achieved rate of 0, so it is no baseline".to_string())
    } else {
        saturated(base, cur)
    };
    let judged = |ok: bool| no_base.is_none().then_some(ok);

    let p99_change_pct = change_pct(base.latency_ms.p99, cur.latency_ms.p99);
    let limit = gates.max_p99_regression_pct;
    rules.push(Rule {
        name: "p99",
        passed: judged(p99_change_pct <= limit + EPS),
        detail: format!(
            "{:.3} -> {:.3} ms: {p99_change_pct:+.1}% (limit +{limit}%)",
            base.latency_ms.p99, cur.latency_ms.p99
        ),
    });
    let increase = ce - be;
    let limit = gates.max_error_rate_increase_pp;
    rules.push(Rule {
        name: "error rate",
        passed: judged(increase <= limit + EPS),
        detail: format!("{be:.3}% -> {ce:.3}%: {increase:+.3}pp (limit +{limit}pp)"),
    });
    let ratio = if base.rate.achieved > 0.0 {
        cur.rate.achieved / base.rate.achieved
    } else {
        0.0
    };
    let limit = gates.min_throughput_ratio;
    rules.push(Rule {
        name: "throughput",
        passed: judged(ratio >= limit - EPS),
        detail: format!(
            "{:.1} -> {:.1}/s: {ratio:.3}x BASE (limit >= {limit}x)",
            base.rate.achieved, cur.rate.achieved
        ),
    });
    if base.mode != cur.mode || base.rate.asked != cur.rate.asked {
        let asked = |s: &Summary| {
            s.rate.asked.map_or(format!("{} loop", s.mode), |a| {
                format!("{} loop at {a}/s", s.mode)
            })
        };
        let _ = writeln!(
            t,
            "note: BASE ran {} and CUR {}: the throughput rule compares unlike runs",
            asked(base),
            asked(cur)
        );
    }

    let _ = writeln!(t, "{:<20} {:<9} detail", "rule", "verdict");
    for r in &rules {
        let verdict = match r.passed {
            Some(true) => "ok",
            Some(false) => "REGRESSED",
            None => "UNCHECKED",
        };
        let _ = writeln!(t, "{:<20} {verdict:<9} {}", r.name, r.detail);
    }
    let failed: Vec<&str> = rules
        .iter()
        .filter(|r| r.passed == Some(false))
        .map(|r| r.name)
        .collect();
    let regressed = !failed.is_empty();
    let unchecked = if regressed { None } else { no_base.clone() };
    if regressed {
        if let Some(why) = &no_base {
            let _ = writeln!(t, "note: {why}: only CUR's own rule was judged");
        }
        let _ = writeln!(t, "REGRESSED: {}", failed.join(", "));
    } else if let Some(why) = &unchecked {
        let _ = writeln!(t, "UNCHECKED: {why}: cannot compare (exit 3)");
    } else {
        let _ = writeln!(t, "ok: no rule regressed");
    }
    Comparison {
        table: t,
        regressed,
        unchecked,
        rules,
        p99_change_pct,
    }
}
