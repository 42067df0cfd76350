//! Kubernetes + Istio manifests: a directory of multi-document YAML parsed into typed resources.
//!
//! Every resource remembers the file and line it came from, so translation errors can name them.
//! Istio specs deny unknown fields: a field meshtest cannot translate must be an error, never
//! silently dropped (a dropped security field is a false pass).

pub mod annotations;
pub mod coverage;
pub mod gateway_api;
pub mod istio;
pub mod kube;
pub mod observability;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::InputError;

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u64,
}

impl Origin {
    /// An error about `field` of the resource at this origin.
    pub fn error(&self, field: &str, message: impl Into<String>) -> InputError {
        InputError::new(&self.file, message)
            .at_line(self.line)
            .field(field)
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// One resource with its metadata, spec and origin.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Resource<S> {
    pub metadata: Metadata,
    pub spec: S,
    pub origin: Origin,
}

impl<S> Resource<S> {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// Everything a mesh directory declares (serializable, so a live change can be handed to the
/// process that runs the mesh).
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
pub struct Manifests {
    pub dir: PathBuf,
    pub namespaces: Vec<Resource<()>>,
    pub service_accounts: Vec<Resource<()>>,
    pub deployments: Vec<Resource<kube::DeploymentSpec>>,
    pub services: Vec<Resource<kube::ServiceSpec>>,
    pub peer_authentications: Vec<Resource<istio::PeerAuthenticationSpec>>,
    pub authorization_policies: Vec<Resource<istio::AuthorizationPolicySpec>>,
    pub request_authentications: Vec<Resource<istio::RequestAuthenticationSpec>>,
    pub destination_rules: Vec<Resource<istio::DestinationRuleSpec>>,
    pub virtual_services: Vec<Resource<istio::VirtualServiceSpec>>,
    pub gateways: Vec<Resource<istio::GatewaySpec>>,
    pub envoy_filters: Vec<Resource<istio::EnvoyFilterSpec>>,
    #[serde(default)]
    pub sidecars: Vec<Resource<istio::SidecarSpec>>,
    #[serde(default)]
    pub prometheus_rules: Vec<Resource<observability::PrometheusRuleSpec>>,
    #[serde(default)]
    pub telemetries: Vec<Resource<observability::TelemetrySpec>>,
    #[serde(default)]
    pub istio_operators: Vec<Resource<observability::IstioOperatorSpec>>,
    /// Resources read but left out because they do not change what the mesh does (a
    /// ConfigMap, a Gateway of another controller's class...), with why: `up` lists them.
    #[serde(default)]
    pub ignored: Vec<Ignored>,
}

#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq)]
pub struct Ignored {
    pub kind: String,
    pub name: String,
    pub origin: Origin,
    pub why: String,
}

/// Kubernetes kinds that shape scheduling, storage, access to the Kubernetes API or
/// monitoring, never a request's path through the mesh: accepted and ignored.
const IGNORED_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "ResourceQuota",
    "LimitRange",
    "PriorityClass",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ServiceMonitor",
    "PodMonitor",
    "VerticalPodAutoscaler",
    "Certificate",
    "Issuer",
    "ClusterIssuer",
    "GatewayClass",
    "ReferenceGrant",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

/// Documents without a spec (ServiceAccount, Namespace).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BareDocument {
    metadata: Metadata,
}

impl Manifests {
    /// Loads every `*.yaml` / `*.yml` file in `dir` (sorted by name; not recursive).
    pub fn load_dir(dir: &Path) -> Result<Manifests, InputError> {
        let files = mesh_files(dir)?;
        let mut manifests = Manifests {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| InputError::new(&file, format!("cannot read: {e}")))?;
            manifests.add_text(&file, &text)?;
        }
        Ok(manifests)
    }

