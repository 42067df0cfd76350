//! VirtualService -> Envoy routes: matches, weighted_clusters, timeouts, retries and per-route
//! fault injection (envoy.filters.http.fault), for sidecars (gateways: mesh) and gateways.

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::istio::{
    Fault, HttpRoute, OutboundMode, Retries, StringMatch, VirtualServiceSpec,
};
use crate::manifest::{Origin, Resource};
use crate::model::{MeshModel, Service};

use super::destination_rule::{cluster_name, hash_policy};
use super::sidecar_scope::{self, SidecarScope};
use super::{Endpoints, duration, route_actions};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// Does a VirtualService bind to the sidecars (no gateways, or "mesh")?
pub fn binds_mesh(vs: &VirtualServiceSpec) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
}

/// Does a VirtualService in `vs_namespace` bind to gateway `name` in `gw_namespace`?
pub fn binds_gateway(
    vs: &VirtualServiceSpec,
    vs_namespace: &str,
    name: &str,
    gw_namespace: &str,
) -> bool {
    vs.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, n)) => ns == gw_namespace && n == name,
        None => g == name && vs_namespace == gw_namespace,
    })
}

/// The outbound virtual hosts of a sidecar: one per service port, reachable by every name
/// Kubernetes DNS gives the service from the sidecar's namespace (with the port; without it for
/// the service's first port), routed by the mesh VirtualService for it or straight to its
/// cluster. A port outside the sidecar's `scope` goes to the PassthroughCluster (ALLOW_ANY) or
/// nowhere, with REGISTRY_ONLY's 502 for every host the proxy does not know.
pub fn mesh_virtual_hosts(
    model: &MeshModel,
    scope: &SidecarScope,
    endpoints: &Endpoints<'_>,
) -> Result<Vec<Value>, InputError> {
    let mut hosts = Vec::new();
    for service in &model.services {
        let vs = mesh_virtual_service(model, service);
        for (i, port) in service.ports.iter().enumerate() {
            let routes = if !scope.sees(service, port.port) {
                if scope.mode == OutboundMode::RegistryOnly {
                    continue;
                }
                match sidecar_scope::passthrough_route(model, service, port, endpoints) {
                    Some(route) => vec![route],
                    None => continue,
                }
            } else {
                match vs {
                    Some(vs) => routes(model, vs, Some(port.port))?,
                    None => vec![default_route(model, service, port.port)?],
                }
            };
            // The bare name only for the proxy's own namespace, as Istio (and Kubernetes DNS)
            // resolve it: two namespaces may each have a service of that name.
            let short = scope.by_short_name(service).then(|| service.name.clone());
            let names = [
                format!("{}.{}", service.name, service.namespace),
                format!("{}.{}.svc", service.name, service.namespace),
                service.fqdn(),
            ];
            let domains: Vec<String> = short
                .iter()
                .chain(&names)
                .flat_map(|n| {
                    let with_port = format!("{n}:{}", port.port);
                    if i == 0 {
                        vec![n.clone(), with_port]
                    } else {
                        vec![with_port]
                    }
                })
                .collect();
            hosts.push(json!({"name": format!("{}:{}", service.fqdn(), port.port), "domains": domains, "routes": routes}));
        }
    }
    if scope.mode == OutboundMode::RegistryOnly {
        hosts.push(sidecar_scope::block_all_virtual_host());
    }
    Ok(hosts)
}

