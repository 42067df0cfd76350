//! What a run applies to a cluster: the mesh's documents moved into the run's namespace and
//! labelled as the run's, so `meshtest kube clean` finds whatever a crashed run left.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::Origin;

/// The label every object of a run carries (and the namespace), with the run's id.
pub const RUN_LABEL: &str = "meshtest.io/run";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "meshtest";

/// Kinds that live outside namespaces: applied as they are, never rewritten.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "PriorityClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];

/// One run on a cluster: its id and the namespace it owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub namespace: String,
}

impl Run {
    /// `meshtest-<id>` unless the user named the namespace.
    pub fn new(id: &str, namespace: Option<&str>) -> Run {
        Run {
            id: id.to_string(),
            namespace: namespace.map_or_else(|| format!("meshtest-{id}"), str::to_string),
        }
    }

    /// The run's namespace: sidecars injected, and labelled as the run's.
    pub fn namespace_object(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": self.namespace,
                "labels": {
                    "istio-injection": "enabled",
                    MANAGED_BY: FIELD_MANAGER,
                    RUN_LABEL: self.id,
                },
            },
        })
    }

    /// The label selector of this run's objects.
    pub fn selector(&self) -> String {
        format!("{MANAGED_BY}={FIELD_MANAGER},{RUN_LABEL}={}", self.id)
    }
}

/// The mesh's documents as the run applies them: every namespace the manifests use becomes the
/// run's (one namespace per run, as Istio's own test framework does), Namespace documents are
/// left out (the run's namespace replaces them), so are IstioOperators (istioctl installs the
/// mesh config with Istio), and each object is labelled as the run's.
/// Hosts that name a manifest namespace (`svc.ns.svc.cluster.local`) are rewritten with it.
pub fn prepare(run: &Run, docs: &[(Origin, Value)]) -> Result<Vec<Value>, InputError> {
    let namespaces: BTreeSet<String> = docs
        .iter()
        .filter_map(|(_, d)| {
            if d["kind"] == "Namespace" {
                d["metadata"]["name"].as_str().map(str::to_string)
            } else {
                d["metadata"]["namespace"].as_str().map(str::to_string)
            }
        })
        .filter(|ns| ns != "istio-system")
        .collect();
    let mut out = Vec::new();
    for (origin, doc) in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        // istioctl's input (the mesh config is installed with Istio), not a cluster object.
        let installer = doc["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("install.istio.io/"));
        if kind == "Namespace" || installer {
            continue;
        }
        if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(origin.error("metadata.name", format!("{kind} has no name")));
        }
        let mut text = doc.to_string();
        for ns in &namespaces {
            // `.ns.svc` in hosts and FQDNs; principals (`/ns/NS/`) and namespace fields.
            text = text
                .replace(&format!(".{ns}.svc"), &format!(".{}.svc", run.namespace))
                .replace(&format!("/ns/{ns}/"), &format!("/ns/{}/", run.namespace))
                .replace(&format!("\"{ns}\""), &format!("\"{}\"", run.namespace));
        }
        let mut obj: Value = serde_json::from_str(&text).expect("re-parsing our own JSON");
        if !CLUSTER_SCOPED.contains(&kind) && obj["metadata"]["namespace"] != "istio-system" {
            obj["metadata"]["namespace"] = json!(run.namespace);
        }
        let labels = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object")
            .entry("labels")
            .or_insert_with(|| json!({}));
        labels[RUN_LABEL] = json!(run.id);
        labels[MANAGED_BY] = json!(FIELD_MANAGER);
        out.push(obj);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &[&str]) -> Vec<(Origin, Value)> {
        yaml.iter()
            .map(|y| {
                (
                    Origin {
                        file: "m.yaml".into(),
                        line: 1,
                    },
                    serde_saphyr::from_str(y).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn objects_move_into_the_runs_namespace_with_their_references() {
        let run = Run::new("abc", None);
        let out = prepare(
            &run,
            &docs(&[
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: pyairtable}\n",
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: pyairtable}\nspec:\n  hosts: [auth-service.pyairtable.svc.cluster.local]\n",
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: pyairtable}\nspec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/pyairtable/sa/api-gateway-sa], namespaces: [pyairtable]}\n",
                "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: istio-system}\nspec: {selector: {istio: ingressgateway}}\n",
            ]),
        )
        .unwrap();
        assert_eq!(
            out.len(),
            3,
            "the Namespace document is replaced by the run's"
        );
        assert_eq!(out[0]["metadata"]["namespace"], "meshtest-abc");
        assert_eq!(
            out[0]["spec"]["hosts"][0],
            "auth-service.meshtest-abc.svc.cluster.local"
        );
        let source = &out[1]["spec"]["rules"][0]["from"][0]["source"];
        assert_eq!(
            source["principals"][0],
            "cluster.local/ns/meshtest-abc/sa/api-gateway-sa"
        );
        assert_eq!(source["namespaces"][0], "meshtest-abc");
        assert_eq!(
            out[2]["metadata"]["namespace"], "istio-system",
            "the gateway's stays"
        );
        for o in &out {
            assert_eq!(o["metadata"]["labels"][RUN_LABEL], "abc");
            assert_eq!(o["metadata"]["labels"][MANAGED_BY], "meshtest");
        }
    }

    #[test]
    fn the_runs_namespace_injects_sidecars_and_is_found_by_its_labels() {
        let run = Run::new("abc", Some("staging-test"));
        let ns = run.namespace_object();
        assert_eq!(ns["metadata"]["name"], "staging-test");
        assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled");
        assert_eq!(
            run.selector(),
            "app.kubernetes.io/managed-by=meshtest,meshtest.io/run=abc"
        );
    }
}
