//! Owned HTTP/1.1 and HTTP/2 connections (hyper client conn) and error classification.

use std::error::Error as _;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::Result;
use crate::plan::LoadPlan;
use crate::tls;

/// Why a request produced no HTTP response. Names are the summary.json keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed (refused, unreachable, DNS).
    Connect,
    /// The peer closed or reset the connection mid-request.
    Reset,
    /// TLS handshake or record failure.
    Tls,
    /// The request did not complete within --timeout.
    Timeout,
    /// Anything else (protocol errors, ...).
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Reset,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }
}

/// Classifies a hyper error by walking its source chain.
pub fn classify(err: &hyper::Error) -> ErrorKind {
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    let mut source = err.source();
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return ErrorKind::Tls;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        source = e.source();
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return ErrorKind::Reset;
    }
    ErrorKind::Other
}

pub(crate) fn classify_io(io: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) {
        return ErrorKind::Tls;
    }
    match io.kind() {
        K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::UnexpectedEof => {
            ErrorKind::Reset
        }
        K::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// hyper's connection future: reads and writes the socket for a `SendRequest`.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One owned connection; HTTP/1.1 carries one request at a time, HTTP/2 multiplexes.
pub enum Conn {
    /// Connection future runs as its own task, so the connection notices a
    /// server close even while idle (open-loop pool).
    H1(http1::SendRequest<Full<Bytes>>),
    /// Connection future polled by the task that sends the requests: saves a
    /// task wake-up and a channel hop per request. Only for connections that
    /// are never idle (closed loop).
    H1Inline(http1::SendRequest<Full<Bytes>>, Option<Driver>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn exchange<F>(send: F) -> Result<(u16, Bytes), ErrorKind>
where
    F: Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    let resp = send.await.map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| classify(&e))?
        .to_bytes();
    Ok((status, body))
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H1Inline(s, driver) => driver.is_none() || s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    /// A second handle on the same connection (HTTP/2 only).
    pub fn share(&self) -> Option<Conn> {
        match self {
            Conn::H1(_) | Conn::H1Inline(..) => None,
            Conn::H2(s) => Some(Conn::H2(s.clone())),
        }
    }

    /// Waits until the connection can take a request; false when it was closed
    /// (e.g. the server sent `connection: close`), in which case nothing was sent
    /// and the caller should reconnect rather than count an error.
    pub async fn ready(&mut self) -> bool {
        match self {
            Conn::H1(s) => s.ready().await.is_ok(),
            Conn::H2(s) => s.ready().await.is_ok(),
            Conn::H1Inline(s, driver) => {
                std::future::poll_fn(|cx| {
                    // Let the driver process whatever happened since the last
                    // response (a close, typically) before asking for readiness.
                    if let Some(d) = driver.as_mut()
                        && d.as_mut().poll(cx).is_ready()
                    {
                        *driver = None;
                    }
                    match s.poll_ready(cx) {
                        Poll::Ready(r) => Poll::Ready(r.is_ok() && driver.is_some()),
                        Poll::Pending if driver.is_none() => Poll::Ready(false),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            }
        }
    }

    /// Sends one request and reads the whole response body. Call [`Conn::ready`] first.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), ErrorKind> {
        match self {
            Conn::H1(s) => exchange(s.send_request(req)).await,
            Conn::H2(s) => exchange(s.send_request(req)).await,
            Conn::H1Inline(s, driver) => {
                let mut fut = pin!(exchange(s.send_request(req)));
                std::future::poll_fn(|cx| {
                    if let Some(d) = driver.as_mut()
                        && d.as_mut().poll(cx).is_ready()
                    {
                        // Dropping the finished driver fails the pending request
                        // instead of leaving it waiting forever.
                        *driver = None;
                    }
                    fut.as_mut().poll(cx)
                })
                .await
            }
        }
    }
}

/// Opens connections to the plan's target and builds its requests.
pub struct Connector {
    host: String,
    port: u16,
    http2: bool,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Connector {
    pub fn new(plan: &LoadPlan) -> Result<Arc<Connector>> {
        let t = &plan.target;
        let tls = match &plan.tls {
            Some(cfg) => Some((TlsConnector::from(cfg.clone()), tls::server_name(&t.host)?)),
            None => None,
        };
        let mut headers = plan.headers.clone();
        // HTTP/1.1 requests go out in origin-form, so Host must be explicit;
        // HTTP/2 takes :authority from the absolute URI.
        let uri = if plan.http2 {
            t.uri.clone()
        } else {
            if !headers.contains_key(http::header::HOST) {
                let host = HeaderValue::from_str(&t.authority).map_err(|_| {
                    crate::LoadError::input(format!("URL host '{}': invalid", t.authority))
                })?;
                headers.insert(http::header::HOST, host);
            }
            let pq = t.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            pq.parse::<Uri>()
                .map_err(|e| crate::LoadError::input(format!("URL path '{pq}': {e}")))?
        };
        Ok(Arc::new(Connector {
            host: t.host.clone(),
            port: t.port,
            http2: plan.http2,
            tls,
            method: plan.method.clone(),
            uri,
            headers,
            body: plan.body.clone(),
        }))
    }

    /// A fresh request; cloning the prepared parts is cheaper than re-validating them.
    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if self.http2 {
            *req.version_mut() = http::Version::HTTP_2;
        }
        req
    }

    /// Opens a connection; `inline` asks for [`Conn::H1Inline`] on HTTP/1.1.
    pub async fn connect(&self, inline: bool) -> Result<Conn, ErrorKind> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // Small requests must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    match classify_io(&e) {
                        ErrorKind::Reset => ErrorKind::Reset,
                        _ => ErrorKind::Tls,
                    }
                })?;
                self.handshake(TokioIo::new(stream), inline).await
            }
            None => self.handshake(TokioIo::new(tcp), inline).await,
        }
    }

    async fn handshake<T>(&self, io: TokioIo<T>, inline: bool) -> Result<Conn, ErrorKind>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if self.http2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| classify(&e))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::handshake(io).await.map_err(|e| classify(&e))?;
            let driver = async move {
                let _ = conn.await;
            };
            if inline {
                Ok(Conn::H1Inline(send, Some(Box::pin(driver))))
            } else {
                tokio::spawn(driver);
                Ok(Conn::H1(send))
            }
        }
    }
}
