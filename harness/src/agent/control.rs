//! The agent's control API: set or clear a fault, and make a call from this workload.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::Method;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fault, Handled, Shared, json_response};
use crate::client::{self, Request};

/// GET /stats: what the app ports have served since the agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Requests received on the app ports (each retry attempt of a caller's proxy counts).
    pub requests: u64,
    /// Of those, the ones a fault changed.
    #[serde(default)]
    pub faulted: u64,
}

/// POST /call: what to call from this workload (through its sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallOrder {
    /// Service name, e.g. "auth-service", or SERVICE:PORT.
    pub to: String,
    pub path: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

fn get() -> String {
    "GET".into()
}

fn ten_seconds() -> u64 {
    10_000
}

pub(crate) async fn handle(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Handled {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(json_response(400, &json!({"error": e.to_string()}))),
    };
    Ok(match (method, path.as_str()) {
        (Method::GET, "/health") => json_response(200, &json!({"status": "ok"})),
        (Method::GET, "/info") => {
            let c = &shared.config;
            json_response(
                200,
                &json!({"service": c.service, "version": c.version, "pod": c.pod, "namespace": c.namespace}),
            )
        }
        (Method::GET, "/fault") => {
            json_response(200, &shared.fault.lock().expect("fault lock").status())
        }
        (Method::GET, "/stats") => json_response(
            200,
            &AgentStats {
                requests: shared.requests.load(std::sync::atomic::Ordering::Relaxed),
                faulted: shared.faulted.load(std::sync::atomic::Ordering::Relaxed),
            },
        ),
        (Method::PUT | Method::POST, "/fault") => match serde_json::from_slice::<Fault>(&body) {
            Ok(f) => {
                shared.fault.lock().expect("fault lock").set(f.clone());
                json_response(200, &f)
            }
            Err(e) => json_response(400, &json!({"error": format!("bad fault: {e}")})),
        },
        // `?owner=ID` clears the fault only if that owner set it (a chaos revert never clears
        // someone else's fault); the answer says whether it did.
        (Method::DELETE, "/fault") => {
            let owner = query.split('&').find_map(|kv| kv.strip_prefix("owner="));
            let mut state = shared.fault.lock().expect("fault lock");
            let current = state.current();
            let ours = owner.is_none_or(|o| current.owner.as_deref() == Some(o));
            if ours {
                state.set(Fault::default());
            }
            json_response(
                200,
                &json!({"cleared": ours && current.is_active(), "fault": state.current()}),
            )
        }
        (Method::POST, "/call") => match serde_json::from_slice::<CallOrder>(&body) {
            Ok(order) => {
                let (dial, host) = shared.route_to(&order.to);
                let request = Request {
                    method: order.method,
                    path: order.path,
                    host,
                    headers: order.headers,
                    body: order.body.into_bytes(),
                    timeout: Duration::from_millis(order.timeout_ms.min(600_000)),
                };
                json_response(200, &client::send(&dial, &request).await)
            }
            Err(e) => json_response(400, &json!({"error": format!("bad call order: {e}")})),
        },
        _ => json_response(
            404,
            &json!({"error": "control API: GET /health, GET /info, GET /stats, GET|PUT|DELETE /fault, POST /call"}),
        ),
    })
}
