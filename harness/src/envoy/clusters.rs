//! Envoy's `/clusters` text format: `CLUSTER::HOST:PORT::KEY::VALUE` per line.

/// The health flags Envoy reports for `address` in `cluster` ("healthy", or e.g.
/// "/failed_outlier_check"), or None when the host is not listed.
pub fn health_flags<'a>(body: &'a str, cluster: &str, address: &str) -> Option<&'a str> {
    let prefix = format!("{cluster}::{address}::health_flags::");
    body.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// Is the host ejected by outlier detection?
pub fn is_ejected(flags: &str) -> bool {
    flags.contains("failed_outlier_check")
}

/// The hosts Envoy lists for `cluster`, in order.
pub fn hosts(body: &str, cluster: &str) -> Vec<String> {
    let prefix = format!("{cluster}::");
    let mut out: Vec<String> = Vec::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix(prefix.as_str())
            && let Some((host, _)) = rest.split_once("::")
            && host.contains(':')
            && !out.iter().any(|h| h == host)
        {
            out.push(host.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_health_flags() {
        let body = "c::observability_name::c\nc::127.0.1.1:8080::cx_active::1\nc::127.0.1.1:8080::health_flags::/failed_outlier_check\nc::127.0.1.2:8080::health_flags::healthy\n";
        assert_eq!(
            health_flags(body, "c", "127.0.1.1:8080"),
            Some("/failed_outlier_check")
        );
        assert!(is_ejected(
            health_flags(body, "c", "127.0.1.1:8080").unwrap()
        ));
        assert!(!is_ejected(
            health_flags(body, "c", "127.0.1.2:8080").unwrap()
        ));
        assert_eq!(health_flags(body, "c", "127.0.1.3:8080"), None);
        assert_eq!(hosts(body, "c"), ["127.0.1.1:8080", "127.0.1.2:8080"]);
    }
}
