//! k6-style pass/fail rules for `meshtest load --threshold EXPR`.
//!
//! `EXPR` is `METRIC OP VALUE` with `OP` one of `<`, `<=`, `>`, `>=`:
//!
//! - latency: `min`, `mean` (or `avg`), `p50` (or `med`), `p90`, `p99`, `p99.9`,
//!   `p99.99`, `max` (k6's `p(99)` is accepted too) against a duration with a
//!   unit, e.g. `p99<500ms`, `max<=2s`. Latency is that of every response, any
//!   status, as in summary.json's `latency_ms`.
//! - `errors` (or `error_rate`): the share of requests without a 1xx-3xx
//!   response, as a percentage (`errors<1%`) or a fraction (`error_rate<0.01`).
//! - `rps`: the achieved rate, completed requests per second (`rps>=100`).
//!
//! A rule that has nothing to measure (a latency rule when no request got a
//! response, an error rule when no request completed) is *unchecked*, and an
//! unchecked rule fails the run like a broken one: it never passes vacuously.
//! Every rule of a run whose generator saturated (see [`crate::saturation`])
//! is unchecked too: what it measured was the generator's own queue, so it
//! says nothing about the target either way.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::summary::Summary;

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Min,
    Mean,
    P50,
    P90,
    P99,
    P99_9,
    P99_99,
    Max,
    /// Share of requests that did not end in a 1xx-3xx response (0..=1).
    ErrorRate,
    /// Completed requests per second of measurement.
    Rps,
}

impl Metric {
    /// The canonical name, as written in summary.json.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Min => "min",
            Metric::Mean => "mean",
            Metric::P50 => "p50",
            Metric::P90 => "p90",
            Metric::P99 => "p99",
            Metric::P99_9 => "p99.9",
            Metric::P99_99 => "p99.99",
            Metric::Max => "max",
            Metric::ErrorRate => "errors",
            Metric::Rps => "rps",
        }
    }

    /// Unit of `limit` and `observed` in summary.json.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::ErrorRate => "ratio",
            Metric::Rps => "1/s",
            _ => "ms",
        }
    }

    pub fn is_latency(self) -> bool {
        !matches!(self, Metric::ErrorRate | Metric::Rps)
    }

    fn from_name(name: &str) -> Option<Metric> {
        let lower = name.to_ascii_lowercase();
        // k6 spells percentiles p(99).
        let n = match lower.strip_prefix("p(").and_then(|r| r.strip_suffix(')')) {
            Some(q) => format!("p{q}"),
            None => lower,
        };
        Some(match n.as_str() {
            "min" => Metric::Min,
            "mean" | "avg" => Metric::Mean,
            "p50" | "med" | "median" => Metric::P50,
            "p90" => Metric::P90,
            "p99" => Metric::P99,
            "p99.9" => Metric::P99_9,
            "p99.99" => Metric::P99_99,
            "max" => Metric::Max,
            "errors" | "error_rate" => Metric::ErrorRate,
            "rps" => Metric::Rps,
            _ => return None,
        })
    }

    /// The measured value in [`Metric::unit`], or None when there is nothing to measure.
    pub fn observe(self, s: &Summary) -> Option<f64> {
        let responses = s.requests.total.saturating_sub(s.requests.transport_errors);
        let l = &s.latency_ms;
        match self {
            _ if self.is_latency() && responses == 0 => None,
            Metric::Min => Some(l.min),
            Metric::Mean => Some(l.mean),
            Metric::P50 => Some(l.p50),
            Metric::P90 => Some(l.p90),
            Metric::P99 => Some(l.p99),
            Metric::P99_9 => Some(l.p99_9),
            Metric::P99_99 => Some(l.p99_99),
            Metric::Max => Some(l.max),
            Metric::ErrorRate if s.requests.total == 0 => None,
            Metric::ErrorRate => Some(s.error_rate()),
            Metric::Rps => Some(s.rate.achieved),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// True when `observed OP limit`.
    pub fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Op::Lt => observed < limit,
            Op::Le => observed <= limit,
            Op::Gt => observed > limit,
            Op::Ge => observed >= limit,
        }
    }
}

/// One parsed `--threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// As given on the command line.
    pub expression: String,
    pub metric: Metric,
    pub op: Op,
    /// In [`Metric::unit`]: ms, a fraction, or requests per second.
    pub limit: f64,
}

