//! The kube target: the same suite, chaos and load against a real cluster. What exists so far:
//! which cluster a run may touch (`context`), what it applies there (`objects`), and the
//! cluster operations (`cluster`: apply, readiness, delete, clean). Calls through
//! port-forwards, Envoy stats through exec, and faults are not built yet (README, "Kubernetes").

pub mod cluster;
pub mod context;
pub mod objects;

pub use context::{ClusterChoice, KubeFlags, choose};
