//! The one duration parser: `meshtest load` flags, thresholds, and (through
//! `meshtest::translate::duration`) Istio manifest durations.
//!
//! A duration is a decimal number followed by a unit: `ns`, `us`/`µs`, `ms`,
//! `s`, `m` or `h`, e.g. `10s`, `1.5s`, `100ms`, `2m`, `1h`, `250us`. A unit is
//! required so that "10" is never silently read as seconds or milliseconds.
//! The number is read exactly (no floating point), truncated to whole
//! nanoseconds, and may not exceed [`MAX`], the largest duration Envoy's
//! protobuf `Duration` holds. Nothing here panics, whatever the input.

use std::time::Duration;

/// 315,576,000,000 s (10,000 years): protobuf's `Duration` limit, and so Envoy's.
pub const MAX_SECS: u64 = 315_576_000_000;
/// [`MAX_SECS`] as a `Duration`.
pub const MAX: Duration = Duration::from_secs(MAX_SECS);

const UNITS: &str = "ns, us, ms, s, m or h";

/// Nanoseconds per unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, as Go accepts both.
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses a duration such as "10s", "500ms", "2m", "1h", "250us" or "1.5s".
///
/// Errors (never panics) on a missing or unknown unit, a malformed or
/// negative number, and anything above [`MAX`]; the message quotes the text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration (e.g. 10s, 500ms, 2m)".into());
    }
    if t.starts_with('-') {
        return Err(format!("'{text}' is negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{text}' has no unit (use {UNITS})"))?;
    let (num, unit) = t.split_at(split);
    let per_unit = unit_nanos(unit).ok_or_else(|| {
        if num.is_empty() {
            format!("'{text}' does not start with a number")
        } else {
            format!("'{text}' has unknown unit '{unit}' (use {UNITS})")
        }
    })?;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(format!("'{text}' does not start with a number"));
    }
    let too_large = || format!("'{text}' is longer than the maximum of {MAX_SECS}s");
    // Whole units, exactly; any overflow is far above MAX anyway.
    let mut nanos: u128 = 0;
    for d in int.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d - b'0')))
            .filter(|n| *n <= u128::from(MAX_SECS) * 1_000_000_000)
            .ok_or_else(too_large)?;
    }
    nanos = nanos.checked_mul(per_unit).ok_or_else(too_large)?;
    // The fraction of a unit, truncated to whole nanoseconds: 18 digits are
    // below a nanosecond even for hours.
    let digits = &frac[..frac.len().min(18)];
    let mut scaled: u128 = 0;
    for d in digits.bytes() {
        scaled = scaled * 10 + u128::from(d - b'0');
    }
    nanos += scaled * per_unit / 10u128.pow(digits.len() as u32);
    if nanos > u128::from(MAX_SECS) * 1_000_000_000 {
        return Err(too_large());
    }
    // Fits: MAX_SECS < u64::MAX.
    Ok(Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    ))
}

/// A short human form: "1.5s", "250ms", "30us", "2m", "1h", "0s".
pub fn human(d: Duration) -> String {
    let n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    let (unit, per) = [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ]
    .into_iter()
    .find(|(_, per)| n >= *per && (*per < 60_000_000_000 || n.is_multiple_of(*per)))
    .unwrap_or(("ns", 1));
    let whole = n / per;
    let rest = n % per;
    if rest == 0 {
        return format!("{whole}{unit}");
    }
    // Up to 9 decimals, trailing zeros dropped.
    let width = per.ilog10() as usize;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250μs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0.001ms"), Ok(Duration::from_micros(1)));
        assert_eq!(parse("1.0000000001s"), Ok(Duration::new(1, 0)));
        assert_eq!(
            parse("1.000000000000000000000000000001s"),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn rejects_without_panicking() {
        for bad in [
            "",
            "10",
            "ten s",
            "5y",
            "s",
            ".s",
            "1..5s",
            "1.2.3s",
            "-1s",
            "- 1s",
            "+1s",
            "1e3s",
            "inf s",
            "NaNs",
            "1 s",
            "1s1",
            "1h30m",
            "10S",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let huge = "9".repeat(400) + "s";
        assert!(parse(&huge).unwrap_err().contains("maximum"));
    }

    #[test]
    fn the_cap_is_envoys() {
        assert_eq!(parse("315576000000s"), Ok(MAX));
        assert!(parse("315576000000.000000001s").is_err());
        assert!(parse("315576000001s").is_err());
        assert_eq!(parse("87660000h"), Ok(MAX));
        assert!(parse("87660000.1h").is_err());
    }

    #[test]
    fn human_forms() {
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_micros(30)), "30us");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_nanos(7)), "7ns");
        assert_eq!(human(Duration::from_nanos(1_000_500)), "1.0005ms");
    }
}