/// Largest `rps` limit accepted; far above any rate `--rate` can ask for.
pub const MAX_RPS_LIMIT: f64 = 1e12;

fn number(text: &str) -> Option<f64> {
    // Plain decimals only: no "inf", "NaN" or signs.
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && text.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    ok.then(|| text.parse::<f64>().ok())
        .flatten()
        .filter(|x| x.is_finite())
}

/// Parses `METRIC OP VALUE`, e.g. `p99<500ms`, `errors<=1%`, `rps>=100`.
/// The error says what is wrong; the caller names the flag.
pub fn parse(expr: &str) -> Result<Threshold, String> {
    let e = expr.trim();
    let at = e.find(['<', '>']).ok_or_else(|| {
        format!("'{expr}': expected METRIC OP VALUE with OP one of <, <=, >, >= (e.g. p99<500ms)")
    })?;
    let (name, rest) = e.split_at(at);
    let (op, value) = match (rest.as_bytes()[0], rest.as_bytes().get(1)) {
        (b'<', Some(b'=')) => (Op::Le, &rest[2..]),
        (b'<', _) => (Op::Lt, &rest[1..]),
        (b'>', Some(b'=')) => (Op::Ge, &rest[2..]),
        _ => (Op::Gt, &rest[1..]),
    };
    let (name, value) = (name.trim(), value.trim());
    let metric = Metric::from_name(name).ok_or_else(|| {
        format!(
            "'{expr}': unknown metric '{name}' (use p50, p90, p99, p99.9, p99.99, min, mean, max, errors or rps)"
        )
    })?;
    if value.is_empty() {
        return Err(format!("'{expr}': no value after '{}'", op.symbol()));
    }
    let limit = match metric {
        Metric::ErrorRate => match value.strip_suffix('%') {
            Some(pct) => number(pct.trim())
                .filter(|p| (0.0..=100.0).contains(p))
                .map(|p| p / 100.0)
                .ok_or_else(|| format!("'{expr}': '{value}' is not a percentage from 0% to 100%"))?,
            None => number(value)
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| {
                    format!(
                        "'{expr}': '{value}' is not a fraction from 0 to 1 (or a percentage, e.g. 1%)"
                    )
                })?,
        },
        Metric::Rps => {
            let v = value.strip_suffix("/s").unwrap_or(value).trim();
            number(v)
                .filter(|r| (0.0..=MAX_RPS_LIMIT).contains(r))
                .ok_or_else(|| {
                    format!("'{expr}': '{value}' is not a rate from 0 to {MAX_RPS_LIMIT} per second")
                })?
        }
        _ => {
            let d = duration::parse(value).map_err(|e| format!("'{expr}': {e}"))?;
            d.as_nanos() as f64 / 1e6
        }
    };
    Ok(Threshold {
        expression: expr.to_string(),
        metric,
        op,
        limit,
    })
}

/// How a rule came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Failed,
    /// Nothing to measure (e.g. a latency rule when nothing answered), or the
    /// generator saturated; fails the run.
    Unchecked,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "FAILED",
            Verdict::Unchecked => "UNCHECKED",
        })
    }
}

/// A rule and what the run measured, as written to summary.json's `thresholds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdOut {
    /// As given to --threshold.
    pub expression: String,
    /// Canonical metric name: p50 ... max, mean, min, errors, rps.
    pub metric: String,
    /// <, <=, > or >=.
    pub op: String,
    /// Unit of `limit` and `observed`: "ms", "ratio" (errors) or "1/s" (rps).
    pub unit: String,
    pub limit: f64,
    /// Null when there was nothing to measure (`verdict` "unchecked").
    pub observed: Option<f64>,
    /// True only when the rule held (`verdict` "ok").
    pub passed: bool,
    pub verdict: Verdict,
    /// Why the verdict is unchecked; null otherwise.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Threshold {
    /// Judges the rule against a run's summary.
    pub fn evaluate(&self, s: &Summary) -> ThresholdOut {
        let observed = self.metric.observe(s);
        let saturated = s.saturation.message();
        let (verdict, reason) = match (observed, saturated) {
            (None, _) => (
                Verdict::Unchecked,
                Some(if self.metric.is_latency() {
                    "no request got a response".to_string()
                } else {
                    "no request completed".to_string()
                }),
            ),
            (Some(_), Some(why)) => (Verdict::Unchecked, Some(why)),
            (Some(o), None) if self.op.holds(o, self.limit) => (Verdict::Ok, None),
            (Some(_), None) => (Verdict::Failed, None),
        };
        ThresholdOut {
            expression: self.expression.clone(),
            metric: self.metric.name().into(),
            op: self.op.symbol().into(),
            unit: self.metric.unit().into(),
            limit: self.limit,
            observed,
            passed: verdict == Verdict::Ok,
            verdict,
            reason,
        }
    }
}

