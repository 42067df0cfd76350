//! Which services a sidecar can reach, as a `Sidecar` resource's egress hosts declare, and what
//! it does with a call to any other (Istio's `outboundTrafficPolicy`).
//!
//! Istio programs a proxy with the clusters and routes of exactly the services its Sidecar's
//! egress hosts select; without a Sidecar, of every service. A call to a service outside that
//! set does not get the mesh's routing, policies or mTLS: with `ALLOW_ANY` (the default) it
//! leaves the proxy as it came, in plaintext, to one of the service's pods (Istio's
//! PassthroughCluster to the original destination, which kube-proxy sends to a pod), so a STRICT
//! destination refuses it; with `REGISTRY_ONLY` it is a 502.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::Resource;
use crate::manifest::istio::{OutboundMode, SidecarSpec, selector_labels};
use crate::model::{MeshModel, ROOT_NAMESPACE, Service, Workload, labels_match};

use super::Endpoints;

type Sidecar = Resource<SidecarSpec>;

/// What one proxy sees of the mesh's services.
#[derive(Debug, Clone)]
pub struct SidecarScope {
    /// (service FQDN, port) pairs the proxy is programmed for; `None`: every one.
    visible: Option<BTreeSet<(String, u16)>>,
    pub mode: OutboundMode,
    /// The proxy's namespace, whose services it also reaches by their short names (as
    /// Kubernetes DNS resolves them); `None`: every service by its short name.
    pub namespace: Option<String>,
}

impl SidecarScope {
    /// Every service, as the ingress gateway (which no Sidecar governs) and a sidecar without
    /// a Sidecar resource see them.
    pub fn everything(mode: OutboundMode) -> SidecarScope {
        SidecarScope {
            visible: None,
            mode,
            namespace: None,
        }
    }

    /// The scope of `workload`'s sidecar: the Sidecar selecting it in its namespace, else its
    /// namespace's default, else the root namespace's default, else everything.
    pub fn of(model: &MeshModel, workload: &Workload) -> Result<SidecarScope, InputError> {
        let mesh_mode = mesh_outbound_mode(model);
        let namespace = Some(workload.namespace.clone());
        let Some(sidecar) = applicable(model, workload)? else {
            return Ok(SidecarScope {
                namespace,
                ..SidecarScope::everything(mesh_mode)
            });
        };
        // `.` in the root namespace's default means the workload's own namespace.
        let own_namespace = if sidecar.namespace() == ROOT_NAMESPACE {
            workload.namespace.as_str()
        } else {
            sidecar.namespace()
        };
        let mut visible = BTreeSet::new();
        for egress in &sidecar.spec.egress {
            for service in &model.services {
                if !egress
                    .hosts
                    .iter()
                    .any(|h| host_selects(h, own_namespace, service))
                {
                    continue;
                }
                for port in &service.ports {
                    if egress
                        .port
                        .as_ref()
                        .is_none_or(|p| p.number == u32::from(port.port))
                    {
                        visible.insert((service.fqdn(), port.port));
                    }
                }
            }
        }
        let mode = sidecar
            .spec
            .outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .unwrap_or(mesh_mode);
        Ok(SidecarScope {
            visible: Some(visible),
            mode,
            namespace,
        })
    }

    /// Does the proxy reach `service` by its bare name (a service of its own namespace)?
    pub fn by_short_name(&self, service: &Service) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == service.namespace)
    }

    /// Is the proxy programmed for `port` of `service`?
    pub fn sees(&self, service: &Service, port: u16) -> bool {
        self.visible
            .as_ref()
            .is_none_or(|v| v.contains(&(service.fqdn(), port)))
    }
}

/// meshConfig's `outboundTrafficPolicy.mode` (Istio's default: ALLOW_ANY).
fn mesh_outbound_mode(model: &MeshModel) -> OutboundMode {
    model
        .manifests
        .istio_operators
        .iter()
        .find_map(|o| o.spec.mesh_config.outbound_traffic_policy.as_ref()?.mode)
        .unwrap_or_default()
}

