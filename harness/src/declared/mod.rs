//! What the mesh's manifests declare, read the way Istio reads them: the values steps check
//! behaviour against (a connection pool's size, a route's timeout and retries, a tier's bucket),
//! each with the file and line it came from, so evidence can name it.
//!
//! Defaults are Istio's and Envoy's where a field is unset, so "declared" means "what the
//! mesh will do if it does what its config says".

pub mod authorization;
pub mod rate_limit;
pub mod routes;
pub mod traffic;

use std::time::Duration;

use crate::manifest::{Manifests, Origin};
use crate::model::MeshModel;

pub use routes::{DeclaredRoute, RetryPolicy, RouteRequest};
pub use traffic::{Outlier, Pool};

/// A declared value and where it was declared ("traffic.yaml:62", or Istio's default).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared<T> {
    pub value: T,
    pub at: String,
}

impl<T> Declared<T> {
    pub fn new(value: T, origin: Option<&Origin>) -> Declared<T> {
        Declared {
            value,
            at: where_(origin),
        }
    }
}

/// "traffic.yaml:62" for an origin, "Istio's default" without one.
pub fn where_(origin: Option<&Origin>) -> String {
    match origin {
        Some(o) => format!(
            "{}:{}",
            o.file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| o.file.display().to_string()),
            o.line
        ),
        None => "Istio's default".into(),
    }
}

/// The model of the manifests a target was deployed from.
pub fn model(manifests: Manifests) -> MeshModel {
    // The target started from these manifests, so they built a model once already.
    MeshModel::build(manifests).unwrap_or_else(|e| {
        crate::unchecked!("the target's manifests no longer build a mesh model: {e}")
    })
}

/// "30s", "1.5s", "500ms" for evidence.
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}