    /// Parses one multi-document YAML text as if read from `file`.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), InputError> {
        for (first_line, doc) in split_documents(text) {
            if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let origin = Origin {
                file: file.to_path_buf(),
                line: first_line,
            };
            self.add_document(&origin, &doc)?;
        }
        Ok(())
    }

    fn add_document(&mut self, origin: &Origin, doc: &str) -> Result<(), InputError> {
        let header: Header = parse(origin, doc)?;
        let kind = header.kind.ok_or_else(|| {
            InputError::new(&origin.file, "document has no `kind`").at_line(origin.line)
        })?;
        let api = header.api_version.unwrap_or_default();
        if kind == "List" {
            return self.add_list(origin, doc);
        }
        if header.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
            return Err(origin.error("metadata.name", format!("{kind} has no name")));
        }
        let name = header.metadata.map(|m| m.name).unwrap_or_default();
        // As the API server would: a resource its CRD refuses never reaches translation.
        schema::validate(origin, &api, &kind, doc)?;
        let group = api.split('/').next().unwrap_or("");
        if IGNORED_KINDS.contains(&kind.as_str()) {
            self.ignored.push(Ignored {
                kind,
                name,
                origin: origin.clone(),
                why: "does not change a request's path through the mesh".into(),
            });
            return Ok(());
        }
        match (group, kind.as_str()) {
            ("v1", "Namespace") => self.namespaces.push(bare(origin, doc)?),
            // A StatefulSet's or DaemonSet's pods serve like a Deployment's (a DaemonSet runs
            // one pod here: the embedded mesh has one node).
            ("apps", "StatefulSet" | "DaemonSet") => self.deployments.push(typed(origin, doc)?),
            ("gateway.networking.k8s.io", "Gateway") => {
                let gw = typed(origin, doc)?;
                match gateway_api::gateway(&gw)? {
                    Some(converted) => self.gateways.push(converted),
                    None => self.ignored.push(Ignored {
                        kind,
                        name,
                        origin: origin.clone(),
                        why: format!(
                            "its class `{}` is not Istio's: another controller serves it",
                            gw.spec.gateway_class_name
                        ),
                    }),
                }
            }
            ("networking.istio.io", "ServiceEntry") => {
                let se: Resource<istio::ServiceEntrySpec> = typed(origin, doc)?;
                if se.spec.location.as_deref() == Some("MESH_INTERNAL") {
                    return Err(origin.error(
                        "spec.location",
                        "a MESH_INTERNAL ServiceEntry adds workloads to the mesh; it is not translated",
                    ));
                }
                self.ignored.push(Ignored {
                    kind,
                    name,
                    origin: origin.clone(),
                    why: format!(
                        "mesh-external hosts ({}): calls to them leave the mesh, which the embedded mesh cannot reach",
                        se.spec.hosts.join(", ")
                    ),
                });
            }
            ("gateway.networking.k8s.io", "GRPCRoute") => {
                let route = typed(origin, doc)?;
                self.virtual_services.push(gateway_api::grpc_route(&route)?);
            }
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                let route = typed(origin, doc)?;
                self.virtual_services.push(gateway_api::http_route(&route)?);
            }
            ("v1", "ServiceAccount") => self.service_accounts.push(bare(origin, doc)?),
            ("apps", "Deployment") => self.deployments.push(typed(origin, doc)?),
            ("v1", "Service") => self.services.push(typed(origin, doc)?),
            ("security.istio.io", "PeerAuthentication") => {
                self.peer_authentications.push(typed(origin, doc)?)
            }
            ("security.istio.io", "AuthorizationPolicy") => {
                self.authorization_policies.push(typed(origin, doc)?)
            }
            ("security.istio.io", "RequestAuthentication") => {
                self.request_authentications.push(typed(origin, doc)?)
            }
            ("networking.istio.io", "DestinationRule") => {
                self.destination_rules.push(typed(origin, doc)?)
            }
            ("networking.istio.io", "VirtualService") => {
                self.virtual_services.push(typed(origin, doc)?)
            }
            ("networking.istio.io", "Gateway") => self.gateways.push(typed(origin, doc)?),
            ("networking.istio.io", "EnvoyFilter") => self.envoy_filters.push(typed(origin, doc)?),
            ("networking.istio.io", "Sidecar") => self.sidecars.push(typed(origin, doc)?),
            ("monitoring.coreos.com", "PrometheusRule") => {
                self.prometheus_rules.push(typed(origin, doc)?)
            }
            ("telemetry.istio.io", "Telemetry") => self.telemetries.push(typed(origin, doc)?),
            ("install.istio.io", "IstioOperator") => self.istio_operators.push(typed(origin, doc)?),
            _ => {
                return Err(origin.error(
                    "kind",
                    format!("unsupported resource {api}/{kind}: it may change what the mesh does, and meshtest does not translate it. Translated: Namespace, ServiceAccount, Deployment, StatefulSet, DaemonSet, Service, PeerAuthentication, AuthorizationPolicy, RequestAuthentication, DestinationRule, VirtualService, Gateway (Istio's and the Gateway API's), HTTPRoute, GRPCRoute, ServiceEntry (MESH_EXTERNAL, noted), EnvoyFilter, Sidecar (egress), Telemetry, IstioOperator (meshConfig), PrometheusRule; ignored: List is unpacked, {}", IGNORED_KINDS.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

impl Manifests {
    /// A `kind: List` (as `kubectl get -o yaml` writes): each item as its own document, at the
    /// List's line.
    fn add_list(&mut self, origin: &Origin, doc: &str) -> Result<(), InputError> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            items: Vec<serde_json::Value>,
        }
        let list: List = parse(origin, doc)?;
        for item in list.items {
            // JSON is YAML: each item parses as a document of its own.
            let text = serde_json::to_string(&item).unwrap_or_default();
            self.add_document(origin, &text)?;
        }
        Ok(())
    }
}

fn bare(origin: &Origin, doc: &str) -> Result<Resource<()>, InputError> {
    let d: BareDocument = parse(origin, doc)?;
    Ok(Resource {
        metadata: d.metadata,
        spec: (),
        origin: origin.clone(),
    })
}

fn typed<S: DeserializeOwned>(origin: &Origin, doc: &str) -> Result<Resource<S>, InputError> {
    let d: Document<S> = parse(origin, doc)?;
    Ok(Resource {
        metadata: d.metadata,
        spec: d.spec,
        origin: origin.clone(),
    })
}

/// Parses a YAML document that starts at `origin` (a profile, a manifest), turning YAML errors
/// into file:line:field errors in the original file.
pub fn parse_yaml<T: DeserializeOwned>(origin: &Origin, doc: &str) -> Result<T, InputError> {
    parse(origin, doc)
}

/// Parses a document, turning YAML errors into file:line errors in the original file.
fn parse<T: DeserializeOwned>(origin: &Origin, doc: &str) -> Result<T, InputError> {
    serde_saphyr::from_str::<T>(doc).map_err(|e| {
        let doc_line = e.location().map(|l| l.line()).unwrap_or(1).max(1);
        let line = origin.line + doc_line - 1;
        let message = strip_location(&first_line_of(&e.to_string()));
        let mut err = InputError::new(&origin.file, message.clone()).at_line(line);
        if let Some(field) = unknown_field_name(&message) {
            err.message = format!(
                "unsupported field `{field}`: meshtest's translator does not handle it, and dropping it could hide a broken promise ({message})"
            );
            err = err.field(field);
        } else if let Some(key) = doc.lines().nth(doc_line as usize - 1).and_then(key_of_line) {
            // The value on this line is what failed: name its key.
            err = err.field(key);
        }
        err
    })
}

/// "error: line 3 column 5: invalid u32" -> "invalid u32" (we report the file's own line).
fn strip_location(message: &str) -> String {
    let m = message.strip_prefix("error: ").unwrap_or(message);
    match m.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, rest)) => rest.to_string(),
        None => m.to_string(),
    }
}

