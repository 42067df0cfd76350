//! The static bootstrap of a local Envoy: admin, runtime, and filesystem xDS for the rest.

use std::path::Path;

use serde_json::{Value, json};

pub const LDS_FILE: &str = "lds.json";
pub const CDS_FILE: &str = "cds.json";

/// Envoy reloads LDS/CDS when a file in `xds_dir` is replaced by a rename. The admin API
/// listens on the Unix socket `admin` (mode 0600, in the private run directory), never on TCP.
pub fn bootstrap(node_id: &str, cluster: &str, admin: &Path, xds_dir: &Path) -> Value {
    let source = |file: &str| {
        json!({
            "resource_api_version": "V3",
            "path_config_source": {"path": xds_dir.join(file), "watched_directory": {"path": xds_dir}},
        })
    };
    json!({
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": {"pipe": {"path": admin, "mode": 0o600}}},
        "dynamic_resources": {"lds_config": source(LDS_FILE), "cds_config": source(CDS_FILE)},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000,
            },
        }]},
        "layered_runtime": {"layers": [
            // Chaos and tests flip runtime keys (e.g. fault percentages) through /runtime_modify.
            {"name": "admin", "admin_layer": {}},
        ]},
    })
}
