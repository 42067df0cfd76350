//! Distributed tracing over Zipkin's v2 API: the collector the embedded mesh runs for its
//! proxies' spans, and the client the tracing steps read a trace with (any Zipkin-compatible
//! server, so a cluster's own collector too).

pub mod api;
pub mod collector;

pub use api::{Span, ZipkinApi};
pub use collector::Collector;

/// Zipkin's port (the provider's `port` in the mesh config; the embedded collector's too).
pub const ZIPKIN_PORT: u16 = 9411;