/// The mapping key on a YAML line (`  - name: x` -> `name`).
fn key_of_line(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches("- ").trim();
    let (key, _) = t.split_once(':')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
    .then(|| key.to_string())
}

fn first_line_of(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// Splits multi-document YAML at `---` lines; yields (1-based first line, text).
/// The manifest files of a mesh directory (`*.yaml`, `*.yml`, not recursive), sorted.
pub fn mesh_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError::new(dir, format!("cannot read mesh directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(InputError::new(
            dir,
            "no *.yaml manifests in the mesh directory",
        ));
    }
    Ok(files)
}

/// Every document of a mesh directory as it is written (for applying it to a cluster), `List`s
/// unpacked, comment-only documents left out, each with where it came from.
pub fn raw_documents(dir: &Path) -> Result<Vec<(Origin, serde_json::Value)>, InputError> {
    let mut out = Vec::new();
    for file in mesh_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| InputError::new(&file, format!("cannot read: {e}")))?;
        for (line, doc) in split_documents(&text) {
            if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let origin = Origin {
                file: file.clone(),
                line,
            };
            let value: serde_json::Value = parse(&origin, &doc)?;
            match value["items"].as_array() {
                Some(items) if value["kind"] == "List" => {
                    out.extend(items.iter().map(|i| (origin.clone(), i.clone())));
                }
                _ => out.push((origin, value)),
            }
        }
    }
    Ok(out)
}

