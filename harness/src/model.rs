//! The mesh as workloads: services, pods and their identities, resolved from the manifests.

use std::collections::BTreeMap;

use crate::error::InputError;
use crate::manifest::Manifests;
use crate::manifest::kube::{IntOrString, ServiceSpec};

/// The container port named `name` in the first Deployment whose pods `service` selects.
fn named_container_port(
    manifests: &Manifests,
    service: &crate::manifest::Resource<ServiceSpec>,
    name: &str,
) -> Option<u16> {
    manifests
        .deployments
        .iter()
        .filter(|d| {
            d.namespace() == service.namespace()
                && !service.spec.selector.is_empty()
                && labels_match(&service.spec.selector, &d.spec.template.metadata.labels)
        })
        .flat_map(|d| d.spec.template.spec.containers.iter())
        .flat_map(|c| c.ports.iter())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Where Istio's ingress gateway lives, and who it is.
pub const INGRESS_NAMESPACE: &str = "istio-system";
pub const INGRESS_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";
/// The embedded mesh's address plan: 127.B.S.R, S per service, R per pod.
pub const MAX_SERVICES: usize = 250;
pub const MAX_PODS_PER_SERVICE: usize = 250;
/// Namespace whose selector-less policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
pub const TRUST_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// In the order the Service declares them; the first is the default port of calls that
    /// name none.
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// The pods' port (a named targetPort resolved through the containers' ports).
    pub target_port: u16,
}

impl Service {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{TRUST_DOMAIN}", self.name, self.namespace)
    }

    /// The first declared port: where calls that name no port go.
    pub fn default_port(&self) -> &ServicePort {
        &self.ports[0]
    }

    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// The service port whose target is `target_port`.
    pub fn port_for_target(&self, target_port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.target_port == target_port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// The Service that selects this pod.
    pub service: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Container args and literal env, for the agent.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// 0-based index of this pod among its service's pods (stable across runs).
    pub ordinal: usize,
    /// The ports the pod serves (its service's distinct target ports, in order).
    pub ports: Vec<u16>,
}

impl Pod {
    /// The Deployment the pod belongs to (Istio's `workload` in telemetry).
    pub fn workload_name(&self) -> &str {
        self.name.rsplit_once('-').map_or(&self.name, |(w, _)| w)
    }

    pub fn spiffe_id(&self) -> String {
        spiffe_id(&self.namespace, &self.service_account)
    }
}

pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// A workload the policies may select: a pod or the ingress gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    pub fn of(pod: &Pod) -> Workload {
        Workload {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
        }
    }

    pub fn ingress_gateway() -> Workload {
        Workload {
            namespace: INGRESS_NAMESPACE.into(),
            labels: [("istio", "ingressgateway"), ("app", "istio-ingressgateway")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Does a policy in `namespace` with this selector apply to the workload?
    pub fn selected_by(
        &self,
        namespace: &str,
        selector: Option<&BTreeMap<String, String>>,
    ) -> bool {
        let in_scope = namespace == self.namespace || namespace == ROOT_NAMESPACE;
        in_scope && selector.is_none_or(|s| labels_match(s, &self.labels))
    }
}

pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The manifests, resolved into services and pods.
#[derive(Debug, Clone)]
pub struct MeshModel {
    pub manifests: Manifests,
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    /// JWKS fetched for RequestAuthentication jwksUris, by URI (filled by the target that runs
    /// the mesh, as istiod fetches them; a URI missing here verifies no token).
    pub jwks: BTreeMap<String, String>,
}

impl MeshModel {
    pub fn build(manifests: Manifests) -> Result<MeshModel, InputError> {
        if manifests.services.len() > MAX_SERVICES {
            let s = &manifests.services[MAX_SERVICES];
            return Err(s.origin.error(
                "metadata.name",
                format!("more than {MAX_SERVICES} Services: the embedded mesh gives each its own 127.B.S.0/24"),
            ));
        }
        let mut services = Vec::new();
        for s in &manifests.services {
            if s.spec.ports.is_empty() {
                return Err(s.origin.error("spec.ports", "Service has no ports"));
            }
            let mut ports: Vec<ServicePort> = Vec::new();
            for (i, p) in s.spec.ports.iter().enumerate() {
                let field = format!("spec.ports[{i}]");
                if p.port == 0 {
                    return Err(s
                        .origin
                        .error(&format!("{field}.port"), "port 0 is not a port"));
                }
                if ports.iter().any(|q| q.port == p.port) {
                    return Err(s.origin.error(
                        &format!("{field}.port"),
                        format!("port {} is declared twice", p.port),
                    ));
                }
                if s.spec.ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
                    return Err(s.origin.error(
                        &format!("{field}.name"),
                        "a Service with several ports must name each one (Kubernetes requires it)",
                    ));
                }
                let target_port = match &p.target_port {
                    None => p.port,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(name)) => named_container_port(&manifests, s, name)
                        .ok_or_else(|| {
                            s.origin.error(
                                &format!("{field}.targetPort"),
                                format!(
                                    "no container of the selected pods has a port named `{name}`"
                                ),
                            )
                        })?,
                };
                ports.push(ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port,
                });
            }
            services.push(Service {
                name: s.name().to_string(),
                namespace: s.namespace().to_string(),
                ports,
                selector: s.spec.selector.clone(),
            });
        }
        let mut pods: Vec<Pod> = Vec::new();
        for d in &manifests.deployments {
            let labels = d.spec.template.metadata.labels.clone();
            if !labels_match(&d.spec.selector.match_labels, &labels) {
                return Err(d.origin.error(
                    "spec.selector.matchLabels",
                    "selector does not match the pod template's labels",
                ));
            }
            let ns = d.namespace().to_string();
            let service = services
                .iter()
                .find(|s| {
                    s.namespace == ns
                        && !s.selector.is_empty()
                        && labels_match(&s.selector, &labels)
                })
                .ok_or_else(|| {
                    d.origin.error(
                        "spec.template.metadata.labels",
                        format!("no Service selects Deployment {}", d.name()),
                    )
                })?;
            let sa = d
                .spec
                .template
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            if !manifests
                .service_accounts
                .iter()
                .any(|a| a.name() == sa && a.namespace() == ns)
            {
                return Err(d.origin.error(
                    "spec.template.spec.serviceAccountName",
                    format!("ServiceAccount {sa} is not declared in namespace {ns}"),
                ));
            }
            let container = d.spec.template.spec.containers.first().ok_or_else(|| {
                d.origin
                    .error("spec.template.spec.containers", "no containers")
            })?;
            let env = container
                .env
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            let version = labels
                .get("version")
                .cloned()
                .unwrap_or_else(|| "v1".into());
            let mut pod_ports: Vec<u16> = Vec::new();
            for p in &service.ports {
                if !pod_ports.contains(&p.target_port) {
                    pod_ports.push(p.target_port);
                }
            }
            // Each pod of a service gets its own loopback address 127.B.S.R (R = 1..=250).
            let already = pods
                .iter()
                .filter(|p| p.service == service.name && p.namespace == ns)
                .count();
            if already + d.spec.replicas as usize > MAX_PODS_PER_SERVICE {
                return Err(d.origin.error(
                    "spec.replicas",
                    format!(
                        "{} replicas: a service can have at most {MAX_PODS_PER_SERVICE} pods",
                        d.spec.replicas
                    ),
                ));
            }
            for i in 0..d.spec.replicas {
                let ordinal = pods
                    .iter()
                    .filter(|p| p.service == service.name && p.namespace == ns)
                    .count();
                pods.push(Pod {
                    name: format!("{}-{i}", d.name()),
                    namespace: ns.clone(),
                    service: service.name.clone(),
                    version: version.clone(),
                    labels: labels.clone(),
                    service_account: sa.clone(),
                    args: container.args.clone(),
                    env: BTreeMap::clone(&env),
                    ordinal,
                    ports: pod_ports.clone(),
                });
            }
        }
        for s in &services {
            if !pods
                .iter()
                .any(|p| p.service == s.name && p.namespace == s.namespace)
            {
                let origin = &manifests
                    .services
                    .iter()
                    .find(|m| m.name() == s.name)
                    .expect("service from manifests")
                    .origin;
                return Err(origin.error(
                    "spec.selector",
                    format!("Service {} selects no Deployment's pods", s.name),
                ));
            }
        }
        Ok(MeshModel {
            manifests,
            services,
            pods,
            jwks: BTreeMap::new(),
        })
    }

    pub fn pods_of<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.service == service.name && p.namespace == service.namespace)
    }

    /// The service a pod belongs to.
    pub fn service_of(&self, pod: &Pod) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == pod.service && s.namespace == pod.namespace)
            .expect("every pod belongs to a service")
    }

    /// Every jwksUri the RequestAuthentications name.
    pub fn jwks_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = self
            .manifests
            .request_authentications
            .iter()
            .flat_map(|r| r.spec.jwt_rules.iter())
            .filter(|r| r.jwks.is_none())
            .filter_map(|r| r.jwks_uri.clone())
            .collect();
        uris.sort();
        uris.dedup();
        uris
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Resolves a host as written in a VirtualService/DestinationRule in `namespace`
    /// (short name, name.ns, or FQDN) to a Service.
    pub fn resolve_host(&self, host: &str, namespace: &str) -> Option<&Service> {
        let host = host.split(':').next().unwrap_or(host);
        self.services.iter().find(|s| {
            (s.namespace == namespace && host == s.name)
                || host == format!("{}.{}", s.name, s.namespace)
                || host == format!("{}.{}.svc", s.name, s.namespace)
                || host == s.fqdn()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn build(replicas: &str) -> Result<MeshModel, InputError> {
        let yaml = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sa, namespace: ns}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: ns}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: a}}}}\n  template:\n    metadata: {{labels: {{app: a}}}}\n    spec:\n      serviceAccountName: sa\n      containers: [{{name: c, ports: [{{containerPort: 9080, name: http}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: ns}}\nspec:\n  selector: {{app: a}}\n  ports: [{{port: 80, name: web, targetPort: http}}]\n"
        );
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), &yaml)?;
        MeshModel::build(m)
    }

    #[test]
    fn replicas_beyond_the_address_plan_name_the_field() {
        assert_eq!(build("3").unwrap().pods.len(), 3);
        let err = build("4000000000").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.replicas"), "{err}");
    }

    #[test]
    fn a_named_target_port_resolves_through_the_container_ports() {
        let m = build("1").unwrap();
        let svc = m.service("a").unwrap();
        assert_eq!(svc.default_port().port, 80);
        assert_eq!(svc.default_port().target_port, 9080);
        assert_eq!(m.pods[0].ports, [9080]);
    }
}
