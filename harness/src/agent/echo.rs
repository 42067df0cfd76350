//! The agent's app port: echo JSON, api-gateway's forwarding, and the injected fault.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{
    CloseConnection, HANG_LIMIT, Handled, Shared, caller_from_xfcc, header_map, json_response,
};
use crate::client::{self, Request};
use crate::outcome::Outcome;

/// Hop-by-hop and identity headers that must not be copied onto a forwarded request.
const NOT_FORWARDED: [&str; 6] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "x-forwarded-client-cert",
    "te",
];

/// Where the test issuer's keys are served (RequestAuthentication jwksUri points here).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

pub(crate) async fn handle(
    shared: Arc<Shared>,
    port: u16,
    req: hyper::Request<Incoming>,
) -> Handled {
    shared
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fault = shared.fault_for_request();
    if fault.is_active() {
        shared
            .faulted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let answer = respond(&shared, port, &fault, req).await?;
    Ok(match fault.slow_body_ms {
        Some(ms) => slow(answer, Duration::from_millis(ms)).await,
        None => answer,
    })
}

/// The same answer with its body spread over `over`.
async fn slow(answer: super::Response, over: Duration) -> super::Response {
    let (parts, body) = answer.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = http_body_util::BodyExt::boxed(super::fault::SlowBody::new(bytes, over));
    hyper::Response::from_parts(parts, body)
}

async fn respond(
    shared: &Arc<Shared>,
    port: u16,
    fault: &super::Fault,
    req: hyper::Request<Incoming>,
) -> Handled {
    if fault.close {
        return Err(CloseConnection);
    }
    if fault.hang || fault.hold {
        let started = Instant::now();
        // Wait until the fault is lifted or the bound runs out; a hang then closes, a hold answers.
        let lifted = loop {
            let current = shared.fault();
            if current.hang != fault.hang || current.hold != fault.hold {
                break true;
            }
            if started.elapsed() >= HANG_LIMIT {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if fault.hang || !lifted {
            return Err(CloseConnection);
        }
    }
    if let Some(ms) = fault.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let cfg = &shared.config;
    if let Some(status) = fault.status {
        return Ok(json_response(
            status,
            &json!({"service": cfg.service, "version": cfg.version, "pod": cfg.pod, "fault": {"status": status}}),
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if let Some(jwks) = &cfg.jwks
        && req.uri().path() == JWKS_PATH
    {
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(super::full(jwks.clone()))
            .expect("static response parts are valid"));
    }
    if let Some((_, target)) = cfg
        .forwards
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
    {
        return Ok(forward(shared, target, req, &path).await);
    }
    if req
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
    {
        return Ok(super::grpc::answer(req.uri().path()));
    }
    let headers = header_map(req.headers());
    let caller = headers
        .get("x-forwarded-client-cert")
        .and_then(|x| caller_from_xfcc(x));
    Ok(json_response(
        200,
        &json!({
            "service": cfg.service,
            "version": cfg.version,
            "pod": cfg.pod,
            "namespace": cfg.namespace,
            "port": port,
            "method": req.method().as_str(),
            "path": path,
            "caller": caller,
            "headers": headers,
        }),
    ))
}

async fn forward(
    shared: &Shared,
    target: &str,
    req: hyper::Request<Incoming>,
    path: &str,
) -> super::Response {
    let (dial, host) = shared.route_to(target);
    let method = req.method().as_str().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| !NOT_FORWARDED.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), 4 << 20).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => {
            return json_response(400, &json!({"error": format!("reading request body: {e}")}));
        }
    };
    let request = Request {
        method,
        path: path.to_string(),
        host,
        headers,
        body,
        timeout: Duration::from_secs(130),
    };
    let outcome = client::send(&dial, &request).await;
    let via = &shared.config.pod;
    match outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => {
            let mut builder = hyper::Response::builder()
                .status(status)
                .header("x-meshtest-forwarded-by", via.as_str());
            for (k, v) in headers
                .iter()
                .filter(|(k, _)| !NOT_FORWARDED.contains(&k.as_str()))
            {
                builder = builder.header(k, v);
            }
            builder.body(super::full(body)).unwrap_or_else(|e| {
                json_response(
                    502,
                    &json!({"error": format!("bad upstream response: {e}")}),
                )
            })
        }
        other => json_response(
            502,
            &json!({"error": format!("forwarding to {target}: {}", other.summary()), "forwarded_by": via}),
        ),
    }
}
