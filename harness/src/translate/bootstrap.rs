//! The static bootstrap of a local Envoy: admin, runtime, and the mesh's xDS server for the rest.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};

/// The files in a proxy's directory the xDS server serves it.
pub const LDS_FILE: &str = "lds.json";
pub const CDS_FILE: &str = "cds.json";

/// Istio's port for a proxy's merged Prometheus metrics (`:15090/stats/prometheus`).
pub const STATS_PORT: u16 = 15090;

/// Where a proxy's config comes from: the mesh's xDS server on a Unix socket, which serves the
/// files in the proxy's own directory.
pub struct XdsSource<'a> {
    pub socket: &'a Path,
    pub dir: &'a Path,
}

const XDS_CLUSTER: &str = "xds_rest";

/// The static cluster a proxy reports spans to (Envoy's Zipkin tracer wants its collector
/// cluster at start-up, so it is in the bootstrap, as Istio's bootstrap had it).
pub const ZIPKIN_CLUSTER: &str = "zipkin";

/// LDS and CDS come over REST from `xds` (long polls: the server holds a request until the
/// config changes). The admin API listens on the Unix socket `admin` (mode 0600, in the
/// private run directory), never on TCP; `stats` (the pod address at [`STATS_PORT`]) serves
/// only `GET /stats/prometheus` from it, as Istio's sidecars do, so Prometheus can scrape
/// without reaching the admin API.
pub fn bootstrap(
    node_id: &str,
    cluster: &str,
    admin: &Path,
    xds: &XdsSource,
    stats: SocketAddr,
    collector: Option<SocketAddr>,
) -> Value {
    let source = json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [XDS_CLUSTER],
            "refresh_delay": "0.01s",
            "request_timeout": "30s",
        },
    });
    let mut statics = stats_listener(admin, stats);
    statics["clusters"].as_array_mut().expect("clusters").push(json!({
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": xds.socket}}}}]}]},
    }));
    if let Some(at) = collector {
        statics["clusters"].as_array_mut().expect("clusters").push(json!({
            "name": ZIPKIN_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": ZIPKIN_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": at.ip().to_string(), "port_value": at.port()}}}}]}]},
        }));
    }
    json!({
        "node": {"id": node_id, "cluster": cluster, "metadata": {"xds_dir": xds.dir}},
        "admin": {"address": {"pipe": {"path": admin, "mode": 0o600}}},
        "dynamic_resources": {"lds_config": source, "cds_config": source},
        "static_resources": statics,
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000,
            },
        }]},
        "layered_runtime": {"layers": [
            // Spans reach the collector within a second (Envoy's default batch waits 5 s).
            {"name": "static", "static_layer": {"tracing.zipkin.flush_interval_ms": 1000}},
            // Chaos and tests flip runtime keys (e.g. fault percentages) through /runtime_modify.
            {"name": "admin", "admin_layer": {}},
        ]},
    })
}

/// The read-only metrics listener and the cluster that reaches the admin socket.
fn stats_listener(admin: &Path, at: SocketAddr) -> Value {
    let route = json!({
        "match": {"path": "/stats/prometheus", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "route": {"cluster": "prometheus_stats"},
    });
    json!({
        "listeners": [{
            "name": "prometheus_stats",
            "address": {"socket_address": {"address": at.ip().to_string(), "port_value": at.port()}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "prometheus_stats",
                    "route_config": {"virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": [route]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }],
        "clusters": [{
            "name": "prometheus_stats",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "prometheus_stats", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": admin}}}}]}]},
        }],
    })
}
