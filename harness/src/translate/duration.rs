//! Istio duration strings ("30s", "100ms", "1h") to Envoy's JSON durations.

use std::time::Duration;

/// Parses an Istio/Go-style duration: a number followed by h, m, s, ms, us/µs or ns (e.g.
/// "1.5s"). None for anything else: no unit, a negative or malformed number, or more than
/// Envoy's protobuf limit of 315,576,000,000 s. The one parser is `meshtest_load::duration`.
pub fn parse(text: &str) -> Option<Duration> {
    meshtest_load::duration::parse(text).ok()
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
        assert_eq!(parse("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse("99999999999999999999h"), None);
        assert_eq!(parse("315576000001s"), None);
    }

    #[test]
    fn formats_envoy_durations() {
        assert_eq!(envoy(Duration::from_secs(30)), "30s");
        assert_eq!(envoy(Duration::from_millis(100)), "0.100000000s");
    }
}
