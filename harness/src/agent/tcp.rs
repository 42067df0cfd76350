//! A TCP port of the agent: bytes are echoed back, except that a peer that opens with an HTTP
//! request is answered over HTTP (so the harness's HTTP calls and probes work through a
//! sidecar's tcp_proxy, and a refusal by network RBAC shows as a closed connection).

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use anyhow::Result;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinSet;

use super::{Handled, Listen};

const HTTP_OPENINGS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PRI * ",
];

/// A stream whose first bytes were already read.
struct Prefixed<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let rest = self.prefix.split_off(n);
            buf.put_slice(&self.prefix);
            self.prefix = rest;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn connection<S, F, Fut>(mut stream: S, handler: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let mut first = vec![0u8; 4096];
    let n = match stream.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    first.truncate(n);
    if HTTP_OPENINGS.iter().any(|o| first.starts_with(o)) {
        let io = Prefixed {
            prefix: first,
            inner: stream,
        };
        return super::serve_http(io, handler).await;
    }
    // Echo, bounded by the peer: it ends when the peer closes.
    if stream.write_all(&first).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub(crate) async fn serve<F, Fut>(
    tasks: &mut JoinSet<()>,
    listen: &Listen,
    handler: F,
) -> Result<()>
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let on_conn: super::OnConn =
        Arc::new(move |io: super::Conn| Box::pin(connection(io, handler.clone())));
    super::accept(tasks, listen, on_conn).await
}
