//! Assembles one proxy's listeners and clusters: a sidecar (inbound with mTLS per policy,
//! outbound routed by Host) or the ingress gateway.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::InputError;
use crate::model::{MeshModel, Pod, Workload};

use super::envoy_filter::{self, Context};
use super::gateway::{self, GatewayPlacement};
use super::peer_authentication::{self, ISTIO_ALPNS};
use super::route_actions;
use super::sidecar_scope::{self, SidecarScope};
use super::tcp;
use super::telemetry::{self, ConnectionManagerTelemetry, Reporter};
use super::virtual_service::{self, FAULT_FILTER};
use super::{
    CertFiles, Endpoints, EnvoyConfig, authorization_policy, destination_rule,
    request_authentication,
};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Where a sidecar's sockets and files are.
#[derive(Debug, Clone)]
pub struct SidecarPlacement {
    /// The pod address: an inbound listener binds it at each of the pod's ports.
    pub ip: IpAddr,
    /// Unix socket the app sends outbound traffic to (Istio captures it with iptables instead).
    pub outbound: PathBuf,
    /// Directory of the Unix sockets the app (the agent) serves each port on, reachable only
    /// through this sidecar.
    pub app_dir: PathBuf,
    pub certs: CertFiles,
}

impl SidecarPlacement {
    /// The app's socket for pod port `port`.
    pub fn app_socket(&self, port: u16) -> PathBuf {
        self.app_dir.join(format!("a{port}.sock"))
    }

    /// The socket the app connects to for TCP service port `port` of the `index`th service
    /// (Istio captures the service's address:port; a Unix socket has no Host to route by).
    pub fn tcp_outbound_socket(&self, index: usize, port: u16) -> PathBuf {
        self.app_dir.join(format!("t{index}-{port}.sock"))
    }
}

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

pub fn http_connection_manager(
    stat_prefix: &str,
    route_config: Value,
    http_filters: Vec<Value>,
    xfcc: &str,
    telemetry: &ConnectionManagerTelemetry,
) -> Value {
    let mut hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": http_filters,
        "forward_client_cert_details": xfcc,
        "access_log": telemetry.access_log,
    });
    if let Some(tracing) = &telemetry.tracing {
        hcm["tracing"] = tracing.clone();
    }
    if xfcc == "APPEND_FORWARD" {
        hcm["set_current_client_cert_details"] = json!({"subject": true, "uri": true, "dns": true});
    }
    json!({"name": HCM, "typed_config": hcm})
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

fn fault() -> Value {
    json!({"name": FAULT_FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}})
}

/// jwt_authn, RBAC (DENY, ALLOW), `extra`, router, then EnvoyFilter patches for `context`.
fn http_filters(
    model: &MeshModel,
    workload: &Workload,
    context: Context,
    extra: Vec<Value>,
) -> Result<Vec<Value>, InputError> {
    let mut filters = Vec::new();
    if context != Context::SidecarOutbound {
        filters.extend(request_authentication::jwt_filter(model, workload)?);
        filters.extend(authorization_policy::rbac_filters(
            &model.manifests,
            workload,
        )?);
    }
    // Routes are on the outbound side and the gateway: that is where CORS answers.
    if context != Context::SidecarInbound && route_actions::any_cors(model) {
        filters.push(route_actions::cors_filter());
    }
    filters.extend(extra);
    filters.push(router());
    envoy_filter::patch_http_filters(&model.manifests, workload, context, &mut filters)?;
    Ok(filters)
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn pipe_address(path: &std::path::Path) -> Value {
    json!({"pipe": {"path": path}})
}

/// The sidecar of one pod: an inbound listener per pod port (mTLS as PeerAuthentication
/// declares for that port), one outbound listener routing by Host, and the clusters.
pub fn sidecar(
    model: &MeshModel,
    pod: &Pod,
    placement: &SidecarPlacement,
    endpoints: &Endpoints<'_>,
) -> Result<EnvoyConfig, InputError> {
    peer_authentication::validate(&model.manifests)?;
    sidecar_scope::validate(model)?;
    let workload = Workload::of(pod);
    let scope = SidecarScope::of(model, &workload)?;
    let inbound_filters = http_filters(model, &workload, Context::SidecarInbound, vec![])?;
    let inbound_telemetry =
        telemetry::for_connection_manager(model, &workload, &Reporter::Destination { pod })?;
    let outbound_telemetry =
        telemetry::for_connection_manager(model, &workload, &Reporter::Source { pod: Some(pod) })?;
    let mut listeners = Vec::new();
    let mut clusters =
        destination_rule::outbound_clusters(model, &placement.certs, endpoints, &scope)?;
    for &port in &pod.ports {
        let mode = peer_authentication::effective_mode(&model.manifests, &workload, port);
        let filters = if model.pod_port_protocol(pod, port).is_http() {
            InboundFilters::Http {
                filters: &inbound_filters,
                telemetry: &inbound_telemetry,
            }
        } else {
            InboundFilters::Tcp(tcp::inbound_filters(model, &workload, port)?)
        };
        listeners.push(inbound_listener(placement, port, mode, &filters));
        let mut inbound = json!({
            "name": inbound_cluster_name(port),
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {"cluster_name": inbound_cluster_name(port), "endpoints": [{"lb_endpoints": [{"endpoint": {"address": pipe_address(&placement.app_socket(port))}}]}]},
        });
        // http2 and grpc ports: HTTP/2 (h2c) to the application, as Istio does.
        if model.pod_port_protocol(pod, port).h2() {
            inbound["typed_extension_protocol_options"] = destination_rule::http2_options();
        }
        clusters.push(inbound);
    }

    let outbound_filters = http_filters(model, &workload, Context::SidecarOutbound, vec![fault()])?;
    let outbound_routes = json!({
        "name": "outbound",
        "virtual_hosts": virtual_service::mesh_virtual_hosts(model, &scope, endpoints)?,
        "validate_clusters": false,
    });
    listeners.push(json!({
        "name": "virtualOutbound",
        "address": pipe_address(&placement.outbound),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [http_connection_manager("outbound_0.0.0.0", outbound_routes, outbound_filters, "SANITIZE_SET", &outbound_telemetry)]}],
    }));
    listeners.extend(tcp::outbound_listeners(model, placement, &scope));
    Ok(EnvoyConfig {
        listeners,
        clusters,
    })
}

