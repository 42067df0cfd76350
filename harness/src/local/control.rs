//! The mesh's control socket: how another `meshtest` process (chaos with `--attach`, `run
//! --attach`, `chaos revert`) changes the mesh `meshtest up` owns. A Unix socket in the 0700 run
//! directory (mode 0600): JSON over HTTP/1.1.
//!
//! POST /apply (manifests) · POST /injections ({id, owner, injection, lease_ms}) ·
//! DELETE /injections/ID (answers {"reverted": bool}) · GET /injections

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::LocalMesh;
use crate::client::{self, Dial, Request};
use crate::manifest::Manifests;
use crate::outcome::Outcome;
use crate::target::injection::{ActiveInjection, Injection};

/// File name of the control socket in the run directory.
pub const CONTROL_SOCKET: &str = "mesh.sock";

/// POST /injections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectOrder {
    pub id: String,
    pub owner: String,
    pub injection: Injection,
    pub lease_ms: u64,
}

/// Serves the control socket until the task is aborted.
pub fn serve(mesh: Arc<LocalMesh>, socket: &Path) -> Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(mesh.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

type Answer = hyper::Response<Full<Bytes>>;

fn answer(status: u16, value: serde_json::Value) -> Result<Answer, std::convert::Infallible> {
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static response parts are valid"))
}

async fn handle(
    mesh: Arc<LocalMesh>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Answer, std::convert::Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body = match Limited::new(req.into_body(), 16 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return answer(400, json!({"error": e.to_string()})),
    };
    let result: Result<serde_json::Value> = async {
        match (method.as_str(), path.as_str()) {
            ("POST", "/apply") => {
                let manifests: Manifests = serde_json::from_slice(&body).context("manifests")?;
                mesh.apply(manifests).await?;
                Ok(json!({"applied": true}))
            }
            ("POST", "/injections") => {
                let o: InjectOrder = serde_json::from_slice(&body).context("inject order")?;
                mesh.inject(
                    &o.id,
                    &o.owner,
                    &o.injection,
                    Duration::from_millis(o.lease_ms),
                )
                .await?;
                Ok(json!({"injected": o.id}))
            }
            ("GET", "/injections") => Ok(serde_json::to_value(mesh.injections().await)?),
            ("DELETE", p) if p.starts_with("/injections/") => {
                let id = &p["/injections/".len()..];
                Ok(json!({"reverted": mesh.revert(id).await?}))
            }
            _ => bail!("no such control request: {method} {path}"),
        }
    }
    .await;
    match result {
        Ok(v) => answer(200, v),
        Err(e) => answer(500, json!({"error": format!("{e:#}")})),
    }
}

/// The client side, for a process attached to a mesh another one runs.
#[derive(Debug, Clone)]
pub struct ControlClient {
    pub socket: PathBuf,
}

impl ControlClient {
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> Result<serde_json::Value> {
        let mut req = Request::get("mesh", path);
        req.method = method.into();
        req.body = body;
        req.headers
            .push(("content-type".into(), "application/json".into()));
        req.timeout = Duration::from_secs(60);
        match client::send(&Dial::Unix(self.socket.clone()), &req).await {
            Outcome::Response {
                status: 200, body, ..
            } => serde_json::from_str(&body).context("the mesh's answer"),
            Outcome::Response { body, .. } => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                bail!("the mesh refused: {}", v["error"].as_str().unwrap_or(&body))
            }
            other => bail!(
                "the mesh's control socket {}: {} (is `meshtest up` still running?)",
                self.socket.display(),
                other.summary()
            ),
        }
    }

    pub async fn apply(&self, manifests: &Manifests) -> Result<()> {
        self.request("POST", "/apply", serde_json::to_vec(manifests)?)
            .await
            .map(|_| ())
    }

    pub async fn inject(&self, order: &InjectOrder) -> Result<()> {
        self.request("POST", "/injections", serde_json::to_vec(order)?)
            .await
            .map(|_| ())
    }

    pub async fn revert(&self, id: &str) -> Result<bool> {
        let v = self
            .request("DELETE", &format!("/injections/{id}"), vec![])
            .await?;
        Ok(v["reverted"].as_bool().unwrap_or(false))
    }

    pub async fn injections(&self) -> Result<Vec<ActiveInjection>> {
        let v = self.request("GET", "/injections", vec![]).await?;
        serde_json::from_value(v).context("the mesh's injections")
    }
}
