//! Gateway -> the ingress gateway's listeners: one per server port, plain HTTP or HTTPS with
//! SIMPLE TLS, routing by the VirtualServices bound to the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::Resource;
use crate::manifest::istio::GatewaySpec;
use crate::model::{MeshModel, Workload, labels_match};

use super::proxy::http_connection_manager;
use super::telemetry::{self, Reporter};
use super::virtual_service;

/// Where a Gateway server's port listens locally, and the server certificate for a
/// `credentialName` (the local stand-in for the Kubernetes TLS secret).
pub trait GatewayPlacement {
    fn listen(&self, port: u16) -> SocketAddr;
    fn credential(&self, name: &str) -> (PathBuf, PathBuf);
}

/// The Gateways that select a workload.
pub fn gateways_for<'a>(
    model: &'a MeshModel,
    workload: &'a Workload,
) -> impl Iterator<Item = &'a Resource<GatewaySpec>> + 'a {
    model.manifests.gateways.iter().filter(move |g| {
        !g.spec.selector.is_empty() && labels_match(&g.spec.selector, &workload.labels)
    })
}

pub fn listeners(
    model: &MeshModel,
    workload: &Workload,
    http_filters: &[Value],
    placement: &dyn GatewayPlacement,
) -> Result<Vec<Value>, InputError> {
    let mut listeners = Vec::new();
    let mut seen_ports = Vec::new();
    let telemetry =
        telemetry::for_connection_manager(model, workload, &Reporter::Source { pod: None })?;
    for gw in gateways_for(model, workload) {
        let hosts = virtual_service::gateway_virtual_hosts(model, gw.name(), gw.namespace())?;
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let port = server.port.number;
            if seen_ports.contains(&port) {
                return Err(gw.origin.error(
                    &format!("{field}.port.number"),
                    format!("port {port} is already served"),
                ));
            }
            seen_ports.push(port);
            let addr = placement.listen(port);
            let stat = format!("outbound_0.0.0.0_{port}");
            let route_config = json!({"name": format!("http.{port}"), "virtual_hosts": hosts, "validate_clusters": false});
            let hcm = http_connection_manager(
                &stat,
                route_config,
                http_filters.to_vec(),
                "SANITIZE_SET",
                &telemetry,
            );
            let mut chain = json!({"filters": [hcm]});
            match (server.port.protocol.as_str(), &server.tls) {
                ("HTTP", None) => {}
                ("HTTPS", Some(tls)) if tls.mode == "SIMPLE" => {
                    let credential = tls.credential_name.as_deref().ok_or_else(|| {
                        gw.origin.error(
                            &format!("{field}.tls.credentialName"),
                            "SIMPLE TLS needs a credentialName",
                        )
                    })?;
                    let (chain_file, key_file) = placement.credential(credential);
                    chain["transport_socket"] = json!({
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "common_tls_context": {
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificates": [{"certificate_chain": {"filename": chain_file}, "private_key": {"filename": key_file}}],
                            },
                        },
                    });
                }
                ("HTTPS", Some(tls)) => {
                    return Err(gw.origin.error(
                        &format!("{field}.tls.mode"),
                        format!("{} is not supported (SIMPLE)", tls.mode),
                    ));
                }
                (p, _) => {
                    return Err(gw.origin.error(
                        &format!("{field}.port.protocol"),
                        format!("{p} is not supported (HTTP, or HTTPS with tls)"),
                    ));
                }
            }
            listeners.push(json!({
                "name": format!("0.0.0.0_{port}"),
                "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
                "filter_chains": [chain],
            }));
        }
    }
    Ok(listeners)
}