/// What an inbound listener's chains end in: an HTTP connection manager with its filters, or
/// a TCP port's network filters (RBAC, tcp_proxy).
enum InboundFilters<'a> {
    Http {
        filters: &'a [Value],
        telemetry: &'a ConnectionManagerTelemetry,
    },
    Tcp(Vec<Value>),
}

/// One inbound listener: the filter chains `mode` allows, each ending at the app's socket.
fn inbound_listener(
    placement: &SidecarPlacement,
    port: u16,
    mode: crate::manifest::istio::MtlsMode,
    filters: &InboundFilters,
) -> Value {
    let chains = peer_authentication::chains(mode);
    let routes = json!({
        "name": inbound_cluster_name(port),
        "virtual_hosts": [{"name": format!("inbound|http|{port}"), "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": inbound_cluster_name(port), "timeout": "0s"}}]}],
    });
    let stat = format!("inbound_0.0.0.0_{port}");
    let hcm = || match filters {
        InboundFilters::Http { filters, telemetry } => vec![http_connection_manager(
            &stat,
            routes.clone(),
            filters.to_vec(),
            "APPEND_FORWARD",
            telemetry,
        )],
        InboundFilters::Tcp(network) => network.clone(),
    };
    let mut filter_chains = Vec::new();
    if chains.mtls {
        let mut chain_match = json!({"transport_protocol": "tls"});
        if chains.mtls_requires_istio_alpn {
            chain_match["application_protocols"] = json!(ISTIO_ALPNS);
        }
        filter_chains.push(json!({
            "name": "inbound-mtls",
            "filter_chain_match": chain_match,
            "filters": hcm(),
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                        "alpn_protocols": ["h2", "http/1.1"],
                        "tls_certificates": [placement.certs.tls_certificate()],
                        // Any mesh identity may connect; who may call what is RBAC's job.
                        "validation_context": {"trusted_ca": {"filename": placement.certs.ca}},
                    },
                },
            },
        }));
    }
    if chains.plaintext {
        filter_chains.push(json!({
            "name": "inbound-plaintext",
            "filter_chain_match": {"transport_protocol": "raw_buffer"},
            "filters": hcm(),
        }));
    }
    json!({
        "name": format!("virtualInbound_{port}"),
        "address": socket_address(SocketAddr::new(placement.ip, port)),
        // As Istio marks them: the inbound span is the server's, the outbound the client's.
        "traffic_direction": "INBOUND",
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": filter_chains,
    })
}

/// Translates every proxy of the mesh once with placeholder addresses, so that a manifest the
/// translator cannot handle is reported (file:line:field) before anything starts.
pub fn check(model: &MeshModel) -> Result<(), InputError> {
    struct Nowhere;
    impl GatewayPlacement for Nowhere {
        fn listen(&self, port: u16) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], port))
        }
        fn credential(&self, name: &str) -> (PathBuf, PathBuf) {
            (name.into(), name.into())
        }
    }
    let certs = CertFiles {
        ca: "ca".into(),
        chain: "chain".into(),
        key: "key".into(),
    };
    let endpoints = |_: &Pod| IpAddr::from([127, 0, 0, 1]);
    for pod in &model.pods {
        let placement = SidecarPlacement {
            ip: IpAddr::from([127, 0, 0, 1]),
            outbound: "o.sock".into(),
            app_dir: ".".into(),
            certs: certs.clone(),
        };
        sidecar(model, pod, &placement, &endpoints)?;
    }
    ingress_gateway(model, &certs, &Nowhere, &endpoints).map(|_| ())
}

