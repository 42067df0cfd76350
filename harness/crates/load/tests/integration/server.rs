//! A tiny configurable hyper test server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct Behaviour {
    /// When request number `.0` arrives, every request is held until `.1` later.
    pub stall_at: Option<(u64, Duration)>,
    pub http2: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct State {
    behaviour: Behaviour,
    count: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Paths: `/status/NNN` answers NNN, `/sleep/MS` waits MS ms, `/close` closes
/// the connection after answering, `/versions` alternates "v1"/"v2" in the JSON body; anything else answers 200 v1.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.count.fetch_add(1, Ordering::Relaxed);
    if let Some((at, d)) = state.behaviour.stall_at {
        let until = {
            let mut s = state.stall_until.lock().unwrap();
            if n == at {
                *s = Some(Instant::now() + d);
            }
            *s
        };
        if let Some(until) = until
            && Instant::now() < until
        {
            tokio::time::sleep_until(until.into()).await;
        }
    }
    let path = req.uri().path();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let version = if path == "/versions" && n % 2 == 1 {
        "v2"
    } else {
        "v1"
    };
    let body = format!(r#"{{"service":"echo","version":"{version}","pod":"echo-0"}}"#);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if path == "/close" {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

pub async fn start(behaviour: Behaviour) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        behaviour,
        count: AtomicU64::new(0),
        stall_until: Mutex::new(None),
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = {
                    let state = state.clone();
                    service_fn(move |req| handle(state.clone(), req))
                };
                let http2 = state.behaviour.http2;
                match state.behaviour.tls.clone() {
                    Some(cfg) => {
                        let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                            return;
                        };
                        serve(TokioIo::new(tls), http2, svc).await
                    }
                    None => serve(TokioIo::new(tcp), http2, svc).await,
                }
            });
        }
    });
    TestServer { addr }
}

async fn serve<I, S>(io: I, http2: bool, svc: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    if http2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// Accepts connections, reads the request and closes without answering.
pub async fn start_rude() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    addr
}

/// A port on which nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Answers every request (a head ending in an empty line) with the bytes of
/// `response`; closes the connection after each answer when `close` is set.
pub async fn start_raw(response: &'static [u8], close: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        if tcp.write_all(response).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}
