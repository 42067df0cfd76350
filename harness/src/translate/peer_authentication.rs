//! PeerAuthentication -> the inbound listener's filter chains (which transports a sidecar accepts).

use crate::error::InputError;
use crate::manifest::Manifests;
use crate::manifest::istio::{MtlsMode, PeerAuthenticationSpec, PeerMtls};
use crate::model::{ROOT_NAMESPACE, Workload};

/// The mTLS mode in force for a workload's `port`, composed as istiod does: mesh-wide (root
/// namespace, no selector), then namespace-wide, then the first workload-selecting policy in the
/// workload's namespace, each level overriding the one before unless UNSET; the workload-level
/// policy's `portLevelMtls` for the port overrides that (UNSET there inherits). Istio's default
/// with no policy is PERMISSIVE.
pub fn effective_mode(manifests: &Manifests, workload: &Workload, port: u16) -> MtlsMode {
    type Pa = crate::manifest::Resource<PeerAuthenticationSpec>;
    let mode_of = |m: Option<&PeerMtls>| m.and_then(|m| m.mode).filter(|m| *m != MtlsMode::Unset);
    let mesh_wide = manifests
        .peer_authentications
        .iter()
        .find(|p| p.namespace() == ROOT_NAMESPACE && p.spec.selector.is_none());
    let namespace_wide = manifests
        .peer_authentications
        .iter()
        .find(|p| p.namespace() == workload.namespace && p.spec.selector.is_none());
    let selecting: Option<&Pa> = manifests.peer_authentications.iter().find(|p| {
        p.namespace() == workload.namespace
            && p.namespace() != ROOT_NAMESPACE
            && p.spec
                .selector
                .as_ref()
                .is_some_and(|s| workload.selected_by(p.namespace(), Some(&s.match_labels)))
    });
    let mut mode = MtlsMode::Permissive;
    for policy in [mesh_wide, namespace_wide, selecting].into_iter().flatten() {
        if let Some(m) = mode_of(policy.spec.mtls.as_ref()) {
            mode = m;
        }
    }
    if let Some(m) = selecting
        .and_then(|p| p.spec.port_level_mtls.get(&u32::from(port)))
        .and_then(|m| mode_of(Some(m)))
    {
        mode = m;
    }
    mode
}

/// Istio's validation: `portLevelMtls` needs a workload selector.
pub fn validate(manifests: &Manifests) -> Result<(), InputError> {
    for p in &manifests.peer_authentications {
        if p.spec.selector.is_none() && !p.spec.port_level_mtls.is_empty() {
            return Err(p.origin.error(
                "spec.portLevelMtls",
                "mesh- and namespace-wide PeerAuthentications cannot have port level mTLS (Istio requires a selector)",
            ));
        }
        if let Some(port) = p
            .spec
            .port_level_mtls
            .keys()
            .find(|k| **k == 0 || **k > 65535)
        {
            return Err(p.origin.error(
                "spec.portLevelMtls",
                format!("port {port} is outside 1-65535"),
            ));
        }
    }
    Ok(())
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
            effective_mode(&m, &workload("auth-service"), 8080),
            MtlsMode::Strict
        );
        assert_eq!(
            effective_mode(&m, &workload("legacy"), 8080),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn default_is_permissive() {
        assert_eq!(
            effective_mode(&Manifests::default(), &workload("x"), 8080),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn port_level_mtls_overrides_one_port_and_unset_inherits() {
        let m = manifests(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: pyairtable}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: w, namespace: pyairtable}\nspec:\n  selector: {matchLabels: {app: auth}}\n  portLevelMtls:\n    8081: {mode: PERMISSIVE}\n    8082: {mode: UNSET}\n    8083: {mode: DISABLE}\n",
        );
        let w = workload("auth");
        assert_eq!(effective_mode(&m, &w, 8080), MtlsMode::Strict);
        assert_eq!(effective_mode(&m, &w, 8081), MtlsMode::Permissive);
        assert_eq!(effective_mode(&m, &w, 8082), MtlsMode::Strict);
        assert_eq!(effective_mode(&m, &w, 8083), MtlsMode::Disable);
        assert_eq!(
            effective_mode(&m, &workload("other"), 8081),
            MtlsMode::Strict
        );
        validate(&m).unwrap();
    }

    #[test]
    fn port_level_mtls_without_a_selector_is_refused() {
        let m = manifests(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: pyairtable}\nspec:\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8081: {mode: PERMISSIVE}\n",
        );
        assert_eq!(
            validate(&m).unwrap_err().field.as_deref(),
            Some("spec.portLevelMtls")
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
