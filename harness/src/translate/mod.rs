//! Istio resources -> the Envoy config Istio itself would generate, for each proxy of the mesh.
//!
//! One module per resource kind; `proxy` assembles a sidecar's or the ingress gateway's
//! listeners and clusters from them, and `bootstrap` points Envoy at them (filesystem xDS).

pub mod authorization_policy;
pub mod authz_conditions;
pub mod bootstrap;
pub mod destination_rule;
pub mod duration;
pub mod envoy_filter;
pub mod gateway;
pub mod peer_authentication;
pub mod proxy;
pub mod request_authentication;
pub mod route_actions;
pub mod sidecar_scope;
pub mod tcp;
pub mod telemetry;
pub mod virtual_service;

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::model::Pod;

/// A proxy's identity on disk: the mesh root, its leaf chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn tls_certificate(&self) -> Value {
        json!({"certificate_chain": {"filename": self.chain}, "private_key": {"filename": self.key}})
    }
}

/// The address each pod's inbound listeners bind (at its ports): its endpoint in every
/// outbound cluster.
pub type Endpoints<'a> = dyn Fn(&Pod) -> IpAddr + 'a;

/// The dynamic part of one proxy's config: what goes into its LDS and CDS files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvoyConfig {
    pub listeners: Vec<Value>,
    pub clusters: Vec<Value>,
}

impl EnvoyConfig {
    /// The LDS file: a DiscoveryResponse of Listener resources.
    pub fn lds(&self, version: u64) -> Value {
        discovery_response(
            version,
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            &self.listeners,
        )
    }

    /// The CDS file: a DiscoveryResponse of Cluster resources.
    pub fn cds(&self, version: u64) -> Value {
        discovery_response(
            version,
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            &self.clusters,
        )
    }
}

fn discovery_response(version: u64, type_url: &str, resources: &[Value]) -> Value {
    let resources: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["@type"] = json!(type_url);
            r
        })
        .collect();
    json!({"version_info": version.to_string(), "resources": resources})
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::Manifests;
    use crate::model::MeshModel;
    use std::path::Path;

    pub fn pyairtable_model() -> MeshModel {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/pyairtable");
        MeshModel::build(Manifests::load_dir(&dir).unwrap()).unwrap()
    }

    /// A one-service mesh (svc in namespace ns) plus `extra` resources.
    pub fn model_of(extra: &str) -> MeshModel {
        let base = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: ns}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: svc, namespace: ns}\nspec:\n  selector: {matchLabels: {app: svc}}\n  template:\n    metadata: {labels: {app: svc}}\n    spec:\n      serviceAccountName: sa\n      containers: [{name: c}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: ns}\nspec:\n  selector: {app: svc}\n  ports: [{port: 8080}]\n---\n";
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), &format!("{base}{extra}"))
            .unwrap();
        MeshModel::build(m).unwrap()
    }

    /// Every service in view: a proxy no Sidecar governs.
    pub fn all() -> crate::translate::sidecar_scope::SidecarScope {
        crate::translate::sidecar_scope::SidecarScope::everything(Default::default())
    }

    /// The outbound virtual hosts of a sidecar no Sidecar narrows.
    pub fn all_virtual_hosts(model: &MeshModel) -> Vec<serde_json::Value> {
        crate::translate::virtual_service::mesh_virtual_hosts(model, &all(), &|_| {
            IpAddr::from([127, 0, 0, 1])
        })
        .unwrap()
    }

    pub fn certs() -> CertFiles {
        CertFiles {
            ca: "/run/ca.pem".into(),
            chain: "/run/cert.pem".into(),
            key: "/run/key.pem".into(),
        }
    }
}
