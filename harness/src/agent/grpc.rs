//! gRPC on an agent port: the standard health check answers SERVING (so a grpc port's stand-in
//! passes the probes a real server would), every other method UNIMPLEMENTED, with the status in
//! HTTP/2 trailers as gRPC requires.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;

pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A body of fixed frames (data, then trailers).
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

pub(crate) fn answer(path: &str) -> super::Response {
    let mut frames = VecDeque::new();
    let status = if path == HEALTH_CHECK {
        // A length-prefixed HealthCheckResponse { status: SERVING (1) }: field 1, varint 1.
        frames.push_back(Frame::data(Bytes::from_static(&[
            0, 0, 0, 0, 2, 0x08, 0x01,
        ])));
        "0"
    } else {
        "12"
    };
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", status.parse().expect("a valid header value"));
    frames.push_back(Frame::trailers(trailers));
    hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(http_body_util::BodyExt::boxed(Frames(frames)))
        .expect("static response parts are valid")
}
