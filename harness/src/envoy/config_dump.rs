//! Envoy's `/config_dump`: the routes a proxy really has, whether they came inline in a
//! listener (the embedded mesh) or over RDS (istiod).

use std::time::Duration;

use serde_json::Value;

/// One route as the proxy holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub route_config: String,
    pub virtual_host: String,
    pub domains: Vec<String>,
    pub name: String,
    /// The route action's timeout (`None` when the route has no `route` action).
    pub timeout: Option<Duration>,
    pub raw: Value,
}

/// Every route of every route configuration in a config dump, in order.
pub fn routes(dump: &Value) -> Vec<Route> {
    let mut configs: Vec<&Value> = Vec::new();
    for section in dump["configs"].as_array().into_iter().flatten() {
        for rc in section["dynamic_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            configs.push(&rc["route_config"]);
        }
        for rc in section["static_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            configs.push(&rc["route_config"]);
        }
        for l in section["dynamic_listeners"]
            .as_array()
            .into_iter()
            .flatten()
        {
            inline_route_configs(&l["active_state"]["listener"], &mut configs);
        }
        for l in section["static_listeners"].as_array().into_iter().flatten() {
            inline_route_configs(&l["listener"], &mut configs);
        }
    }
    let mut out = Vec::new();
    for rc in configs {
        let rc_name = rc["name"].as_str().unwrap_or_default();
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let domains = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect::<Vec<_>>();
            for r in vh["routes"].as_array().into_iter().flatten() {
                out.push(Route {
                    route_config: rc_name.to_string(),
                    virtual_host: vh["name"].as_str().unwrap_or_default().to_string(),
                    domains: domains.clone(),
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    timeout: r["route"]
                        .get("timeout")
                        .and_then(Value::as_str)
                        .and_then(parse_duration)
                        .or_else(|| r.get("route").map(|_| Duration::from_secs(15))),
                    raw: r.clone(),
                });
            }
        }
    }
    out
}

fn inline_route_configs<'a>(listener: &'a Value, out: &mut Vec<&'a Value>) {
    for chain in listener["filter_chains"].as_array().into_iter().flatten() {
        for f in chain["filters"].as_array().into_iter().flatten() {
            let rc = &f["typed_config"]["route_config"];
            if rc.is_object() {
                out.push(rc);
            }
        }
    }
}

/// A proto3 JSON duration ("30s", "0.500s"), read by meshtest's one duration parser.
pub fn parse_duration(text: &str) -> Option<Duration> {
    meshtest_load::duration::parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_inline_and_rds_routes() {
        let dump = json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
                {"name": "l", "active_state": {"listener": {"filter_chains": [{"filters": [{"typed_config": {"route_config": {
                    "name": "http.8080", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
                        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "30s"}},
                        {"name": "noto", "match": {"prefix": "/"}, "route": {"cluster": "c"}},
                        {"name": "redirect", "match": {"prefix": "/"}, "redirect": {}},
                    ]}]}}}]}]}}}
            ]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [
                {"route_config": {"name": "8080", "virtual_hosts": [{"name": "svc:8080", "domains": ["svc"], "routes": [
                    {"name": "r", "route": {"cluster": "c", "timeout": "0.500s"}}]}]}}
            ]},
        ]});
        let routes = routes(&dump);
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[0].timeout, Some(Duration::from_secs(30)));
        // Envoy's default route timeout when none is set.
        assert_eq!(routes[1].timeout, Some(Duration::from_secs(15)));
        assert_eq!(routes[2].timeout, None);
        assert_eq!(routes[3].timeout, Some(Duration::from_millis(500)));
        assert_eq!(routes[3].domains, ["svc"]);
    }
}
