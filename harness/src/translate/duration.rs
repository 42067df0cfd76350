//! Istio duration strings ("30s", "100ms", "1h") to Envoy's JSON durations.

use std::time::Duration;

/// Parses an Istio/Go-style duration: a number followed by h, m, s, ms or us (e.g. "1.5s").
pub fn parse(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit {
        "h" => value * 3600.0,
        "m" => value * 60.0,
        "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Envoy's proto3 JSON duration: seconds with up to 9 fractional digits and an `s`.
pub fn envoy(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        assert_eq!(parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("10"), None);
    }

    #[test]
    fn formats_envoy_durations() {
        assert_eq!(envoy(Duration::from_secs(30)), "30s");
        assert_eq!(envoy(Duration::from_millis(100)), "0.100000000s");
    }
}