/// The ingress gateway: listeners from the Gateways that select it, mTLS clusters to the mesh.
pub fn ingress_gateway(
    model: &MeshModel,
    certs: &CertFiles,
    placement: &dyn GatewayPlacement,
    endpoints: &Endpoints<'_>,
) -> Result<EnvoyConfig, InputError> {
    let workload = model.ingress.clone();
    let filters = http_filters(model, &workload, Context::Gateway, vec![fault()])?;
    let listeners = gateway::listeners(model, &workload, &filters, placement)?;
    // No Sidecar governs a gateway: it sees every service.
    let all = SidecarScope::everything(Default::default());
    let clusters = destination_rule::outbound_clusters(model, certs, endpoints, &all)?;
    Ok(EnvoyConfig {
        listeners,
        clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{certs, pyairtable_model};

    fn placement() -> SidecarPlacement {
        SidecarPlacement {
            ip: "127.0.2.1".parse().unwrap(),
            outbound: "/run/p/o.sock".into(),
            app_dir: "/run/p".into(),
            certs: certs(),
        }
    }

    fn endpoints() -> Box<Endpoints<'static>> {
        Box::new(|p: &Pod| IpAddr::from([127, 0, 1, 1 + p.ordinal as u8]))
    }

    #[test]
    fn strict_sidecar_has_only_an_mtls_chain_with_rbac() {
        let model = pyairtable_model();
        let pod = model
            .pods
            .iter()
            .find(|p| p.service == "auth-service")
            .unwrap();
        let cfg = sidecar(&model, pod, &placement(), &endpoints()).unwrap();
        let chains = cfg.listeners[0]["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(
            chains[0]["filter_chain_match"],
            json!({"transport_protocol": "tls"})
        );
        let tls = &chains[0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        let filters: Vec<&str> = chains[0]["filters"][0]["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            filters,
            ["envoy.filters.http.rbac", "envoy.filters.http.router"]
        );
        let hcm = &chains[0]["filters"][0]["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], "APPEND_FORWARD");
        assert_eq!(hcm["set_current_client_cert_details"]["uri"], true);
        assert_eq!(
            cfg.listeners.last().unwrap()["address"]["pipe"]["path"],
            "/run/p/o.sock"
        );
    }

    #[test]
    fn a_sidecars_egress_bounds_its_clusters_and_routes() {
        let other = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db, namespace: ns}\nspec:\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: ns}\nspec:\n  selector: {app: db}\n  ports: [{port: 5000, name: http}]\n---\n";
        let with_sidecar = |policy: &str| {
            format!(
                "{other}apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: svc, namespace: ns}}\nspec:\n  workloadSelector: {{labels: {{app: svc}}}}\n  egress: [{{hosts: [./db.ns.svc.cluster.local]}}]\n{policy}"
            )
        };
        let config = |yaml: &str| {
            let model = crate::translate::tests::model_of(yaml);
            let pod = model.pods.iter().find(|p| p.service == "svc").unwrap();
            sidecar(&model, pod, &placement(), &endpoints()).unwrap()
        };
        let names = |cfg: &EnvoyConfig| -> Vec<String> {
            cfg.clusters
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .filter(|n| !n.starts_with("inbound"))
                .collect()
        };
        let vhosts = |cfg: &EnvoyConfig| -> Vec<String> {
            let outbound = cfg
                .listeners
                .iter()
                .find(|l| l["name"] == "virtualOutbound")
                .unwrap();
            outbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                ["virtual_hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect()
        };
        // ALLOW_ANY: svc itself is outside the egress, reached in plaintext.
        let allow = config(&with_sidecar(""));
        assert_eq!(
            names(&allow),
            [
                "outbound|5000||db.ns.svc.cluster.local",
                "PassthroughCluster"
            ]
        );
        let passthrough = &allow.clusters[1];
        assert_eq!(passthrough["type"], "ORIGINAL_DST");
        assert!(
            passthrough.get("transport_socket").is_none(),
            "{passthrough}"
        );
        // REGISTRY_ONLY: no cluster for it, and a 502 for every host the proxy does not know.
        let only = config(&with_sidecar(
            "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        ));
        assert_eq!(names(&only), ["outbound|5000||db.ns.svc.cluster.local"]);
        assert_eq!(vhosts(&only), ["db.ns.svc.cluster.local:5000", "block_all"]);
    }

    struct Ports;
    impl GatewayPlacement for Ports {
        fn listen(&self, port: u16) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 9], port + 8000))
        }
        fn credential(&self, name: &str) -> (PathBuf, PathBuf) {
            (
                format!("/run/{name}.crt").into(),
                format!("/run/{name}.key").into(),
            )
        }
    }

    #[test]
    fn ingress_checks_jwt_then_rbac_then_rate_limits() {
        let model = pyairtable_model();
        let cfg = ingress_gateway(&model, &certs(), &Ports, &endpoints()).unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(
            cfg.listeners[0]["address"]["socket_address"]["port_value"],
            8080
        );
        let https = &cfg.listeners[1]["filter_chains"][0];
        assert_eq!(
            https["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
                ["certificate_chain"]["filename"],
            "/run/pyairtable-tls.crt"
        );
        let filters: Vec<&str> = https["filters"][0]["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.http.jwt_authn",
                "envoy.filters.http.rbac",
                "envoy.filters.http.fault",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.router"
            ]
        );
    }
}
