//! Hand-rolled HTTP/1.1 client over plain TCP, both loops (pre-serialised request, httparse).
//!
//! One [`Worker`] per connection, driven by one task: write the request bytes,
//! read into a reusable buffer, parse the head with `httparse`, skip or keep the
//! body (Content-Length, chunked, or until close). No allocation, task spawn or
//! timer registration per request in the common case; the per-request timeout
//! is a single per-connection [`Sleep`] that is only reset when it fires.

use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::client::{ErrorKind, classify_io};
use crate::plan::{ClientChoice, LoadPlan};

/// Initial read buffer per connection.
const BUF_SIZE: usize = 16 * 1024;
/// A response head may grow the buffer up to this; larger heads are errors.
const MAX_HEAD: usize = 1 << 20;
const MAX_HEADERS: usize = 64;
/// JSON bodies up to this size are kept for version extraction; longer bodies
/// are still read completely but yield no version.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// The prepared request and where it goes.
#[derive(Debug)]
pub struct Target {
    host: String,
    port: u16,
    request: Box<[u8]>,
    /// HEAD: responses carry no body whatever their headers say.
    head: bool,
    timeout: Duration,
}

/// Whether the plan can use the hand-rolled client: http://, no --http2.
pub fn eligible(plan: &LoadPlan) -> bool {
    !plan.http2 && !plan.target.https && plan.tls.is_none()
}

impl Target {
    /// The fast-path target when the plan is eligible and did not ask for hyper.
    pub fn for_plan(plan: &LoadPlan) -> Option<Target> {
        if plan.client == ClientChoice::Hyper || !eligible(plan) {
            return None;
        }
        Some(Target {
            host: plan.target.host.clone(),
            port: plan.target.port,
            request: serialize(plan).into_boxed_slice(),
            head: plan.method == Method::HEAD,
            timeout: plan.timeout,
        })
    }
}

