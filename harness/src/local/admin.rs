//! A local proxy's Envoy admin API, on a Unix socket inside the private run directory (never on
//! TCP: any local user could otherwise `/quitquitquit` or `/runtime_modify` the mesh).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::client::{self, Dial, Request};
use crate::envoy::stats::parse_text;
use crate::outcome::Outcome;

/// File name of the admin socket in a proxy's directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// `GET` or `POST` `path` on the admin socket; the body of a 200 response.
pub async fn request(socket: &Path, method: &str, path: &str) -> Result<String> {
    let mut req = Request::get("envoy-admin", path);
    req.method = method.into();
    req.timeout = Duration::from_secs(5);
    match client::send(&Dial::Unix(socket.to_path_buf()), &req).await {
        Outcome::Response {
            status: 200, body, ..
        } => Ok(body),
        other => bail!(
            "Envoy admin {method} {path} on {}: {}",
            socket.display(),
            other.summary()
        ),
    }
}

pub async fn get(socket: &Path, path: &str) -> Result<String> {
    request(socket, "GET", path).await
}

/// Is the proxy initialized (listeners and clusters loaded)?
pub async fn is_live(socket: &Path) -> bool {
    get(socket, "/ready")
        .await
        .is_ok_and(|b| b.trim() == "LIVE")
}

/// The LDS and CDS version_info the proxy last accepted (stats `*.version_text`; the config
/// dump keeps the old version when a response changed no resource).
pub async fn xds_versions(socket: &Path) -> Result<(Option<String>, Option<String>)> {
    let body = get(socket, "/stats?filter=version_text").await?;
    Ok((
        parse_text(&body, "listener_manager.lds.version_text"),
        parse_text(&body, "cluster_manager.cds.version_text"),
    ))
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
