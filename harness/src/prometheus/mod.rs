//! Prometheus for the mesh's telemetry: the pinned binary (installed into the cache), the
//! scrape config with its Istio compatibility layer, the process beside the embedded mesh, and
//! the API the observability steps query.

pub mod api;
pub mod config;
pub mod install;
pub mod server;

pub use api::PrometheusApi;
pub use server::Prometheus;