/// Request line, Host (unless given), user headers, Content-Length when there
/// is a body (or the method usually has one), then the body: built once.
fn serialize(plan: &LoadPlan) -> Vec<u8> {
    let pq = plan
        .target
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = Vec::with_capacity(256 + plan.body.len());
    out.extend_from_slice(plan.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let h = &plan.headers;
    if !h.contains_key(http::header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(plan.target.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in h {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let wants_length =
        !plan.body.is_empty() || [Method::POST, Method::PUT, Method::PATCH].contains(&plan.method);
    if wants_length
        && !h.contains_key(http::header::CONTENT_LENGTH)
        && !h.contains_key(http::header::TRANSFER_ENCODING)
    {
        out.extend_from_slice(format!("content-length: {}\r\n", plan.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&plan.body);
    out
}

/// Why a round trip failed.
enum Fail {
    /// A reused connection died before any byte of the response: the server
    /// closed it while idle. Reconnect and send again; not an error.
    Retry,
    Kind(ErrorKind),
}

/// How the response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One connection's state and buffers, reused for every request.
pub struct Worker {
    stream: Option<TcpStream>,
    /// The connection has carried a complete response.
    reused: bool,
    buf: Vec<u8>,
    /// Unconsumed input is `buf[start..end]`.
    start: usize,
    end: usize,
    /// The kept (JSON) body of the last response, for version extraction.
    body: Vec<u8>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            stream: None,
            reused: false,
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
            body: Vec::new(),
            timer: None,
        }
    }
}

impl Worker {
    /// Body of the last response when it looked like JSON (else empty).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// One request, (re)connecting when needed, bounded by the plan's timeout
    /// counted from `begin`. A failed connection is dropped.
    pub async fn exchange(&mut self, t: &Target, begin: Instant) -> Result<u16, ErrorKind> {
        let deadline = begin + t.timeout;
        self.body.clear();
        let (mut timer, mut armed) = match self.timer.take() {
            Some(t) => (t, true),
            None => (Box::pin(tokio::time::sleep_until(deadline.into())), false),
        };
        let res = {
            let mut fut = pin!(self.attempt(t));
            poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                // The timer holds an earlier request's deadline until it fires;
                // deadlines only grow, so it never fires late for this one.
                // Once polled it holds this task's waker (a worker stays in one
                // task), so later polls only check whether it has fired.
                loop {
                    if armed && !timer.is_elapsed() {
                        return Poll::Pending;
                    }
                    if armed && Instant::now() >= deadline {
                        return Poll::Ready(Err(ErrorKind::Timeout));
                    }
                    if armed {
                        timer.as_mut().reset(deadline.into());
                    }
                    armed = true;
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            })
            .await
        };
        self.timer = Some(timer);
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    async fn attempt(&mut self, t: &Target) -> Result<u16, ErrorKind> {
        loop {
            if self.stream.is_none() {
                let s = TcpStream::connect((t.host.as_str(), t.port))
                    .await
                    .map_err(|_| ErrorKind::Connect)?;
                // Small requests must not wait for Nagle.
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
                self.reused = false;
                self.start = 0;
                self.end = 0;
            }
            match self.round_trip(t).await {
                Ok(status) => return Ok(status),
                Err(Fail::Kind(k)) => return Err(k),
                Err(Fail::Retry) => self.stream = None,
            }
        }
    }

    async fn round_trip(&mut self, t: &Target) -> Result<u16, Fail> {
        let Worker {
            stream: slot,
            reused: reused_flag,
            buf,
            start,
            end,
            body,
            ..
        } = self;
        let Some(stream) = slot.as_mut() else {
            return Err(Fail::Kind(ErrorKind::Other));
        };
        let reused = *reused_flag;
        // Only a reused connection that failed before any response byte is retried.
        let lost = |k: ErrorKind, got_any: bool| {
            if reused && !got_any {
                Fail::Retry
            } else {
                Fail::Kind(k)
            }
        };
        if let Err(e) = stream.write_all(&t.request).await {
            return Err(lost(classify_io(&e), false));
        }

        // Head (1xx interim responses are skipped).
        let (status, framing, close) = loop {
            if *end > *start {
                // Uninitialised: no per-request memset of the header array.
                let mut headers =
                    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut []);
                let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut resp,
                    &buf[*start..*end],
                    &mut headers,
                );
                match parsed {
                    Ok(httparse::Status::Complete(n)) => {
                        let code = resp.code.unwrap_or(0);
                        let (framing, close) = inspect(&resp, t.head);
                        *start += n;
                        if (100..200).contains(&code) && code != 101 {
                            continue;
                        }
                        break (code, framing?, close);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Fail::Kind(ErrorKind::Other)),
                }
            }
            if *end == buf.len() {
                if *start > 0 {
                    buf.copy_within(*start..*end, 0);
                    *end -= *start;
                    *start = 0;
                } else if buf.len() < MAX_HEAD {
                    buf.resize(buf.len() * 2, 0);
                } else {
                    return Err(Fail::Kind(ErrorKind::Other));
                }
            }
            let got_any = *end > *start;
            match stream.read(&mut buf[*end..]).await {
                Ok(0) => return Err(lost(ErrorKind::Reset, got_any)),
                Ok(n) => *end += n,
                Err(e) => return Err(lost(classify_io(&e), got_any)),
            }
        };

        // Body.
        let mut keep = None;
        let mut close = close;
        match framing {
            Framing::Empty => {}
            Framing::Length(mut left) => loop {
                let n = ((*end - *start) as u64).min(left) as usize;
                take(&buf[*start..*start + n], body, &mut keep);
                *start += n;
                left -= n as u64;
                if left == 0 {
                    break;
                }
                (*start, *end) = (0, 0);
                *end = read_more(stream, buf).await?;
            },
            Framing::Chunked => {
                let mut chunks = Chunked::Size(0);
                loop {
                    let (used, done) = chunks.feed(&buf[*start..*end], body, &mut keep)?;
                    *start += used;
                    if done {
                        break;
                    }
                    (*start, *end) = (0, 0);
                    *end = read_more(stream, buf).await?;
                }
            }
            Framing::UntilClose => {
                close = true;
                loop {
                    take(&buf[*start..*end], body, &mut keep);
                    (*start, *end) = (0, 0);
                    match stream.read(buf).await {
                        Ok(0) => break,
                        Ok(n) => *end = n,
                        Err(e) => return Err(Fail::Kind(classify_io(&e))),
                    }
                }
            }
        }
        if keep != Some(true) {
            body.clear();
        }
        if *start == *end {
            (*start, *end) = (0, 0);
        }
        if close {
            *slot = None;
        } else {
            *reused_flag = true;
        }
        Ok(status)
    }
}

/// Reads at least one byte into an empty `buf`; end of stream mid-body is a reset.
async fn read_more(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, Fail> {
    match stream.read(buf).await {
        Ok(0) => Err(Fail::Kind(ErrorKind::Reset)),
        Ok(n) => Ok(n),
        Err(e) => Err(Fail::Kind(classify_io(&e))),
    }
}

/// Framing and whether the server will close the connection after this response.
fn inspect(resp: &httparse::Response<'_, '_>, head: bool) -> (Result<Framing, Fail>, bool) {
    let mut close = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    let mut bad = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // Length first: most headers are none of these three.
        if !matches!(name.len(), 10 | 14 | 17) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_u64(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = contains_ci(h.value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_ci(h.value, b"close") {
                close = true;
            } else if contains_ci(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let code = resp.code.unwrap_or(0);
    let framing = if head || code == 204 || code == 304 || (100..200).contains(&code) {
        Ok(Framing::Empty)
    } else if chunked {
        Ok(Framing::Chunked)
    } else if bad {
        Err(Fail::Kind(ErrorKind::Other))
    } else {
        Ok(length.map_or(Framing::UntilClose, Framing::Length))
    };
    (framing, close)
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?
    })
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Appends body bytes to `body` when the body looks like JSON (decided on its
/// first byte) and stays within [`MAX_KEPT_BODY`].
fn take(data: &[u8], body: &mut Vec<u8>, keep: &mut Option<bool>) {
    let Some(&first) = data.first() else {
        return;
    };
    let k = keep.get_or_insert(first == b'{' || first.is_ascii_whitespace());
    if *k {
        if body.len() + data.len() <= MAX_KEPT_BODY {
            body.extend_from_slice(data);
        } else {
            *k = false;
        }
    }
}

/// Chunked transfer-coding decoder state.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// Reading the hex size (value so far).
    Size(u64),
    /// Past the size: extension up to the end of the line.
    SizeExt(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    TrailerLine,
    EndLf,
}

impl Chunked {
    /// Consumes from `data`; returns (bytes used, message complete).
    fn feed(
        &mut self,
        data: &[u8],
        body: &mut Vec<u8>,
        keep: &mut Option<bool>,
    ) -> Result<(usize, bool), Fail> {
        let bad = || Fail::Kind(ErrorKind::Other);
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            *self = match *self {
                Chunked::Size(n) => match (b as char).to_digit(16) {
                    Some(d) => Chunked::Size(
                        n.checked_mul(16)
                            .and_then(|n| n.checked_add(u64::from(d)))
                            .ok_or_else(bad)?,
                    ),
                    None if b == b'\r' => Chunked::SizeLf(n),
                    None if b == b'\n' => end_of_size(n),
                    None if b == b';' || b == b' ' || b == b'\t' => Chunked::SizeExt(n),
                    None => return Err(bad()),
                },
                Chunked::SizeExt(n) => match b {
                    b'\r' => Chunked::SizeLf(n),
                    b'\n' => end_of_size(n),
                    _ => Chunked::SizeExt(n),
                },
                Chunked::SizeLf(n) if b == b'\n' => end_of_size(n),
                Chunked::Data(left) => {
                    let n = ((data.len() - i) as u64).min(left) as usize;
                    take(&data[i..i + n], body, keep);
                    i += n;
                    *self = if left == n as u64 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - n as u64)
                    };
                    continue;
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataCr | Chunked::DataLf if b == b'\n' => Chunked::Size(0),
                Chunked::Trailer => match b {
                    b'\r' => Chunked::EndLf,
                    b'\n' => return Ok((i + 1, true)),
                    _ => Chunked::TrailerLine,
                },
                Chunked::TrailerLine if b == b'\n' => Chunked::Trailer,
                Chunked::TrailerLine => Chunked::TrailerLine,
                Chunked::EndLf if b == b'\n' => return Ok((i + 1, true)),
                _ => return Err(bad()),
            };
            i += 1;
        }
        Ok((i, false))
    }
}

fn end_of_size(n: u64) -> Chunked {
    if n == 0 {
        Chunked::Trailer
    } else {
        Chunked::Data(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(parts: &[&[u8]]) -> Result<Vec<u8>, ()> {
        let mut st = Chunked::Size(0);
        let mut body = Vec::new();
        let mut keep = None;
        for p in parts {
            match st.feed(p, &mut body, &mut keep) {
                Ok((used, true)) => {
                    assert_eq!(used, p.len());
                    return Ok(body);
                }
                Ok((used, false)) => assert_eq!(used, p.len()),
                Err(_) => return Err(()),
            }
        }
        Err(())
    }

    #[test]
    fn chunked_across_splits() {
        let msg: &[u8] = b"4;ext=1\r\n{\"ve\r\nC\r\nrsion\":\"v9\"}\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..msg.len() {
            let body = dechunk(&[&msg[..cut], &msg[cut..]]).unwrap();
            assert_eq!(body, br#"{"version":"v9"}"#, "cut {cut}");
        }
        assert!(dechunk(&[b"zz\r\n"]).is_err());
        // Non-JSON bodies are decoded but not kept.
        let body = dechunk(&[b"2\r\nok\r\n0\r\n\r\n"]).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn numbers_and_tokens() {
        assert_eq!(parse_u64(b" 42 "), Some(42));
        assert_eq!(parse_u64(b"4x"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        assert!(contains_ci(b"gzip, Chunked", b"chunked"));
        assert!(!contains_ci(b"gzip", b"chunked"));
    }
}
