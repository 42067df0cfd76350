//! Minimal HTTP/1.1 responder for the generator-bound benchmark: answers every GET with 200 "ok".
//!
//! `responder BASE_PORT COUNT ADMIN_PORT` listens on 127.0.0.1:BASE_PORT..BASE_PORT+COUNT
//! (one port per load generator) and serves per-port counters on ADMIN_PORT in
//! Envoy's `/stats` text format (`http.genI.downstream_rq_total: N`, `..._rq_2xx`,
//! `..._cx_active`), so bench/alternate.py reads it as it reads Envoy.
//!
//! Why it exists: against Envoy on one core every generator is held to Envoy's
//! pace, so closed-loop throughput cannot tell generators apart. This target
//! costs a fraction of a generator's CPU per request, which makes the generator
//! the bottleneck. It understands only body-less requests (GET/HEAD), which is
//! all the bench sends; anything else closes the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    active: AtomicU64,
}

fn main() {
    let args: Result<Vec<u16>, _> = std::env::args().skip(1).map(|a| a.parse()).collect();
    let Ok([base, count, admin]) = args.as_deref() else {
        eprintln!("usage: responder BASE_PORT COUNT ADMIN_PORT (port numbers)");
        std::process::exit(2);
    };
    let (base, count, admin) = (*base, *count, *admin);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let counters: Arc<Vec<Counters>> =
            Arc::new((0..count).map(|_| Counters::default()).collect());
        for i in 0..count {
            let listener = TcpListener::bind(("127.0.0.1", base + i))
                .await
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{}: {e}", base + i));
            let counters = counters.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        let c = &counters[usize::from(i)];
                        c.active.fetch_add(1, Relaxed);
                        let _ = serve(stream, c).await;
                        c.active.fetch_sub(1, Relaxed);
                    });
                }
            });
        }
        let listener = TcpListener::bind(("127.0.0.1", admin))
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{admin}: {e}"));
        println!("ready");
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut text = String::new();
            for (i, c) in counters.iter().enumerate() {
                let n = c.requests.load(Relaxed);
                text += &format!(
                    "http.gen{i}.downstream_cx_active: {}\nhttp.gen{i}.downstream_rq_2xx: {n}\n\
                     http.gen{i}.downstream_rq_total: {n}\n",
                    c.active.load(Relaxed)
                );
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                text.len()
            );
            let _ = stream.write_all((head + &text).as_bytes()).await;
        }
    });
}

/// Reads requests (pipelined or not) and answers each; returns on close or error.
async fn serve(mut stream: TcpStream, c: &Counters) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(RESPONSE.len() * 8);
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut start = 0;
        while let Some(end) = find_head_end(&buf[start..have]) {
            out.extend_from_slice(RESPONSE);
            start += end;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            c.requests
                .fetch_add((out.len() / RESPONSE.len()) as u64, Relaxed);
            out.clear();
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            return Ok(()); // a 16 KiB head: not what the bench sends
        }
    }
}

/// Offset just past the first "\r\n\r\n".
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}
