//! TCP ports (tcp, tls, mongo, mysql, redis): inbound chains end in network RBAC and tcp_proxy
//! instead of an HTTP connection manager, and each sidecar gets an outbound listener per TCP
//! service port (Istio's per-address:port outbound listeners).

use serde_json::{Value, json};

use crate::error::InputError;
use crate::model::{MeshModel, Protocol, Workload};

use super::authorization_policy::rbac_network_filters;
use super::destination_rule::cluster_name;
use super::proxy::{SidecarPlacement, inbound_cluster_name};
use super::sidecar_scope::{SidecarScope, passthrough_tcp_cluster_name};
use crate::manifest::istio::OutboundMode;

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix,
        "cluster": cluster,
    }})
}

/// The network filters of an inbound TCP port: RBAC (DENY, ALLOW), then the app.
pub fn inbound_filters(
    model: &MeshModel,
    workload: &Workload,
    port: u16,
) -> Result<Vec<Value>, InputError> {
    let mut filters = rbac_network_filters(&model.manifests, workload, port)?;
    filters.push(tcp_proxy(
        &format!("inbound_0.0.0.0_{port}"),
        &inbound_cluster_name(port),
    ));
    Ok(filters)
}

/// One listener per TCP service port of the mesh, on its own socket.
/// A port outside the sidecar's `scope` goes to its PassthroughCluster stand-in (ALLOW_ANY) or
/// has no listener (REGISTRY_ONLY: the connection is refused).
pub fn outbound_listeners(
    model: &MeshModel,
    placement: &SidecarPlacement,
    scope: &SidecarScope,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, service) in model.services.iter().enumerate() {
        for port in service.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let cluster = if scope.sees(service, port.port) {
                cluster_name(service, port.port, None)
            } else if scope.mode == OutboundMode::AllowAny {
                passthrough_tcp_cluster_name(service, port.port)
            } else {
                continue;
            };
            out.push(json!({
                "name": format!("outbound_tcp_{}_{}", service.fqdn(), port.port),
                "address": {"pipe": {"path": placement.tcp_outbound_socket(i, port.port)}},
                "filter_chains": [{"filters": [tcp_proxy(&cluster, &cluster)]}],
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{certs, model_of};
    use serde_json::json;

    const REDIS: &str = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: cache, namespace: ns}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cache, namespace: ns}\nspec:\n  selector: {matchLabels: {app: cache}}\n  template:\n    metadata: {labels: {app: cache}}\n    spec: {serviceAccountName: cache, containers: [{name: redis, image: redis}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cache, namespace: ns}\nspec:\n  selector: {app: cache}\n  ports: [{port: 6379, name: tcp-redis}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: cache, namespace: ns}\nspec:\n  selector: {matchLabels: {app: cache}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/ns/sa/sa]}}]\n  - to: [{operation: {paths: [/admin]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: ns}\nspec:\n  selector: {matchLabels: {app: cache}}\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [other]}}]\n    to: [{operation: {methods: [DELETE]}}]\n";

    #[test]
    fn a_tcp_port_ends_in_network_rbac_and_tcp_proxy_with_istios_tcp_reading() {
        let model = model_of(REDIS);
        let pod = model.pods.iter().find(|p| p.service == "cache").unwrap();
        let placement = SidecarPlacement {
            ip: "127.0.3.1".parse().unwrap(),
            outbound: "/run/p/o.sock".into(),
            app_dir: "/run/p".into(),
            certs: certs(),
        };
        let endpoints = |_: &crate::model::Pod| std::net::IpAddr::from([127, 0, 0, 1]);
        let cfg = crate::translate::proxy::sidecar(&model, pod, &placement, &endpoints).unwrap();
        let filters = &cfg.listeners[0]["filter_chains"][0]["filters"];
        let names: Vec<&str> = filters
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.network.rbac",
                "envoy.filters.network.rbac",
                "envoy.filters.network.tcp_proxy"
            ]
        );
        // DENY keeps the rule without its HTTP-only method: it denies namespace `other` outright.
        let deny =
            &filters[0]["typed_config"]["rules"]["policies"]["ns[ns]-policy[no-admin]-rule[0]"];
        assert_eq!(
            deny["permissions"],
            json!([{"or_rules": {"rules": [{"any": true}]}}])
        );
        // ALLOW drops the rule that needs a path.
        let allow = &filters[1]["typed_config"]["rules"]["policies"];
        assert!(allow.get("ns[ns]-policy[cache]-rule[0]").is_some());
        assert!(allow.get("ns[ns]-policy[cache]-rule[1]").is_none());
        // Every sidecar gets an outbound listener for the TCP port.
        let out = cfg.listeners.last().unwrap();
        assert_eq!(
            out["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
            "outbound|6379||cache.ns.svc.cluster.local"
        );
        assert!(
            out["address"]["pipe"]["path"]
                .as_str()
                .unwrap()
                .ends_with("-6379.sock")
        );
    }

    #[test]
    fn protocols_are_selected_as_istio_selects_them() {
        use crate::model::Protocol::*;
        for (name, app, want) in [
            (Some("grpc-catalog"), None, Grpc),
            (Some("tcp-redis"), None, Tcp),
            (Some("http2"), None, Http2),
            (Some("grpc-web"), None, Http),
            (Some("HTTP-web"), None, Http),
            (Some("redis"), None, Tcp),
            (Some("api"), Some("grpc"), Grpc),
            (Some("web"), Some("kubernetes.io/h2c"), Http2),
            (None, None, Detected),
            (Some("metrics"), None, Detected),
        ] {
            assert_eq!(Protocol::select(name, app), Some(want), "{name:?} {app:?}");
        }
    }
}