/// `value` in a unit, for people: "12.345 ms", "1.200%", "99.5/s".
fn show(unit: &str, value: f64) -> String {
    match unit {
        "ratio" => format!("{:.3}%", value * 100.0),
        "1/s" => format!("{value:.1}/s"),
        _ => format!("{value:.3} ms"),
    }
}

impl ThresholdOut {
    /// The observed value for people, e.g. "12.345 ms", "1.200%", "99.5/s".
    pub fn observed_text(&self) -> String {
        match self.observed {
            Some(o) => show(&self.unit, o),
            None if self.unit == "ms" => "unchecked (no request got a response)".into(),
            None => "unchecked (no request completed)".into(),
        }
    }

    /// The rule's limit for people, e.g. "< 500.000 ms".
    pub fn limit_text(&self) -> String {
        format!("{} {}", self.op, show(&self.unit, self.limit))
    }

    /// One line for stdout, e.g.
    /// `threshold p99<500ms: p99 12.345 ms (limit < 500.000 ms): ok`, or
    /// `...: UNCHECKED (generator saturated at ~39000/s)`.
    pub fn line(&self) -> String {
        let why = match (&self.reason, self.observed) {
            (Some(r), Some(_)) => format!(" ({r})"),
            _ => String::new(),
        };
        format!(
            "threshold {}: {} {} (limit {}): {}{why}",
            self.expression,
            self.metric,
            self.observed_text(),
            self.limit_text(),
            self.verdict
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(expr: &str) -> Threshold {
        parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    #[test]
    fn latency_rules() {
        let p = t("p99<1000ms");
        assert_eq!((p.metric, p.op, p.limit), (Metric::P99, Op::Lt, 1000.0));
        let p = t(" p99.9 <= 1.5s ");
        assert_eq!((p.metric, p.op, p.limit), (Metric::P99_9, Op::Le, 1500.0));
        assert_eq!(t("p(99.99)<250us").metric, Metric::P99_99);
        assert_eq!(t("p(99.99)<250us").limit, 0.25);
        assert_eq!(t("max>=2m").op, Op::Ge);
        assert_eq!(t("max>=2m").limit, 120_000.0);
        assert_eq!(t("avg>1ms").metric, Metric::Mean);
        assert_eq!(t("med<1ms").metric, Metric::P50);
        assert_eq!(t("P90<1ms").metric, Metric::P90);
        assert_eq!(t("min<1ms").metric, Metric::Min);
    }

    #[test]
    fn error_and_rate_rules() {
        let e = t("errors<1%");
        assert_eq!((e.metric, e.op), (Metric::ErrorRate, Op::Lt));
        assert!((e.limit - 0.01).abs() < 1e-12);
        assert_eq!(t("error_rate<=0.01").limit, 0.01);
        assert_eq!(t("errors < 0.5 %").limit, 0.005);
        assert_eq!(t("errors<100%").limit, 1.0);
        let r = t("rps>=100");
        assert_eq!((r.metric, r.op, r.limit), (Metric::Rps, Op::Ge, 100.0));
        assert_eq!(t("rps>99.5/s").limit, 99.5);
    }

    #[test]
    fn malformed_rules_say_why() {
        for (bad, why) in [
            ("p99", "expected METRIC OP VALUE"),
            ("p99=1s", "expected METRIC OP VALUE"),
            ("p95<1s", "unknown metric 'p95'"),
            ("<1s", "unknown metric ''"),
            ("p99<", "no value"),
            ("p99<1000", "no unit"),
            ("p99<<1s", "does not start with a number"),
            ("p99<-1s", "negative"),
            ("p99<1y", "unknown unit"),
            ("errors<101%", "percentage"),
            ("errors<1.5", "fraction"),
            ("errors<-1%", "percentage"),
            ("errors<NaN", "fraction"),
            ("errors<inf%", "percentage"),
            ("rps>=fast", "rate"),
            ("rps>=1e300", "rate"),
            ("rps>=-1", "rate"),
            ("rps=>1", "unknown metric 'rps='"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
