//! Closed loop on one generator thread: its connections, each sending the next request on the last response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use crate::client::ErrorKind;
use crate::error::Result;
use crate::lane::{Lane, LaneOut, spawn_ticker};
use crate::plan::Stop;
use crate::schedule::after;

/// `connections` workers on this lane, each with its own connection, back to
/// back until `stop`. `issued` counts requests across all lanes (`--requests`).
pub async fn run_lane(
    lane: Arc<Lane>,
    connections: usize,
    stop: Stop,
    issued: Arc<AtomicU64>,
) -> Result<LaneOut> {
    let ticker = spawn_ticker(lane.clone(), |_| {});
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        workers.spawn(worker(lane.clone(), stop, issued.clone()));
    }
    while workers.join_next().await.is_some() {}
    ticker.abort();
    Ok(LaneOut {
        peak_connections: connections,
        ..LaneOut::default()
    })
}

async fn worker(lane: Arc<Lane>, stop: Stop, issued: Arc<AtomicU64>) {
    let shared = lane.shared.clone();
    let mut channel = Channel::new(&shared, None);
    let mut begin = Instant::now();
    let end = match stop {
        Stop::Duration(d) => after(shared.measure_start, d),
        Stop::Requests(_) => shared.measure_start,
    };
    loop {
        if shared.cancelled() {
            break;
        }
        if begin >= shared.measure_start {
            let more = match stop {
                Stop::Duration(_) => begin < end,
                Stop::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
            };
            if !more {
                break;
            }
        }
        let res = channel.exchange(&shared, begin).await;
        // The next request starts at the completion time: reuse it rather
        // than read the clock again.
        begin = lane.record(begin, None, res, channel.body());
        if res == Err(ErrorKind::Connect) {
            // Refused connects fail in microseconds; don't spin a core on them.
            tokio::time::sleep(Duration::from_millis(1)).await;
            begin = Instant::now();
        }
    }
}
