//! The embedded mesh's span collector: Zipkin's v2 API, enough of it for Envoy to report to
//! (`POST /api/v2/spans`, JSON) and for the steps to read a trace (`GET /api/v2/trace/ID`).
//! Spans are kept in memory, the newest [`MAX_SPANS`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::Span;
use crate::local::runtime::MeshThread;
use crate::local::xds::reply;

/// Spans kept: a bounded memory however long the mesh runs.
pub const MAX_SPANS: usize = 100_000;
/// Largest report accepted (Envoy batches a few spans per POST).
const MAX_BODY: usize = 8 << 20;

type Store = Arc<Mutex<VecDeque<Span>>>;

/// A running collector.
pub struct Collector {
    pub url: String,
}

impl Collector {
    /// Binds `addr` and serves on the mesh thread until the mesh stops.
    pub async fn start(thread: &MeshThread, addr: SocketAddr) -> Result<Collector> {
        let listener = thread
            .run(async move { tokio::net::TcpListener::bind(addr).await })
            .await?
            .with_context(|| format!("binding the span collector on {addr}"))?;
        let store: Store = Arc::default();
        thread.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| respond(store.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Collector {
            url: format!("http://{addr}"),
        })
    }
}

async fn respond(
    store: Store,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::POST && path == "/api/v2/spans" {
        let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
            return Ok(reply(413, b"{}".to_vec()));
        };
        let Ok(spans) = serde_json::from_slice::<Vec<Span>>(&body.to_bytes()) else {
            return Ok(reply(
                400,
                b"{\"error\":\"not a JSON list of v2 spans\"}".to_vec(),
            ));
        };
        keep(&store, spans);
        return Ok(reply(202, Vec::new()));
    }
    if req.method() == hyper::Method::GET
        && let Some(id) = path.strip_prefix("/api/v2/trace/")
    {
        let id = id.to_ascii_lowercase();
        let found: Vec<Span> = store
            .lock()
            .map(|s| s.iter().filter(|x| x.trace_id == id).cloned().collect())
            .unwrap_or_default();
        if found.is_empty() {
            return Ok(reply(404, b"[]".to_vec()));
        }
        return Ok(reply(200, serde_json::to_vec(&found).unwrap_or_default()));
    }
    Ok(reply(404, b"{}".to_vec()))
}

fn keep(store: &Store, spans: Vec<Span>) {
    let Ok(mut s) = store.lock() else { return };
    for mut span in spans {
        span.trace_id = span.trace_id.to_ascii_lowercase();
        s.push_back(span);
    }
    while s.len() > MAX_SPANS {
        s.pop_front();
    }
}