fn split_documents(text: &str) -> Vec<(u64, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1u64;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i as u64 + 2;
            continue;
        }
        // Keep line numbers aligned: blank out nothing, just accumulate.
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Manifests, InputError> {
        let mut m = Manifests::default();
        m.add_text(Path::new("test.yaml"), text).map(|_| m)
    }

    #[test]
    fn splits_documents_and_keeps_lines() {
        let docs = split_documents("a: 1\n---\nb: 2\nc: 3\n---\nd: 4\n");
        assert_eq!(docs.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 3, 6]);
    }

    #[test]
    fn unsupported_field_names_file_line_and_field() {
        let err = load(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n  - {}\n  targetRefs:\n  - {kind: Gateway, name: g}\n",
        )
        .unwrap_err();
        assert_eq!(err.file, Path::new("test.yaml"));
        assert_eq!(err.field.as_deref(), Some("targetRefs"));
        assert_eq!(err.line, Some(13), "{err}");
    }

    #[test]
    fn malformed_yaml_names_line() {
        let err = load("apiVersion: v1\nkind: Service\nmetadata:\n  name: [x\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let err = load("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: x\n  trafficPolicy:\n    outlierDetection:\n      consecutiveGatewayErrors: many\n").unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        // The CRD schema refuses it first, naming the whole path as the API server does.
        assert_eq!(
            err.field.as_deref(),
            Some("spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors"),
            "{err}"
        );
        assert!(!err.message.contains("line "), "{err}");
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let err =
            load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: x\n")
                .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kind"));
    }

    #[test]
    fn kinds_that_do_not_route_are_ignored_with_a_note_and_lists_unpacked() {
        let m = load("# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {a: b}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: sa}\n- apiVersion: policy/v1\n  kind: PodDisruptionBudget\n  metadata: {name: pdb}\n").unwrap();
        assert_eq!(m.service_accounts.len(), 1);
        let ignored: Vec<(&str, u64)> = m
            .ignored
            .iter()
            .map(|i| (i.name.as_str(), i.origin.line))
            .collect();
        assert_eq!(ignored, [("cfg", 3), ("pdb", 8)]);
    }

    #[test]
    fn the_pyairtable_mesh_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/pyairtable");
        let m = Manifests::load_dir(&dir).unwrap();
        assert_eq!(m.services.len(), 6);
        assert_eq!(m.deployments.len(), 7);
        assert_eq!(m.peer_authentications.len(), 2);
    }
}
