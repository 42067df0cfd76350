//! One HTTP/1.1 request over a fresh connection (TCP, TLS or a Unix socket), with every
//! failure classified into an `Outcome` and the whole exchange bounded by a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::outcome::Outcome;

/// Responses larger than this are cut off (the agent's echoes are a few KiB).
const MAX_BODY: usize = 4 << 20;

/// How to reach the server.
#[derive(Clone)]
pub enum Dial {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Tls {
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: String,
    },
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Tcp(a) => write!(f, "tcp://{a}"),
            Dial::Unix(p) => write!(f, "unix:{}", p.display()),
            Dial::Tls {
                addr, server_name, ..
            } => write!(f, "tls://{addr} (sni {server_name})"),
        }
    }
}

/// An HTTP request to make.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Request {
    pub fn get(host: &str, path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            host: host.into(),
            headers: vec![],
            body: vec![],
            timeout: Duration::from_secs(10),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Sends one request; never panics, never waits past `req.timeout`.
pub async fn send(dial: &Dial, req: &Request) -> Outcome {
    match tokio::time::timeout(req.timeout, exchange(dial, req)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Timeout {
            detail: format!("no response from {dial:?} within {:?}", req.timeout),
        },
    }
}

async fn exchange(dial: &Dial, req: &Request) -> Outcome {
    match dial {
        Dial::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                over(s, req).await
            }
            Err(e) => connect_error(e, &format!("{addr}")),
        },
        Dial::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(s) => over(s, req).await,
            Err(e) => connect_error(e, &path.display().to_string()),
        },
        Dial::Tls {
            addr,
            config,
            server_name,
        } => {
            let tcp = match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => return connect_error(e, &format!("{addr}")),
            };
            let _ = tcp.set_nodelay(true);
            let name = match rustls::pki_types::ServerName::try_from(server_name.clone()) {
                Ok(n) => n,
                Err(e) => {
                    return Outcome::Error {
                        detail: format!("bad server name {server_name}: {e}"),
                    };
                }
            };
            match tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
            {
                Ok(tls) => over(tls, req).await,
                Err(e) => Outcome::Tls {
                    detail: e.to_string(),
                },
            }
        }
    }
}

fn connect_error(e: std::io::Error, target: &str) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused {
            detail: format!("{target}: {e}"),
        },
        std::io::ErrorKind::ConnectionReset => Outcome::Reset {
            detail: format!("{target}: {e}"),
        },
        _ => Outcome::Error {
            detail: format!("connecting to {target}: {e}"),
        },
    }
}

async fn over<S>(stream: S, req: &Request) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return classify(e),
    };
    let mut conn = tokio::spawn(conn);
    let mut builder = hyper::Request::builder()
        .method(req.method.as_str())
        .uri(&req.path);
    // A Host among the headers (`call -H 'host: ...'`) replaces the default one.
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", &req.host);
    }
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let request = match builder.body(Full::new(Bytes::from(req.body.clone()))) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Error {
                detail: format!("bad request: {e}"),
            };
        }
    };
    let outcome = match sender.send_request(request).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            match Limited::new(resp.into_body(), MAX_BODY).collect().await {
                Ok(body) => Outcome::Response {
                    status,
                    headers,
                    body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                },
                Err(e) => Outcome::Reset {
                    detail: format!("response body cut off: {e}"),
                },
            }
        }
        Err(e) => {
            // The connection task holds the real cause (e.g. a TLS alert after the handshake).
            match tokio::time::timeout(Duration::from_millis(500), &mut conn).await {
                Ok(Ok(Err(conn_err))) => classify(conn_err),
                _ => classify(e),
            }
        }
    };
    conn.abort();
    outcome
}

fn classify(e: hyper::Error) -> Outcome {
    // Walk the cause chain: a TLS alert arrives as hyper(Canceled) -> hyper(Io) -> io -> rustls.
    let mut io_kind = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind = io_kind.or(Some(io.kind()));
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Outcome::Tls {
                    detail: tls.to_string(),
                };
            }
        }
        cause = c.source();
    }
    let reset = matches!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    );
    if e.is_incomplete_message() || e.is_canceled() || reset {
        Outcome::Reset {
            detail: e.to_string(),
        }
    } else {
        Outcome::Error {
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_classified() {
        // Bind then drop to find a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let o = send(
            &Dial::Tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            &Request::get("x", "/"),
        )
        .await;
        assert_eq!(o.kind(), "refused", "{o:?}");
    }

    #[tokio::test]
    async fn closed_without_response_is_reset() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            drop(s);
        });
        let o = send(&Dial::Tcp(addr), &Request::get("x", "/")).await;
        assert_eq!(o.kind(), "reset", "{o:?}");
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut req = Request::get("x", "/");
        req.timeout = Duration::from_millis(200);
        assert_eq!(send(&Dial::Tcp(addr), &req).await.kind(), "timeout");
    }
}