/// The one Sidecar that governs `workload`, most specific first; two at the same level is
/// undefined in Istio, so refused.
fn applicable<'a>(
    model: &'a MeshModel,
    workload: &Workload,
) -> Result<Option<&'a Sidecar>, InputError> {
    let sidecars = &model.manifests.sidecars;
    let selecting = |s: &&Sidecar| {
        s.namespace() == workload.namespace
            && selector_labels(&s.spec).is_some_and(|l| labels_match(l, &workload.labels))
    };
    let namespace_default = |ns: &str| -> Vec<&'a Sidecar> {
        sidecars
            .iter()
            .filter(|s| s.namespace() == ns && s.spec.workload_selector.is_none())
            .collect()
    };
    for (candidates, what) in [
        (
            sidecars.iter().filter(selecting).collect::<Vec<_>>(),
            "select the same workload",
        ),
        (
            namespace_default(&workload.namespace),
            "have no workloadSelector in the same namespace",
        ),
        (
            namespace_default(ROOT_NAMESPACE),
            "have no workloadSelector in the root namespace",
        ),
    ] {
        match candidates.as_slice() {
            [] => continue,
            [one] => return Ok(Some(one)),
            [first, second, ..] => {
                return Err(second.origin.error(
                    "spec.workloadSelector",
                    format!(
                        "Sidecars {} and {} both {what}: Istio's choice between them is undefined",
                        first.name(),
                        second.name()
                    ),
                ));
            }
        }
    }
    Ok(None)
}

/// Does egress host `namespace/dnsName` select `service`? Namespace `*`, `.` (`own`), `~`
/// (none) or a name; dnsName `*`, `*.suffix` or the service's FQDN.
fn host_selects(host: &str, own: &str, service: &Service) -> bool {
    let Some((namespace, dns)) = host.split_once('/') else {
        return false;
    };
    let namespace_ok = match namespace {
        "*" => true,
        "." => service.namespace == own,
        "~" => false,
        ns => service.namespace == ns,
    };
    let fqdn = service.fqdn();
    let dns_ok = match dns.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => fqdn.ends_with(suffix),
        None => fqdn == dns,
    };
    namespace_ok && dns_ok
}

