//! One connection's worth of requests: the hand-rolled HTTP/1.1 worker, or hyper for TLS and HTTP/2.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::client::{Conn, ErrorKind};
use crate::http1;
use crate::lane::Shared;

/// A connection slot's client. Both variants reconnect on their own: a slot
/// whose connection failed opens a fresh one for its next request.
pub enum Channel {
    /// Plain-text HTTP/1.1 (`http://` without `--http2`): [`http1::Worker`].
    Fast(http1::Worker),
    /// hyper: HTTP/1.1 over TLS, or HTTP/2 (one multiplexed connection per
    /// generator thread, shared through `h2`).
    Hyper {
        conn: Option<Conn>,
        h2: Option<Arc<H2Conn>>,
        body: Bytes,
    },
}

impl Channel {
    /// The client the run's plan calls for; `h2` is the thread's shared HTTP/2
    /// connection when the plan uses HTTP/2.
    pub fn new(shared: &Shared, h2: Option<Arc<H2Conn>>) -> Channel {
        match shared.fast {
            Some(_) => Channel::Fast(http1::Worker::default()),
            None => Channel::Hyper {
                conn: None,
                h2,
                body: Bytes::new(),
            },
        }
    }

    /// One request and its response; `begin` starts the `--timeout`.
    pub async fn exchange(&mut self, shared: &Shared, begin: Instant) -> Result<u16, ErrorKind> {
        match (self, &shared.fast) {
            (Channel::Fast(w), Some(target)) => w.exchange(target, begin).await,
            (Channel::Hyper { conn, h2, body }, _) => {
                if let Some(h2) = h2
                    && conn.as_ref().is_none_or(|c| c.is_closed())
                {
                    *conn = Some(h2.handle(shared).await?);
                }
                let res = hyper_exchange(shared, conn, h2.is_none()).await;
                match res {
                    Ok((status, b)) => {
                        *body = b;
                        Ok(status)
                    }
                    Err(kind) => {
                        *body = Bytes::new();
                        Err(kind)
                    }
                }
            }
            (Channel::Fast(_), None) => Err(ErrorKind::Other),
        }
    }

    /// Body of the last response (the fast path keeps only JSON bodies).
    pub fn body(&self) -> &[u8] {
        match self {
            Channel::Fast(w) => w.body(),
            Channel::Hyper { body, .. } => body,
        }
    }
}

/// One request on `conn` through hyper, (re)connecting first when needed; a
/// failed connection is dropped so the next request opens a fresh one.
/// `inline` polls an HTTP/1.1 connection's driver in the caller's task (the
/// slot owns the connection, so no extra task and wake-up per request).
pub async fn hyper_exchange(
    shared: &Shared,
    conn: &mut Option<Conn>,
    inline: bool,
) -> Result<(u16, Bytes), ErrorKind> {
    let connector = &shared.connector;
    let attempt = async {
        // A reused connection the server has closed is replaced without
        // counting an error: no request was sent on it. A fresh one that is
        // not ready is a real failure.
        let mut reused = conn.as_ref().is_some_and(|c| !c.is_closed());
        loop {
            if !reused {
                // Boxed: the TLS connect future is large, and inlining it
                // would make every request's future (moved per request) as big.
                *conn = Some(Box::pin(connector.connect(inline)).await?);
            }
            let Some(c) = conn.as_mut() else {
                return Err(ErrorKind::Other);
            };
            if c.ready().await {
                return c.send(connector.request()).await;
            }
            if !reused {
                return Err(ErrorKind::Reset);
            }
            reused = false;
        }
    };
    let res = tokio::time::timeout(shared.timeout, attempt)
        .await
        .unwrap_or(Err(ErrorKind::Timeout));
    if res.is_err() {
        *conn = None;
    }
    res
}

/// A generator thread's HTTP/2 connection, shared by its slots (requests
/// multiplex over it); reopened by the first slot that finds it closed.
#[derive(Default)]
pub struct H2Conn {
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl H2Conn {
    /// A handle on the open connection, connecting first when there is none.
    async fn handle(&self, shared: &Shared) -> Result<Conn, ErrorKind> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed())
            && let Some(h) = c.share()
        {
            return Ok(h);
        }
        *slot = None;
        let c = tokio::time::timeout(shared.timeout, Box::pin(shared.connector.connect(false)))
            .await
            .unwrap_or(Err(ErrorKind::Timeout))?;
        let h = c.share().ok_or(ErrorKind::Other)?;
        *slot = Some(c);
        Ok(h)
    }
}