/// Destinations of VirtualService routes that Istio would accept but no traffic can reach (a
/// host without a Service, a subset no DestinationRule declares): istioctl analyze's warnings,
/// printed when the mesh starts.
pub fn dangling_references(model: &MeshModel) -> Vec<String> {
    let mut out = Vec::new();
    for vs in &model.manifests.virtual_services {
        for (i, http) in vs.spec.http.iter().enumerate() {
            for (j, rd) in http.route.iter().enumerate() {
                let at = format!(
                    "{}:{}: VirtualService {} spec.http[{i}].route[{j}].destination",
                    vs.origin.file.display(),
                    vs.origin.line,
                    vs.name()
                );
                let Some(service) = model.resolve_host(&rd.destination.host, vs.namespace()) else {
                    out.push(format!(
                        "{at}: no Service {} in the mesh: its requests will get 503 (no cluster)",
                        rd.destination.host
                    ));
                    continue;
                };
                if let Some(subset) = &rd.destination.subset {
                    let declared = model.manifests.destination_rules.iter().any(|r| {
                        model.resolve_host(&r.spec.host, r.namespace()) == Some(service)
                            && r.spec.subsets.iter().any(|s| &s.name == subset)
                    });
                    if !declared {
                        out.push(format!(
                            "{at}: no DestinationRule declares subset {subset} of {}: its requests will get 503 (no cluster)",
                            service.name
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The VirtualService that routes the sidecars' traffic to `service`, if any.
pub fn mesh_virtual_service<'a>(
    model: &'a MeshModel,
    service: &Service,
) -> Option<&'a Resource<VirtualServiceSpec>> {
    model.manifests.virtual_services.iter().find(|vs| {
        binds_mesh(&vs.spec)
            && vs
                .spec
                .hosts
                .iter()
                .any(|h| model.resolve_host(h, vs.namespace()) == Some(service))
    })
}

/// The virtual hosts a gateway serves: every VirtualService bound to it.
pub fn gateway_virtual_hosts(
    model: &MeshModel,
    gateway: &str,
    gw_namespace: &str,
) -> Result<Vec<Value>, InputError> {
    // One virtual host per host name: Envoy refuses a domain in two virtual hosts, and Istio
    // merges the routes of every VirtualService (or HTTPRoute) for a host, in order.
    let mut hosts: Vec<(String, Vec<String>, Vec<Value>)> = Vec::new();
    for vs in &model.manifests.virtual_services {
        if !binds_gateway(&vs.spec, vs.namespace(), gateway, gw_namespace) {
            continue;
        }
        if vs.spec.hosts.is_empty() {
            return Err(vs
                .origin
                .error("spec.hosts", "a VirtualService needs at least one host"));
        }
        let name = format!("{}/{}", vs.namespace(), vs.name());
        let routes = routes(model, vs, None)?;
        for host in &vs.spec.hosts {
            let host = host.rsplit_once('/').map_or(host.as_str(), |(_, h)| h);
            match hosts.iter_mut().find(|(h, _, _)| h == host) {
                Some((_, names, r)) => {
                    names.push(name.clone());
                    r.extend(routes.iter().cloned());
                }
                None => hosts.push((host.to_string(), vec![name.clone()], routes.clone())),
            }
        }
    }
    Ok(hosts
        .into_iter()
        .map(|(host, names, routes)| {
            json!({"name": names.join(","), "domains": [host], "routes": routes})
        })
        .collect())
}

fn default_route(model: &MeshModel, service: &Service, port: u16) -> Result<Value, InputError> {
    let mut route = json!({
        "name": "default",
        "match": {"prefix": "/"},
        "route": {"cluster": cluster_name(service, port, None), "timeout": "0s", "retry_policy": default_retry_policy()},
    });
    if let Some(h) = hash_policy(model, service, None)? {
        route["route"]["hash_policy"] = h;
    }
    Ok(route)
}

/// Istio's retry policy when a route says nothing about retries (no retriable status codes
/// since Istio 1.27: a 503 is not retried by default).
pub fn default_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 5,
    })
}

/// All Envoy routes of one VirtualService, in order (first match wins, as in Istio). For a
/// sidecar's virtual host, `port` is its service port (the default for destinations naming none).
pub fn routes(
    model: &MeshModel,
    vs: &Resource<VirtualServiceSpec>,
    port: Option<u16>,
) -> Result<Vec<Value>, InputError> {
    let mut out = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let redirect = route_actions::redirect(http, &vs.origin, &field)?;
        let action = match &redirect {
            Some(_) => Value::Null,
            None => {
                let mut a = route_action(model, vs, http, &field, port)?;
                route_actions::decorate_action(model, vs, http, &field, &mut a)?;
                a
            }
        };
        let fault = http
            .fault
            .as_ref()
            .map(|f| fault_config(f, &vs.origin, &field))
            .transpose()?;
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}", vs.name(), i));
        let matches = if http.matches.is_empty() {
            vec![json!({"prefix": "/"})]
        } else {
            http.matches
                .iter()
                .enumerate()
                // A match on another port than this virtual host's never applies here.
                .filter(|(_, m)| m.port.is_none() || port.is_none() || m.port == port)
                .map(|(j, m)| route_match(m, &vs.origin, &format!("{field}.match[{j}]")))
                .collect::<Result<_, _>>()?
        };
        for m in matches {
            let mut r = match &redirect {
                Some(rd) => json!({"name": name, "match": m, "redirect": rd}),
                None => json!({"name": name, "match": m, "route": action}),
            };
            route_actions::decorate_route(http, &vs.origin, &field, &mut r)?;
            if let Some(f) = &fault {
                r["typed_per_filter_config"][FAULT_FILTER] = f.clone();
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn route_match(
    m: &crate::manifest::istio::HttpMatch,
    origin: &Origin,
    field: &str,
) -> Result<Value, InputError> {
    let mut out = match &m.uri {
        None => json!({"prefix": "/"}),
        Some(StringMatch::Exact(p)) => json!({"path": p}),
        Some(StringMatch::Prefix(p)) => json!({"prefix": p}),
        Some(StringMatch::Regex(r)) => json!({"safe_regex": {"regex": r}}),
        Some(StringMatch::PathSeparatedPrefix(p)) => json!({"path_separated_prefix": p}),
    };
    let mut headers: Vec<Value> = Vec::new();
    for (name, sm) in &m.headers {
        if name.is_empty() {
            return Err(origin.error(&format!("{field}.headers"), "empty header name"));
        }
        headers.push(json!({"name": name, "string_match": string_match(sm)}));
    }
    if let Some(method) = &m.method {
        headers.push(json!({"name": ":method", "string_match": string_match(method)}));
    }
    if let Some(authority) = &m.authority {
        headers.push(json!({"name": ":authority", "string_match": string_match(authority)}));
    }
    if !headers.is_empty() {
        out["headers"] = Value::Array(headers);
    }
    if !m.query_params.is_empty() {
        out["query_parameters"] = m
            .query_params
            .iter()
            .map(|(name, sm)| json!({"name": name, "string_match": string_match(sm)}))
            .collect();
    }
    if m.ignore_uri_case {
        out["case_sensitive"] = json!(false);
    }
    Ok(out)
}

fn string_match(m: &StringMatch) -> Value {
    match m {
        StringMatch::Exact(v) => json!({"exact": v}),
        StringMatch::Prefix(v) | StringMatch::PathSeparatedPrefix(v) => json!({"prefix": v}),
        StringMatch::Regex(v) => json!({"safe_regex": {"regex": v}}),
    }
}

fn route_action(
    model: &MeshModel,
    vs: &Resource<VirtualServiceSpec>,
    http: &HttpRoute,
    field: &str,
    vhost_port: Option<u16>,
) -> Result<Value, InputError> {
    if http.route.is_empty() {
        return Err(vs.origin.error(
            &format!("{field}.route"),
            "an HTTP route needs at least one destination",
        ));
    }
    let mut clusters = Vec::new();
    // The first destination's consistent hash, if its DestinationRule declares one.
    let mut hashed = None;
    for (j, rd) in http.route.iter().enumerate() {
        let f = format!("{field}.route[{j}].destination");
        let Some(service) = model.resolve_host(&rd.destination.host, vs.namespace()) else {
            // Istio accepts a route to a host it has no service for; Envoy then answers 503
            // (no cluster). `dangling_references` warns about it.
            let port = rd.destination.port.as_ref().map_or(80, |p| p.number);
            let subset = rd.destination.subset.as_deref().unwrap_or("");
            clusters.push((
                format!("outbound|{port}|{subset}|{}", rd.destination.host),
                rd.weight,
            ));
            continue;
        };
        let port = match (&rd.destination.port, vhost_port) {
            (Some(p), _) => service.port(p.number).map(|p| p.port).ok_or_else(|| {
                vs.origin.error(
                    &format!("{f}.port.number"),
                    format!("{} has no port {}", service.name, p.number),
                )
            })?,
            (None, _) if service.ports.len() == 1 => service.default_port().port,
            // A sidecar route keeps the port it was called on when the destination names none.
            (None, Some(p)) if service.port(p).is_some() => p,
            (None, _) => {
                return Err(vs.origin.error(
                    &format!("{f}.port"),
                    format!("{} has several ports: name one", service.name),
                ));
            }
        };
        // A subset no DestinationRule declares names a cluster that does not exist: Envoy
        // answers 503, as in Istio (which accepts the route); `dangling_references` warns.
        if hashed.is_none() {
            hashed = hash_policy(model, service, rd.destination.subset.as_deref())?;
        }
        clusters.push((
            cluster_name(service, port, rd.destination.subset.as_deref()),
            rd.weight,
        ));
    }
    let mut action = if clusters.len() == 1 && clusters[0].1.is_none_or(|w| w == 100) {
        json!({"cluster": clusters[0].0})
    } else {
        let weighted: Vec<Value> = clusters
            .iter()
            .map(|(n, w)| json!({"name": n, "weight": w.unwrap_or(0)}))
            .collect();
        if weighted.iter().all(|w| w["weight"] == 0) {
            return Err(vs.origin.error(
                &format!("{field}.route"),
                "weights of several destinations must not all be zero",
            ));
        }
        json!({"weighted_clusters": {"clusters": weighted}})
    };
    let timeout = match &http.timeout {
        None => "0s".to_string(),
        Some(t) => duration::envoy(duration::parse(t).ok_or_else(|| {
            vs.origin.error(
                &format!("{field}.timeout"),
                format!("`{t}` is not a duration"),
            )
        })?),
    };
    action["timeout"] = json!(timeout);
    if let Some(h) = hashed {
        action["hash_policy"] = h;
    }
    match &http.retries {
        None => action["retry_policy"] = default_retry_policy(),
        Some(r) => {
            if let Some(policy) = retry_policy(r, &vs.origin, &format!("{field}.retries"))? {
                action["retry_policy"] = policy;
            }
        }
    }
    Ok(action)
}

fn retry_policy(r: &Retries, origin: &Origin, field: &str) -> Result<Option<Value>, InputError> {
    let attempts = r.attempts.unwrap_or(2);
    if attempts == 0 {
        return Ok(None);
    }
    let mut policy = default_retry_policy();
    policy["num_retries"] = json!(attempts);
    if let Some(on) = &r.retry_on {
        // Istio moves numeric entries to retriable_status_codes.
        let (codes, names): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .partition(|p| p.parse::<u16>().is_ok());
        let mut names: Vec<&str> = names;
        let codes: Vec<u16> = codes
            .iter()
            .map(|c| c.parse().expect("partitioned on parse"))
            .collect();
        if !codes.is_empty() && !names.contains(&"retriable-status-codes") {
            names.push("retriable-status-codes");
        }
        policy["retry_on"] = json!(names.join(","));
        policy["retriable_status_codes"] = json!(codes);
    }
    if let Some(t) = &r.per_try_timeout {
        let d = duration::parse(t).ok_or_else(|| {
            origin.error(
                &format!("{field}.perTryTimeout"),
                format!("`{t}` is not a duration"),
            )
        })?;
        policy["per_try_timeout"] = json!(duration::envoy(d));
    }
    Ok(Some(policy))
}

/// Istio percentages are 0-100 floats; Envoy's FractionalPercent out of a MILLION keeps 0.5%
/// exact. Istio truncates (`uint32(value * 10000)`), and a fault without a percentage injects
/// into no request at all (istio/istio#36303): so do we.
fn fraction(
    p: Option<&crate::manifest::istio::Percent>,
    origin: &Origin,
    field: &str,
) -> Result<Value, InputError> {
    let value = p.map(|p| p.value).unwrap_or(0.0);
    if !(0.0..=100.0).contains(&value) {
        return Err(origin.error(field, format!("percentage {value} is outside 0..100")));
    }
    Ok(json!({"numerator": (value * 10_000.0) as u64, "denominator": "MILLION"}))
}

fn fault_config(f: &Fault, origin: &Origin, field: &str) -> Result<Value, InputError> {
    let mut cfg = json!({"@type": FAULT_TYPE});
    if let Some(d) = &f.delay {
        let fd = duration::parse(&d.fixed_delay).ok_or_else(|| {
            origin.error(
                &format!("{field}.fault.delay.fixedDelay"),
                format!("`{}` is not a duration", d.fixed_delay),
            )
        })?;
        cfg["delay"] = json!({
            "fixed_delay": duration::envoy(fd),
            "percentage": fraction(d.percentage.as_ref(), origin, &format!("{field}.fault.delay.percentage"))?,
        });
    }
    if let Some(a) = &f.abort {
        if !(200..600).contains(&a.http_status) {
            return Err(origin.error(
                &format!("{field}.fault.abort.httpStatus"),
                format!("{} is not an HTTP status", a.http_status),
            ));
        }
        cfg["abort"] = json!({
            "http_status": a.http_status,
            "percentage": fraction(a.percentage.as_ref(), origin, &format!("{field}.fault.abort.percentage"))?,
        });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::pyairtable_model;

    fn edge_routes() -> Vec<Value> {
        let model = pyairtable_model();
        let hosts = gateway_virtual_hosts(&model, "pyairtable-gateway", "pyairtable").unwrap();
        assert_eq!(hosts.len(), 1);
        hosts[0]["routes"].as_array().unwrap().clone()
    }

    #[test]
    fn canary_weights_become_weighted_clusters() {
        let routes = edge_routes();
        let default = routes.iter().find(|r| r["name"] == "default").unwrap();
        assert_eq!(
            default["route"]["weighted_clusters"]["clusters"],
            json!([
                {"name": "outbound|8080|stable|api-gateway.pyairtable.svc.cluster.local", "weight": 90},
                {"name": "outbound|8080|canary|api-gateway.pyairtable.svc.cluster.local", "weight": 10},
            ])
        );
        assert_eq!(default["route"]["timeout"], "30s");
        assert_eq!(default["route"]["retry_policy"]["num_retries"], 3);
        assert_eq!(default["route"]["retry_policy"]["per_try_timeout"], "10s");
        assert_eq!(
            default["route"]["retry_policy"]["retry_on"],
            "gateway-error,connect-failure,refused-stream"
        );
    }

    #[test]
    fn fault_only_on_the_chaos_header_route() {
        let routes = edge_routes();
        let chaos = &routes[0];
        assert_eq!(
            chaos["match"]["headers"][0],
            json!({"name": "x-chaos-test", "string_match": {"exact": "enabled"}})
        );
        let fault = &chaos["typed_per_filter_config"][FAULT_FILTER];
        assert_eq!(
            fault["delay"],
            json!({"fixed_delay": "2s", "percentage": {"numerator": 10000, "denominator": "MILLION"}})
        );
        assert_eq!(
            fault["abort"],
            json!({"http_status": 503, "percentage": {"numerator": 5000, "denominator": "MILLION"}})
        );
        assert!(
            routes[1..]
                .iter()
                .all(|r| r.get("typed_per_filter_config").is_none())
        );
    }

    #[test]
    fn mesh_hosts_cover_every_dns_name() {
        let model = pyairtable_model();
        let hosts = crate::translate::tests::all_virtual_hosts(&model);
        let auth = hosts
            .iter()
            .find(|h| h["name"] == "auth-service.pyairtable.svc.cluster.local:8080")
            .unwrap();
        let domains: Vec<&str> = auth["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert!(domains.contains(&"auth-service") && domains.contains(&"auth-service:8080"));
        assert_eq!(auth["routes"][0]["route"]["retry_policy"]["num_retries"], 2);
        let llm = hosts
            .iter()
            .find(|h| h["name"] == "llm-orchestrator.pyairtable.svc.cluster.local:8080")
            .unwrap();
        assert_eq!(llm["routes"][0]["route"]["timeout"], "120s");
    }

    #[test]
    fn retry_on_status_codes_and_zero_attempts() {
        let origin = Origin {
            file: "t".into(),
            line: 1,
        };
        let p = retry_policy(
            &Retries {
                attempts: Some(3),
                per_try_timeout: None,
                retry_on: Some("5xx,503".into()),
            },
            &origin,
            "r",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p["retry_on"], "5xx,retriable-status-codes");
        assert_eq!(p["retriable_status_codes"], json!([503]));
        assert!(
            retry_policy(
                &Retries {
                    attempts: Some(0),
                    ..Default::default()
                },
                &origin,
                "r"
            )
            .unwrap()
            .is_none()
        );
    }
}
