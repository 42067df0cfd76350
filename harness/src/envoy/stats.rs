//! Envoy's `/stats` text format (`name: value` per line).

/// The value of counter or gauge `name`, if the proxy has created it.
pub fn parse_stat(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A text stat such as `listener_manager.lds.version_text`, without its quotes.
pub fn parse_text(body: &str, name: &str) -> Option<String> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The sum of every counter in a `/stats` body (histogram lines are skipped).
pub fn sum_counters(body: &str) -> u64 {
    body.lines()
        .filter_map(|l| l.split_once(": ")?.1.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line() {
        let body = "cluster.x.upstream_rq_200: 12\ncluster.x.upstream_rq_2000: 7\nlistener_manager.lds.version_text: \"3\"\n";
        assert_eq!(parse_stat(body, "cluster.x.upstream_rq_200"), Some(12));
        assert_eq!(parse_stat(body, "cluster.x.missing"), None);
        assert_eq!(
            parse_text(body, "listener_manager.lds.version_text").as_deref(),
            Some("3")
        );
    }
}
