//! Step definitions, one module per promise, all speaking the mesh's language and all going
//! through the `Target` seam only.

mod canary;
mod circuit_breaker;
pub(crate) mod common;
mod egress;
mod fault_injection;
mod jwt;
mod latency;
mod mtls;
mod observability;
mod outlier;
mod rate_limit;
mod resilience;
mod routes;

pub use fault_injection::FaultSample;
