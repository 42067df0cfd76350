//! The mesh as workloads: services, pods and their identities, resolved from the manifests.

use std::collections::BTreeMap;

use crate::error::InputError;
use crate::manifest::Manifests;
use crate::manifest::gateway_api::GATEWAY_NAME_LABEL;

mod protocol;
use crate::manifest::kube::{IntOrString, ServiceSpec};
pub use protocol::Protocol;

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
    pub protocol: Protocol,
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

    /// The protocol of pod port `target_port` (the first Service port that targets it).
    pub fn protocol_of_target(&self, target_port: u16) -> Protocol {
        self.port_for_target(target_port)
            .map_or(Protocol::Detected, |p| p.protocol)
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
    /// The container is not `meshtest agent` (an unmodified application image): the embedded
    /// mesh runs a stand-in agent on each of its ports instead.
    pub stand_in: bool,
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

/// The ingress gateway's labels: what the Gateways select (Istio's operator install labels it
/// `istio: ingressgateway`, its Helm chart `istio: ingress`). The embedded mesh runs one
/// gateway, so Gateways that select different workloads are refused rather than half served.
fn ingress_workload(manifests: &Manifests) -> Result<Workload, InputError> {
    let mut chosen: Option<(&BTreeMap<String, String>, &crate::manifest::Resource<_>)> = None;
    for gw in &manifests.gateways {
        let selector = &gw.spec.selector;
        if selector.is_empty() {
            // Selects every gateway workload, whatever its labels.
            continue;
        }
        match chosen {
            None => chosen = Some((selector, gw)),
            Some((first, by)) if first != selector => {
                return Err(gw.origin.error(
                    "spec.selector",
                    format!(
                        "selects {selector:?} but Gateway {} ({}:{}) selects {first:?}: the embedded mesh runs one ingress gateway",
                        by.name(),
                        by.origin.file.display(),
                        by.origin.line
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(match chosen {
        // Istio runs a Gateway API Gateway's deployment in the Gateway's own namespace.
        Some((selector, gw)) if selector.contains_key(GATEWAY_NAME_LABEL) => Workload {
            namespace: gw.namespace().to_string(),
            labels: selector.clone(),
        },
        Some((selector, _)) => Workload {
            namespace: INGRESS_NAMESPACE.into(),
            labels: selector.clone(),
        },
        None => Workload::ingress_gateway(),
    })
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
    /// The one ingress gateway the embedded mesh runs, labelled as the Gateways select it.
    pub ingress: Workload,
}

impl MeshModel {
    pub fn build(manifests: Manifests) -> Result<MeshModel, InputError> {
        crate::manifest::annotations::check(&manifests)?;
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
                if p.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    return Err(s.origin.error(
                        &format!("{field}.protocol"),
                        format!(
                            "{} ports are not proxied by Istio's sidecars and not translated",
                            p.protocol.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                let protocol = Protocol::select(p.name.as_deref(), p.app_protocol.as_deref())
                    .expect("TCP ports have a protocol");
                ports.push(ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port,
                    protocol,
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
        let mut unselected = Vec::new();
        for d in &manifests.deployments {
            let labels = d.spec.template.metadata.labels.clone();
            if !labels_match(&d.spec.selector.match_labels, &labels) {
                return Err(d.origin.error(
                    "spec.selector.matchLabels",
                    "selector does not match the pod template's labels",
                ));
            }
            let ns = d.namespace().to_string();
            let selecting: Vec<&Service> = services
                .iter()
                .filter(|s| {
                    s.namespace == ns
                        && !s.selector.is_empty()
                        && labels_match(&s.selector, &labels)
                })
                .collect();
            // The first Service that selects the pods places them (127.B.S.R); every Service
            // that selects them sends to them.
            let Some(&service) = selecting.first() else {
                unselected.push(crate::manifest::Ignored {
                    kind: "Deployment".into(),
                    name: d.name().to_string(),
                    origin: d.origin.clone(),
                    why: "no Service selects its pods: a client-only workload, which the embedded mesh does not run (nothing can call it; calls from it cannot be made)".into(),
                });
                continue;
            };
            let sa = d
                .spec
                .template
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            // Kubernetes creates `default` in every namespace.
            if sa != "default"
                && !manifests
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
            for p in selecting.iter().flat_map(|s| s.ports.iter()) {
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
                    stand_in: container.args.first().map(String::as_str) != Some("agent"),
                    env: BTreeMap::clone(&env),
                    ordinal,
                    ports: pod_ports.clone(),
                });
            }
        }
        for s in &services {
            if !pods.iter().any(|p| {
                p.namespace == s.namespace
                    && !s.selector.is_empty()
                    && labels_match(&s.selector, &p.labels)
            }) {
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
        let ingress = ingress_workload(&manifests)?;
        let mut manifests = manifests;
        // A model rebuilt from its own manifests (a live apply) has noted them already.
        for i in unselected {
            if !manifests.ignored.contains(&i) {
                manifests.ignored.push(i);
            }
        }
        Ok(MeshModel {
            manifests,
            services,
            pods,
            jwks: BTreeMap::new(),
            ingress,
        })
    }

    pub fn pods_of<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| {
            p.namespace == service.namespace
                && !service.selector.is_empty()
                && labels_match(&service.selector, &p.labels)
        })
    }

    /// The protocol pod port `port` of `pod` serves (as the Services selecting it declare).
    pub fn pod_port_protocol(&self, pod: &Pod, port: u16) -> Protocol {
        self.services
            .iter()
            .filter(|s| {
                s.namespace == pod.namespace
                    && !s.selector.is_empty()
                    && labels_match(&s.selector, &pod.labels)
            })
            .flat_map(|s| s.ports.iter())
            .find(|p| p.target_port == port)
            .map_or(Protocol::Detected, |p| p.protocol)
    }

    /// The service a pod belongs to.
    pub fn service_of(&self, pod: &Pod) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == pod.service && s.namespace == pod.namespace)
            .expect("every pod belongs to a service")
    }

    /// The RequestAuthentications that apply to `workload` (its namespace's and the root
    /// namespace's, by selector).
    pub fn request_authentications_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<
        Item = &'a crate::manifest::Resource<crate::manifest::istio::RequestAuthenticationSpec>,
    > + 'a {
        self.manifests.request_authentications.iter().filter(|r| {
            workload.selected_by(
                r.namespace(),
                r.spec.selector.as_ref().map(|s| &s.match_labels),
            )
        })
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
        let (name, rest) = host.split_once('.').unwrap_or((host, ""));
        // Without allocating: every sidecar's config resolves hosts services x rules times.
        self.services.iter().find(|s| {
            name == s.name
                && if rest.is_empty() {
                    s.namespace == namespace
                } else {
                    rest.strip_prefix(s.namespace.as_str()).is_some_and(|tail| {
                        matches!(tail, "" | ".svc")
                            || tail.strip_prefix(".svc.") == Some(TRUST_DOMAIN)
                    })
                }
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

    fn with(extra: &str) -> Result<MeshModel, InputError> {
        let mut m = Manifests::default();
        m.add_text(
            Path::new("t.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080, name: http}]\n",
        )?;
        m.add_text(Path::new("x.yaml"), extra)?;
        MeshModel::build(m)
    }

    #[test]
    fn unmodified_containers_get_stand_ins_under_the_default_service_account() {
        let m = with("").unwrap();
        assert!(m.pods[0].stand_in);
        assert_eq!(m.pods[0].service_account, "default");
        assert_eq!(m.pods[0].ports, [8080]);
    }

    #[test]
    fn every_service_selecting_a_pod_sends_to_it_and_a_client_only_deployment_is_ignored() {
        let m = with("apiVersion: v1\nkind: Service\nmetadata: {name: web-external}\nspec:\n  selector: {app: web}\n  ports: [{port: 8081, targetPort: 8081, name: http-admin}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: loadgen}\nspec:\n  selector: {matchLabels: {app: loadgen}}\n  template:\n    metadata: {labels: {app: loadgen}}\n    spec: {containers: [{name: l, image: busybox}]}\n").unwrap();
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.pods[0].ports, [8080, 8081]);
        let external = m.service("web-external").unwrap();
        assert_eq!(m.pods_of(external).count(), 1);
        assert_eq!(m.manifests.ignored[0].name, "loadgen");
    }

    #[test]
    fn the_ingress_gateway_is_labelled_as_the_gateways_select_it() {
        let helm = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingress}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n";
        let m = with(helm).unwrap();
        assert_eq!(m.ingress.labels["istio"], "ingress");
        assert_eq!(m.ingress.namespace, INGRESS_NAMESPACE);
        assert_eq!(with("").unwrap().ingress, Workload::ingress_gateway());
        let api = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n";
        let m = with(api).unwrap();
        assert_eq!(m.ingress.namespace, "shop");
        assert_eq!(m.ingress.labels[GATEWAY_NAME_LABEL], "edge");
        let both = format!(
            "{helm}---\n{}",
            helm.replace("istio: ingress", "istio: ingressgateway")
                .replace("name: g", "name: h")
        );
        let err = with(&both).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.selector"), "{err}");
        assert!(err.message.contains("one ingress gateway"), "{err}");
    }
}