/// Refuses what the embedded mesh does not translate, and egress hosts not in
/// `namespace/dnsName` form, at the field.
pub fn validate(model: &MeshModel) -> Result<(), InputError> {
    for s in &model.manifests.sidecars {
        if !s.spec.ingress.is_empty() {
            return Err(s.origin.error(
                "spec.ingress",
                "custom inbound listeners are not translated (the embedded mesh derives them from the pod's ports)",
            ));
        }
        if s.spec.inbound_connection_pool.is_some() {
            return Err(s.origin.error(
                "spec.inboundConnectionPool",
                "inbound connection pools are not translated",
            ));
        }
        if s.spec
            .outbound_traffic_policy
            .as_ref()
            .is_some_and(|p| p.egress_proxy.is_some())
        {
            return Err(s.origin.error(
                "spec.outboundTrafficPolicy.egressProxy",
                "an egress proxy for unknown traffic is not translated",
            ));
        }
        for (i, e) in s.spec.egress.iter().enumerate() {
            if e.bind.is_some() {
                return Err(s.origin.error(
                    &format!("spec.egress[{i}].bind"),
                    "egress listeners bound to an address are not translated (the app reaches its sidecar through one socket)",
                ));
            }
            if e.capture_mode.as_deref().is_some_and(|m| m != "DEFAULT") {
                return Err(s.origin.error(
                    &format!("spec.egress[{i}].captureMode"),
                    "capture modes other than DEFAULT are not translated",
                ));
            }
            if let Some(h) = e.hosts.iter().find(|h| !h.contains('/')) {
                return Err(s.origin.error(
                    &format!("spec.egress[{i}].hosts"),
                    format!(
                        "`{h}` is not in `namespace/dnsName` form (e.g. `./*`, `istio-system/*`)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Egress hosts that select no service of the mesh (a short name where Istio wants a FQDN, a
/// namespace typo): istioctl-analyze-style warnings printed when the mesh starts.
pub fn unmatched_hosts(model: &MeshModel) -> Vec<String> {
    let mut out = Vec::new();
    for s in &model.manifests.sidecars {
        for (i, e) in s.spec.egress.iter().enumerate() {
            for h in &e.hosts {
                let own = if s.namespace() == ROOT_NAMESPACE {
                    None
                } else {
                    Some(s.namespace())
                };
                let any = model
                    .services
                    .iter()
                    .any(|svc| host_selects(h, own.unwrap_or(svc.namespace.as_str()), svc));
                if !any && !h.starts_with("~/") {
                    out.push(format!(
                        "{}:{}: Sidecar {} spec.egress[{i}].hosts: `{h}` selects no service of the mesh (dnsName must be a FQDN such as name.namespace.svc.cluster.local, or a wildcard)",
                        s.origin.file.display(),
                        s.origin.line,
                        s.name()
                    ));
                }
            }
        }
    }
    out
}

/// Istio's PassthroughCluster: an ORIGINAL_DST cluster. Here the app reaches its sidecar on a
/// Unix socket, so there is no original destination address: the route of a service outside
/// the scope names one of its pods in Envoy's `x-envoy-original-dst-host` header instead
/// (`passthrough_route`). The downstream's protocol is kept, as Istio keeps it.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
const ORIGINAL_DST_HEADER: &str = "x-envoy-original-dst-host";

pub fn passthrough_http_cluster() -> Value {
    json!({
        "name": PASSTHROUGH_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "original_dst_lb_config": {"use_http_header": true},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {},
        }},
    })
}

/// The route of `port` of a service outside the scope (ALLOW_ANY): to the PassthroughCluster,
/// at the service's first pod (kube-proxy would pick one per connection; here it is always the
/// same), or None when the service has no pod.
pub fn passthrough_route(
    model: &MeshModel,
    service: &Service,
    port: &crate::model::ServicePort,
    endpoints: &Endpoints<'_>,
) -> Option<Value> {
    let pod = model.pods_of(service).next()?;
    let address = std::net::SocketAddr::new(endpoints(pod), port.target_port);
    Some(json!({
        "name": "allow_any",
        "match": {"prefix": "/"},
        "route": {"cluster": PASSTHROUGH_CLUSTER, "timeout": "0s"},
        "request_headers_to_add": [{"header": {"key": ORIGINAL_DST_HEADER, "value": address.to_string()}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }))
}

/// A TCP port outside the scope (ALLOW_ANY): tcp_proxy has no header to carry an address, so
/// each such port gets a plaintext cluster of the service's pods.
pub fn passthrough_tcp_cluster_name(service: &Service, port: u16) -> String {
    format!("{PASSTHROUGH_CLUSTER}|{port}|{}", service.fqdn())
}

pub fn passthrough_tcp_cluster(
    model: &MeshModel,
    service: &Service,
    port: &crate::model::ServicePort,
    endpoints: &Endpoints<'_>,
) -> Value {
    let name = passthrough_tcp_cluster_name(service, port.port);
    let lb_endpoints: Vec<Value> = model
        .pods_of(service)
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": endpoints(p).to_string(), "port_value": port.target_port}}}}))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    })
}

/// REGISTRY_ONLY's catch-all: any other host is a 502, as Istio's `block_all` route answers.
pub fn block_all_virtual_host() -> Value {
    json!({"name": "block_all", "domains": ["*"], "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::model_of;

    const OTHER: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db, namespace: data}\nspec:\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: data}\nspec:\n  selector: {app: db}\n  ports: [{port: 5000, name: http}, {port: 5001, name: http-admin}]\n---\n";

    fn sees(extra: &str, app: &str, ns: &str) -> (Vec<(String, u16)>, OutboundMode) {
        let model = model_of(&format!("{OTHER}{extra}"));
        let workload = Workload {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
        };
        let scope = SidecarScope::of(&model, &workload).unwrap();
        let mut out = Vec::new();
        for s in &model.services {
            for p in &s.ports {
                if scope.sees(s, p.port) {
                    out.push((s.name.clone(), p.port));
                }
            }
        }
        (out, scope.mode)
    }

    #[test]
    fn without_a_sidecar_every_service_is_seen() {
        let (seen, mode) = sees("", "svc", "ns");
        assert_eq!(seen.len(), 3);
        assert_eq!(mode, OutboundMode::AllowAny);
    }

    #[test]
    fn the_root_default_dot_means_the_workloads_namespace() {
        let root = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: istio-system}\nspec:\n  egress: [{hosts: [./*]}]\n";
        assert_eq!(sees(root, "svc", "ns").0, [("svc".to_string(), 8080)]);
        assert_eq!(sees(root, "db", "data").0.len(), 2);
    }

    #[test]
    fn a_selecting_sidecar_wins_over_the_namespace_default_and_ports_narrow() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{hosts: [./*]}]\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: svc, namespace: ns}\nspec:\n  workloadSelector: {labels: {app: svc}}\n  egress: [{hosts: [data/db.data.svc.cluster.local], port: {number: 5001, protocol: HTTP, name: admin}}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
        let (seen, mode) = sees(yaml, "svc", "ns");
        assert_eq!(seen, [("db".to_string(), 5001)]);
        assert_eq!(mode, OutboundMode::RegistryOnly);
        assert_eq!(sees(yaml, "other", "ns").0, [("svc".to_string(), 8080)]);
    }

    #[test]
    fn wildcards_and_the_none_namespace() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{hosts: ['*/*.data.svc.cluster.local', '~/*']}]\n";
        assert_eq!(sees(yaml, "svc", "ns").0.len(), 2);
    }

    #[test]
    fn bare_names_only_for_the_proxys_own_namespace() {
        // A second `svc`, in namespace data: each proxy reaches its own namespace's by `svc`.
        let twin = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: twin, namespace: data}\nspec:\n  selector: {matchLabels: {app: twin}}\n  template:\n    metadata: {labels: {app: twin}}\n    spec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: data}\nspec:\n  selector: {app: twin}\n  ports: [{port: 8080, name: http}]\n---\n";
        let model = model_of(twin);
        let workload = Workload {
            namespace: "data".into(),
            labels: [("app".to_string(), "twin".to_string())].into(),
        };
        let scope = SidecarScope::of(&model, &workload).unwrap();
        let hosts = crate::translate::virtual_service::mesh_virtual_hosts(&model, &scope, &|_| {
            std::net::IpAddr::from([127, 0, 0, 1])
        })
        .unwrap();
        let mut all = BTreeSet::new();
        for h in &hosts {
            for d in h["domains"].as_array().unwrap() {
                assert!(all.insert(d.as_str().unwrap().to_string()), "{d} twice");
            }
        }
        let owner = |domain: &str| {
            hosts
                .iter()
                .find(|h| h["domains"].as_array().unwrap().iter().any(|d| d == domain))
                .map(|h| h["name"].as_str().unwrap().to_string())
        };
        assert_eq!(
            owner("svc").as_deref(),
            Some("svc.data.svc.cluster.local:8080")
        );
        assert_eq!(
            owner("svc.ns").as_deref(),
            Some("svc.ns.svc.cluster.local:8080")
        );
    }

    #[test]
    fn mesh_config_sets_the_default_mode() {
        let yaml = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: i, namespace: istio-system}\nspec:\n  meshConfig: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n";
        assert_eq!(sees(yaml, "svc", "ns").1, OutboundMode::RegistryOnly);
    }

    #[test]
    fn refuses_what_it_does_not_translate_and_warns_on_short_names() {
        let bind = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{hosts: [./*], bind: 127.0.0.1}]\n";
        let err = validate(&model_of(bind)).unwrap_err().to_string();
        assert!(err.contains("spec.egress[0].bind"), "{err}");
        let two = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a, namespace: ns}\nspec:\n  egress: [{hosts: [./*]}]\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: b, namespace: ns}\nspec:\n  egress: [{hosts: [./*]}]\n";
        let model = model_of(two);
        let workload = Workload {
            namespace: "ns".into(),
            labels: Default::default(),
        };
        let err = SidecarScope::of(&model, &workload).unwrap_err().to_string();
        assert!(err.contains("both have no workloadSelector"), "{err}");
        let short = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns}\nspec:\n  egress: [{hosts: [ns/svc]}]\n";
        let warnings = unmatched_hosts(&model_of(short));
        assert!(
            warnings[0].contains("`ns/svc` selects no service"),
            "{warnings:?}"
        );
    }
}
