//! Annotations and labels that change what Istio does: each is honoured or refused with
//! file:line, never ignored (a suite could otherwise pass on the embedded mesh for a policy the
//! cluster does not enforce, or fail for one it does not have).

use super::Manifests;
use crate::error::InputError;

/// What is refused, and why: (key or key prefix, where, what Istio does with it).
pub const REFUSED: &[(&str, &str, &str)] = &[
    (
        "sidecar.istio.io/inject",
        "pod template annotation or label, \"false\"",
        "the pods run without a sidecar; the embedded mesh gives every pod one",
    ),
    (
        "istio-injection",
        "Namespace label, \"disabled\"",
        "the namespace's pods run without a sidecar",
    ),
    (
        "traffic.sidecar.istio.io/",
        "pod template annotation",
        "ports or ranges excluded from (or included in) the sidecar's capture",
    ),
    (
        "proxy.istio.io/config",
        "pod template annotation",
        "per-pod proxy settings",
    ),
    (
        "networking.istio.io/exportTo",
        "Service annotation",
        "the Service is visible only to some namespaces",
    ),
];

/// Honoured: `istio.io/dry-run` on an AuthorizationPolicy (shadow rules, never enforced).
pub fn check(m: &Manifests) -> Result<(), InputError> {
    let refuse = |origin: &super::Origin, field: String, key: &str| {
        let (_, _, why) = REFUSED
            .iter()
            .find(|(k, _, _)| key.starts_with(k))
            .expect("a refused key");
        Err(origin.error(
            &field,
            format!("`{key}` changes what Istio does ({why}); meshtest does not translate it, so it is refused rather than ignored"),
        ))
    };
    for d in &m.deployments {
        let meta = &d.spec.template.metadata;
        for (key, value) in &meta.annotations {
            let field = format!("spec.template.metadata.annotations.{key}");
            if (key == "sidecar.istio.io/inject" && value == "false")
                || key.starts_with("traffic.sidecar.istio.io/")
                || key == "proxy.istio.io/config"
            {
                return refuse(&d.origin, field, key);
            }
        }
        if meta
            .labels
            .get("sidecar.istio.io/inject")
            .map(String::as_str)
            == Some("false")
        {
            let field = "spec.template.metadata.labels.sidecar.istio.io/inject".to_string();
            return refuse(&d.origin, field, "sidecar.istio.io/inject");
        }
    }
    for ns in &m.namespaces {
        if ns
            .metadata
            .labels
            .get("istio-injection")
            .map(String::as_str)
            == Some("disabled")
            && m.deployments.iter().any(|d| d.namespace() == ns.name())
        {
            let field = "metadata.labels.istio-injection".to_string();
            return refuse(&ns.origin, field, "istio-injection");
        }
    }
    for s in &m.services {
        if s.metadata
            .annotations
            .contains_key("networking.istio.io/exportTo")
        {
            let field = "metadata.annotations.networking.istio.io/exportTo".to_string();
            return refuse(&s.origin, field, "networking.istio.io/exportTo");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_text(Path::new("a.yaml"), yaml).unwrap();
        m
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: legacy}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata:\n      labels: {app: d}\n      annotations: {ANNOTATION}\n    spec: {containers: [{name: c}]}\n";

    #[test]
    fn annotations_that_change_istio_are_refused_at_their_line() {
        for (annotation, key) in [
            (
                "{sidecar.istio.io/inject: \"false\"}",
                "sidecar.istio.io/inject",
            ),
            (
                "{traffic.sidecar.istio.io/excludeInboundPorts: \"9090\"}",
                "traffic.sidecar.istio.io/excludeInboundPorts",
            ),
        ] {
            let m = load(&DEPLOYMENT.replace("{ANNOTATION}", annotation));
            let err = check(&m).unwrap_err();
            assert_eq!(err.line, Some(1), "{err}");
            assert!(err.field.as_deref().unwrap().ends_with(key), "{err}");
        }
        let fine = load(&DEPLOYMENT.replace(
            "{ANNOTATION}",
            "{sidecar.istio.io/inject: \"true\", prometheus.io/scrape: \"true\"}",
        ));
        assert!(check(&fine).is_ok());
        let off = load(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: legacy, labels: {{istio-injection: disabled}}}}\n---\n{}",
            DEPLOYMENT.replace("{ANNOTATION}", "{}")
        ));
        assert!(
            check(&off)
                .unwrap_err()
                .message
                .contains("without a sidecar")
        );
    }
}
