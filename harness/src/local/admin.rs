//! Envoy's admin API: readiness, stats, config dumps: how meshtest sees what a proxy really has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::client::{self, Dial, Request};
use crate::outcome::Outcome;

pub async fn get(admin: SocketAddr, path: &str) -> Result<String> {
    let mut req = Request::get(&admin.to_string(), path);
    req.timeout = Duration::from_secs(5);
    match client::send(&Dial::Tcp(admin), &req).await {
        Outcome::Response {
            status: 200, body, ..
        } => Ok(body),
        other => bail!("Envoy admin {admin}{path}: {}", other.summary()),
    }
}

pub async fn post(admin: SocketAddr, path: &str) -> Result<String> {
    let mut req = Request::get(&admin.to_string(), path);
    req.method = "POST".into();
    req.timeout = Duration::from_secs(5);
    match client::send(&Dial::Tcp(admin), &req).await {
        Outcome::Response {
            status: 200, body, ..
        } => Ok(body),
        other => bail!("Envoy admin POST {admin}{path}: {}", other.summary()),
    }
}

/// Is the proxy initialized (listeners and clusters loaded)?
pub async fn is_live(admin: SocketAddr) -> bool {
    get(admin, "/ready").await.is_ok_and(|b| b.trim() == "LIVE")
}

/// The LDS and CDS version_info the proxy last accepted (stats `*.version_text`; the config
/// dump keeps the old version when a response changed no resource).
pub async fn xds_versions(admin: SocketAddr) -> Result<(Option<String>, Option<String>)> {
    let body = get(admin, "/stats?filter=version_text").await?;
    let text_of = |name: &str| {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Ok((
        text_of("listener_manager.lds.version_text"),
        text_of("cluster_manager.cds.version_text"),
    ))
}

pub fn parse_stat(body: &str, name: &str) -> Option<u64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Polls `check` every 20 ms until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line() {
        let body = "cluster.x.upstream_rq_200: 12\ncluster.x.upstream_rq_2000: 7\n";
        assert_eq!(parse_stat(body, "cluster.x.upstream_rq_200"), Some(12));
        assert_eq!(parse_stat(body, "cluster.x.missing"), None);
    }
}
