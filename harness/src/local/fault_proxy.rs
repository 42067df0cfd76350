//! A user-space TCP fault proxy (as Toxiproxy does it: this kernel has no netem): spliced
//! between two pods by rewriting the callers' endpoints, it passes bytes on with latency, a
//! bandwidth limit or a slow close, resets or swallows connections, and goes back to passing
//! bytes through untouched once its lease ends, whoever was supposed to revert it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::target::injection::NetworkFault;

/// Longest a swallowed connection is held, so a partition never outlives its test by much.
const BLACKHOLE_LIMIT: Duration = Duration::from_secs(300);

/// A running fault proxy: one listener per port of the pod it stands in for.
pub struct FaultProxy {
    pub ip: IpAddr,
    /// Connections it has taken (how chaos sees that the fault reached traffic).
    pub connections: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl FaultProxy {
    /// Listens on `ip` at each `(port, upstream)` and applies `fault` until `expires`.
    pub async fn start(
        ip: IpAddr,
        upstreams: Vec<(u16, SocketAddr)>,
        fault: NetworkFault,
        expires: Instant,
    ) -> Result<FaultProxy> {
        let connections = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for (port, upstream) in upstreams {
            let listener = TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("fault proxy: binding {ip}:{port}"))?;
            let (fault, counter) = (fault.clone(), connections.clone());
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let fault = fault.clone();
                    conns.spawn(async move {
                        let _ = handle(client, upstream, fault, expires).await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            });
        }
        Ok(FaultProxy {
            ip,
            connections,
            _tasks: tasks,
        })
    }
}

async fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    fault: NetworkFault,
    expires: Instant,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let faulty = Instant::now() < expires;
    match (&fault, faulty) {
        (NetworkFault::Reset, true) => {
            // Linger 0: the close sends a RST instead of a FIN (and, being zero, never blocks,
            // which is what the deprecation warns about).
            #[allow(deprecated)]
            client.set_linger(Some(Duration::ZERO))?;
            drop(client);
            return Ok(());
        }
        (NetworkFault::Blackhole, true) => {
            let mut client = client;
            let until = expires.min(Instant::now() + BLACKHOLE_LIMIT);
            let mut sink = [0u8; 4096];
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, client.read(&mut sink)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let server = TcpStream::connect(upstream).await?;
    let _ = server.set_nodelay(true);
    let fault = if faulty { Some(fault) } else { None };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, fault.clone(), expires));
    let down = pump(sr, cw, fault, expires).await;
    let _ = up.await;
    down
}

/// Copies one direction, applying the fault to each chunk while the lease lasts.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    fault: Option<NetworkFault>,
    expires: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        let active = fault.as_ref().filter(|_| Instant::now() < expires);
        if n == 0 {
            if let Some(NetworkFault::SlowClose { ms }) = active {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
            }
            return to.shutdown().await;
        }
        match active {
            Some(NetworkFault::Latency { ms, jitter_ms }) => {
                tokio::time::sleep(Duration::from_millis(jittered(*ms, *jitter_ms))).await;
            }
            Some(NetworkFault::Bandwidth { bytes_per_second }) => {
                let secs = n as f64 / (*bytes_per_second).max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs.min(60.0))).await;
            }
            _ => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// `ms` ± up to `jitter` ms, from the clock's low bits (no RNG needed for noise).
fn jittered(ms: u64, jitter: u64) -> u64 {
    if jitter == 0 {
        return ms;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let offset = nanos % (2 * jitter + 1);
    (ms + offset).saturating_sub(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxy(fault: NetworkFault, lease: Duration) -> (FaultProxy, SocketAddr) {
        let upstream = echo_server().await;
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let p = FaultProxy::start(ip, vec![(port, upstream)], fault, Instant::now() + lease)
            .await
            .unwrap();
        (p, SocketAddr::new(ip, port))
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Duration> {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn latency_applies_while_the_lease_lasts_then_passes_through() {
        let (p, addr) = proxy(
            NetworkFault::Latency {
                ms: 150,
                jitter_ms: 0,
            },
            Duration::from_millis(600),
        )
        .await;
        assert!(round_trip(addr).await.unwrap() >= Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(round_trip(addr).await.unwrap() < Duration::from_millis(100));
        assert_eq!(p.connections.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn reset_and_blackhole() {
        let (_p, addr) = proxy(NetworkFault::Reset, Duration::from_secs(5)).await;
        assert!(round_trip(addr).await.is_err());
        let (_p, addr) = proxy(NetworkFault::Blackhole, Duration::from_millis(300)).await;
        let started = Instant::now();
        assert!(
            round_trip(addr).await.is_err(),
            "a partition answers nothing"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
}
