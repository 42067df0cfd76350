//! Zipkin's v2 query API, as the tracing steps need it: the spans of one trace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::client::{self, Dial, Request};

/// One span as Zipkin's v2 JSON carries it (the fields the steps read).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub service_name: Option<String>,
}

impl Span {
    /// The reporting proxy's service name (Envoy's node cluster: `app.namespace`).
    pub fn service(&self) -> &str {
        self.local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
            .unwrap_or("")
    }
}

/// A Zipkin server's API at `http://IP:PORT`.
#[derive(Debug, Clone)]
pub struct ZipkinApi {
    addr: SocketAddr,
}

impl ZipkinApi {
    pub fn new(url: &str) -> Result<ZipkinApi> {
        let hostport = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("Zipkin URL {url} is not http://IP:PORT"))?
            .trim_end_matches('/');
        let addr = hostport
            .parse()
            .with_context(|| format!("Zipkin URL {url} is not http://IP:PORT"))?;
        Ok(ZipkinApi { addr })
    }

    /// The spans of trace `id` received so far (none yet: an empty list, as Zipkin's 404).
    pub async fn trace(&self, id: &str) -> Result<Vec<Span>> {
        let path = format!("/api/v2/trace/{}", id.to_ascii_lowercase());
        let mut req = Request::get(&self.addr.to_string(), &path);
        req.timeout = Duration::from_secs(5);
        let out = client::send(&Dial::Tcp(self.addr), &req).await;
        match (out.status(), out.body()) {
            (Some(200), Some(body)) => {
                serde_json::from_str(body).with_context(|| format!("Zipkin {path}"))
            }
            (Some(404), _) => Ok(Vec::new()),
            _ => bail!("Zipkin at {} {path}: {}", self.addr, out.summary()),
        }
    }
}
