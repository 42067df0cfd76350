//! The embedded mesh's control plane: xDS over REST with long polls, serving each proxy the
//! listeners and clusters last written to its directory. File-watched xDS costs two inotify
//! instances per Envoy, and the per-user default of 128 stopped meshes near 64 proxies; a
//! request held until the config changes costs nothing idle, and a rejected push comes back as
//! the proxy's next request (`error_detail`), not only as a log line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::runtime::MeshThread;
use crate::translate::bootstrap::{CDS_FILE, LDS_FILE};

pub const XDS_SOCKET: &str = "xds.sock";
/// How long a poll that already has the current version waits for a change. Envoy's
/// `request_timeout` in the bootstrap is longer.
const HOLD: Duration = Duration::from_secs(20);

/// Bumped after every write of a proxy's xDS files; held polls then look again.
static CHANGES: LazyLock<tokio::sync::watch::Sender<u64>> =
    LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// The version last written to each (proxy dir, file), so that a woken poll compares versions
/// without reading and parsing its file (every proxy's write wakes every held poll).
static VERSIONS: LazyLock<Mutex<HashMap<(PathBuf, &'static str), String>>> =
    LazyLock::new(Mutex::default);

/// Says `file` of the proxy in `dir` now holds `version` (every mesh in the process shares
/// this; a poll woken for another proxy's change goes back to waiting).
pub fn changed(dir: &Path, file: &'static str, version: &str) {
    VERSIONS
        .lock()
        .expect("versions lock")
        .insert((dir.to_path_buf(), file), version.to_string());
    CHANGES.send_modify(|n| *n += 1);
}

fn version_of(dir: &Path, file: &'static str) -> String {
    VERSIONS
        .lock()
        .expect("versions lock")
        .get(&(dir.to_path_buf(), file))
        .cloned()
        .unwrap_or_default()
}

/// (proxy dir, file) -> the version the proxy rejected: not sent again until it changes.
type Rejected = Arc<Mutex<HashMap<(PathBuf, &'static str), String>>>;

/// Serves `run_dir/xds.sock` on the mesh thread until the mesh stops.
pub async fn serve(thread: &MeshThread, run_dir: &Path) -> Result<PathBuf> {
    let socket = run_dir.join(XDS_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let path = socket.clone();
    // Bound on the mesh thread, whose runtime serves it.
    let listener = thread
        .run(async move { tokio::net::UnixListener::bind(&path) })
        .await?
        .with_context(|| format!("binding the xDS socket {}", socket.display()))?;
    let root = run_dir.to_path_buf();
    let rejected: Rejected = Arc::default();
    thread.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (root, rejected) = (root.clone(), rejected.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    respond(root.clone(), rejected.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(socket)
}

/// A JSON answer of the mesh's own HTTP servers (xDS, the span collector).
pub(crate) fn reply(status: u16, body: Vec<u8>) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn respond(
    root: PathBuf,
    rejected: Rejected,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let file = match req.uri().path() {
        "/v3/discovery:listeners" => LDS_FILE,
        "/v3/discovery:clusters" => CDS_FILE,
        _ => return Ok(reply(404, b"{}".to_vec())),
    };
    let Ok(body) = req.into_body().collect().await else {
        return Ok(reply(400, b"{}".to_vec()));
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return Ok(reply(400, b"{}".to_vec()));
    };
    // The proxy names its directory in its node metadata; only directories of this mesh.
    let Some(dir) = request["node"]["metadata"]["xds_dir"]
        .as_str()
        .map(PathBuf::from)
    else {
        return Ok(reply(400, b"{}".to_vec()));
    };
    if dir.parent() != Some(root.as_path()) {
        return Ok(reply(403, b"{}".to_vec()));
    }
    let had = request["version_info"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = (dir.clone(), file);
    let mut changes = CHANGES.subscribe();
    let deadline = tokio::time::Instant::now() + HOLD;
    loop {
        let version = version_of(&dir, file);
        if request.get("error_detail").is_some_and(|e| !e.is_null()) {
            // A NACK of what it was last sent: remember it, so it is not sent again.
            let mut r = rejected.lock().expect("rejected lock");
            if version != had {
                r.insert(key.clone(), version.clone());
            }
        }
        let refused = rejected.lock().expect("rejected lock").get(&key) == Some(&version);
        if (version != had && !refused) || tokio::time::Instant::now() >= deadline {
            // The file is a DiscoveryResponse already; its resources carry their @type, so
            // Envoy needs no type_url.
            let current = std::fs::read(dir.join(file)).unwrap_or_default();
            return Ok(reply(200, current));
        }
        // Wait for a write (any proxy's) or the hold to end.
        let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
    }
}
