//! PeerAuthentication -> the inbound listener's filter chains (which transports a sidecar accepts).

use crate::manifest::Manifests;
use crate::manifest::istio::MtlsMode;
use crate::model::{ROOT_NAMESPACE, Workload};

/// The mTLS mode in force for a workload: a workload-selecting policy in its namespace wins over
/// the namespace-wide one, which wins over the mesh-wide one in the root namespace. Istio's
/// default with no policy is PERMISSIVE.
pub fn effective_mode(manifests: &Manifests, workload: &Workload) -> MtlsMode {
    let mode_of =
        |p: &crate::manifest::Resource<crate::manifest::istio::PeerAuthenticationSpec>| {
            p.spec
                .mtls
                .as_ref()
                .and_then(|m| m.mode)
                .filter(|m| *m != MtlsMode::Unset)
        };
    let selecting = manifests.peer_authentications.iter().filter(|p| {
        p.namespace() == workload.namespace
            && p.spec
                .selector
                .as_ref()
                .is_some_and(|s| workload.selected_by(p.namespace(), Some(&s.match_labels)))
    });
    let namespace_wide = manifests
        .peer_authentications
        .iter()
        .filter(|p| p.namespace() == workload.namespace && p.spec.selector.is_none());
    let mesh_wide = manifests
        .peer_authentications
        .iter()
        .filter(|p| p.namespace() == ROOT_NAMESPACE && p.spec.selector.is_none());
    selecting
        .filter_map(mode_of)
        .next()
        .or_else(|| namespace_wide.filter_map(mode_of).next())
        .or_else(|| mesh_wide.filter_map(mode_of).next())
        .unwrap_or(MtlsMode::Permissive)
}

/// ALPN values an Istio sidecar offers on mTLS connections; PERMISSIVE tells mesh mTLS from an
/// app's own TLS by them.
pub const ISTIO_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// Which chains the inbound listener carries for a mode.
pub struct Chains {
    pub mtls: bool,
    /// The mTLS chain also requires an Istio ALPN (only needed when a plaintext chain sits beside it).
    pub mtls_requires_istio_alpn: bool,
    pub plaintext: bool,
}

pub fn chains(mode: MtlsMode) -> Chains {
    match mode {
        MtlsMode::Strict => Chains {
            mtls: true,
            mtls_requires_istio_alpn: false,
            plaintext: false,
        },
        MtlsMode::Permissive | MtlsMode::Unset => Chains {
            mtls: true,
            mtls_requires_istio_alpn: true,
            plaintext: true,
        },
        MtlsMode::Disable => Chains {
            mtls: false,
            mtls_requires_istio_alpn: false,
            plaintext: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifests(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), yaml).unwrap();
        m
    }

    fn workload(app: &str) -> Workload {
        Workload {
            namespace: "pyairtable".into(),
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    #[test]
    fn namespace_strict_with_workload_override() {
        let m = manifests(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: pyairtable}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: w, namespace: pyairtable}\nspec: {selector: {matchLabels: {app: legacy}}, mtls: {mode: PERMISSIVE}}\n",
        );
        assert_eq!(
            effective_mode(&m, &workload("auth-service")),
            MtlsMode::Strict
        );
        assert_eq!(
            effective_mode(&m, &workload("legacy")),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn default_is_permissive() {
        assert_eq!(
            effective_mode(&Manifests::default(), &workload("x")),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn strict_has_no_plaintext_chain() {
        let c = chains(MtlsMode::Strict);
        assert!(c.mtls && !c.plaintext);
        let c = chains(MtlsMode::Permissive);
        assert!(c.mtls && c.plaintext && c.mtls_requires_istio_alpn);
    }
}
