//! The kube target: the same suite, chaos and load against a real cluster. What exists so far
//! is the part that decides whether a run may touch a cluster at all (`context`); deploying,
//! calls through port-forwards and faults are not built yet (README, "Kubernetes").

pub mod context;

pub use context::{ClusterChoice, KubeFlags, choose};
