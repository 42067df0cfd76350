//! The faults an agent applies to what it serves: what they do, who set them (a chaos run's id,
//! so a revert touches only its own), and when they expire by themselves (a lease kept by the
//! agent, so a fault ends even if whoever set it is gone).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A fault the agent applies to the requests it serves (not to control requests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer with this status instead of the echo.
    #[serde(default)]
    pub status: Option<u16>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Never answer (bounded: the connection is dropped after `HANG_LIMIT`).
    #[serde(default)]
    pub hang: bool,
    /// Close the connection without a response.
    #[serde(default)]
    pub close: bool,
    /// Hold every request until the fault is lifted, then answer it normally (bounded by
    /// `HANG_LIMIT`): a slow upstream whose end the caller decides.
    #[serde(default)]
    pub hold: bool,
    /// Send the answer's body in pieces spread over this long (headers come at once).
    #[serde(default)]
    pub slow_body_ms: Option<u64>,
    /// Apply it to this share of the requests only (1-100), spread evenly: exactly this many
    /// of any 100 consecutive requests (an error rate at a declared boundary).
    #[serde(default)]
    pub percent: Option<u8>,
    /// Who set the fault (a chaos run's id): a revert by owner clears only its own.
    #[serde(default)]
    pub owner: Option<String>,
    /// The fault ends by itself this long after it was set.
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// Longest a hang holds a request, so a forgotten fault cannot pin resources forever.
pub const HANG_LIMIT: Duration = Duration::from_secs(300);

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }

    pub fn delay_ms(ms: u64) -> Fault {
        Fault {
            delay_ms: Some(ms),
            ..Fault::default()
        }
    }

    pub fn hang() -> Fault {
        Fault {
            hang: true,
            ..Fault::default()
        }
    }

    pub fn close() -> Fault {
        Fault {
            close: true,
            ..Fault::default()
        }
    }

    pub fn hold() -> Fault {
        Fault {
            hold: true,
            ..Fault::default()
        }
    }

    pub fn slow_body(ms: u64) -> Fault {
        Fault {
            slow_body_ms: Some(ms),
            ..Fault::default()
        }
    }

    /// The same fault on `percent` of the requests.
    pub fn on_percent(mut self, percent: u8) -> Fault {
        self.percent = Some(percent);
        self
    }

    /// The same fault, owned by `owner` and ending by itself after `lease`.
    pub fn owned(mut self, owner: &str, lease: Duration) -> Fault {
        self.owner = Some(owner.to_string());
        self.lease_ms = Some(lease.as_millis() as u64);
        self
    }

    /// Does it change what the agent serves at all?
    pub fn is_active(&self) -> bool {
        self.status.is_some()
            || self.delay_ms.is_some()
            || self.hang
            || self.close
            || self.hold
            || self.slow_body_ms.is_some()
    }

    /// "status 503", "delay 2000 ms", ... for evidence and plans.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.status {
            parts.push(format!("status {s}"));
        }
        if let Some(ms) = self.delay_ms {
            parts.push(format!("delay {ms} ms"));
        }
        if self.hang {
            parts.push("hang".to_string());
        }
        if self.close {
            parts.push("close the connection".to_string());
        }
        if self.hold {
            parts.push("hold until released".to_string());
        }
        if let Some(ms) = self.slow_body_ms {
            parts.push(format!("body spread over {ms} ms"));
        }
        if let Some(p) = self.percent
            && !parts.is_empty()
        {
            parts.push(format!("on {p}% of requests"));
        }
        if parts.is_empty() {
            "no fault".into()
        } else {
            parts.join(", ")
        }
    }
}

/// GET /fault: the fault in force, how many requests it has changed, and its time left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStatus {
    pub fault: Fault,
    pub hits: u64,
    pub remaining_ms: Option<u64>,
}

/// The fault in force, since when, and how often it changed an answer.
#[derive(Debug)]
pub(crate) struct FaultState {
    fault: Fault,
    set_at: Instant,
    hits: u64,
    /// Requests seen since the fault was set (for `percent`).
    seen: u64,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            fault: Fault::default(),
            set_at: Instant::now(),
            hits: 0,
            seen: 0,
        }
    }
}

impl FaultState {
    pub fn set(&mut self, fault: Fault) {
        self.fault = fault;
        self.set_at = Instant::now();
        self.hits = 0;
        self.seen = 0;
    }

    /// The fault in force now (none once its lease ran out).
    pub fn current(&mut self) -> Fault {
        if let Some(ms) = self.fault.lease_ms
            && self.set_at.elapsed() >= Duration::from_millis(ms)
        {
            self.set(Fault::default());
        }
        self.fault.clone()
    }

    /// The fault for a request it will change (counted).
    pub fn hit(&mut self) -> Fault {
        let f = self.current();
        if let Some(p) = f.percent {
            let (n, p) = (self.seen, u64::from(p.min(100)));
            self.seen += 1;
            // Request n is hit when the running count of hits, n * p / 100, steps up.
            if (n + 1) * p / 100 == n * p / 100 {
                return Fault::default();
            }
        }
        if f.is_active() {
            self.hits += 1;
        }
        f
    }

    pub fn status(&mut self) -> FaultStatus {
        let fault = self.current();
        let remaining_ms = fault.lease_ms.map(|ms| {
            Duration::from_millis(ms)
                .saturating_sub(self.set_at.elapsed())
                .as_millis() as u64
        });
        FaultStatus {
            fault,
            hits: self.hits,
            remaining_ms,
        }
    }
}

/// A body sent in pieces over a span of time (the `slow_body_ms` fault).
pub(crate) struct SlowBody {
    chunks: VecDeque<Bytes>,
    every: Duration,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl SlowBody {
    pub fn new(body: Bytes, over: Duration) -> SlowBody {
        const PIECES: usize = 10;
        let size = body.len().div_ceil(PIECES).max(1);
        let chunks: VecDeque<Bytes> = (0..body.len())
            .step_by(size)
            .map(|i| body.slice(i..(i + size).min(body.len())))
            .collect();
        let every = over / chunks.len().max(1) as u32;
        SlowBody {
            chunks,
            every,
            next: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl hyper::body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        if self.next.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let every = self.every;
        let deadline = tokio::time::Instant::now() + every;
        self.next.as_mut().reset(deadline);
        let chunk = self.chunks.pop_front().expect("checked non-empty");
        Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_fault_ends_by_itself() {
        let mut s = FaultState::default();
        s.set(Fault::status(503).owned("run-1", Duration::from_millis(30)));
        assert_eq!(s.current().status, Some(503));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!s.current().is_active());
    }

    #[test]
    fn describes_itself() {
        assert_eq!(Fault::status(503).describe(), "status 503");
        assert_eq!(Fault::default().describe(), "no fault");
        assert!(!Fault::default().is_active());
    }

    #[test]
    fn a_percent_fault_hits_exactly_that_share_spread_evenly() {
        let mut s = FaultState::default();
        s.set(Fault::status(503).on_percent(10));
        let hits: Vec<bool> = (0..200).map(|_| s.hit().is_active()).collect();
        assert_eq!(hits.iter().filter(|h| **h).count(), 20);
        // Never two hits within 10 requests.
        for w in hits.windows(10) {
            assert!(w.iter().filter(|h| **h).count() <= 1);
        }
        assert_eq!(
            Fault::status(503).on_percent(10).describe(),
            "status 503, on 10% of requests"
        );
    }
}
