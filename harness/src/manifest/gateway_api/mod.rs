//! Kubernetes Gateway API (`gateway.networking.k8s.io`) Gateway, HTTPRoute and GRPCRoute, converted the way
//! istiod converts them: into an internal Istio Gateway selecting the Gateway's own deployment
//! (`gateway.networking.k8s.io/gateway-name: NAME`) and a VirtualService per HTTPRoute, with
//! one route per match sorted by the Gateway API's precedence and PathPrefix matched on path
//! segments. What is not converted is refused with file:line, never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Resource;

mod grpc;
use super::istio::{
    Destination, GatewayPort, GatewayServer, GatewaySpec, HttpMatch, HttpRoute, PortSelector,
    RouteDestination, ServerTls, StringMatch, VirtualServiceSpec,
};
use crate::error::InputError;
pub use grpc::{GrpcRouteSpec, grpc_route};

/// The label Istio puts on the deployment it runs for a Gateway API Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The GatewayClass istiod implements for ingress.
pub const ISTIO_CLASS: &str = "istio";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sGatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    /// Where the gateway's Service is reachable; the embedded mesh gives it its own address.
    #[serde(default)]
    pub addresses: Vec<serde_json::Value>,
    /// Labels and annotations for the generated resources: scheduling, not routing.
    #[serde(default)]
    pub infrastructure: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub allowed_routes: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ObjectRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default = "path_prefix", rename = "type")]
    pub kind: String,
    #[serde(default = "root")]
    pub value: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}

fn root() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default = "exact", rename = "type")]
    pub kind: String,
    pub name: String,
    pub value: String,
}

fn exact() -> String {
    "Exact".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// What a Gateway API Gateway becomes: `None` when its class is not Istio's (another
/// controller serves it; nothing in the mesh changes).
pub fn gateway(gw: &Resource<K8sGatewaySpec>) -> Result<Option<Resource<GatewaySpec>>, InputError> {
    let class = gw.spec.gateway_class_name.as_str();
    if class != ISTIO_CLASS {
        if class.starts_with("istio") {
            return Err(gw.origin.error(
                "spec.gatewayClassName",
                format!("GatewayClass `{class}` (waypoint, east-west or remote gateways) is not translated; the embedded mesh runs `istio` ingress Gateways"),
            ));
        }
        return Ok(None);
    }
    let mut servers = Vec::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let field = format!("spec.listeners[{i}]");
        let tls = match l.protocol.as_str() {
            "HTTP" => None,
            "HTTPS" => {
                let cert = l
                    .tls
                    .as_ref()
                    .filter(|t| t.mode.as_deref().is_none_or(|m| m == "Terminate"))
                    .and_then(|t| t.certificate_refs.first())
                    .ok_or_else(|| {
                        gw.origin.error(
                            &format!("{field}.tls"),
                            "an HTTPS listener needs tls.mode Terminate and a certificateRef",
                        )
                    })?;
                Some(ServerTls {
                    mode: "SIMPLE".into(),
                    credential_name: Some(cert.name.clone()),
                })
            }
            other => {
                return Err(gw.origin.error(
                    &format!("{field}.protocol"),
                    format!("listener protocol {other} is not translated (HTTP and HTTPS are)"),
                ));
            }
        };
        servers.push(GatewayServer {
            port: GatewayPort {
                number: l.port,
                name: l.name.clone(),
                protocol: l.protocol.clone(),
            },
            hosts: vec![l.hostname.clone().unwrap_or_else(|| "*".into())],
            tls,
        });
    }
    Ok(Some(Resource {
        metadata: gw.metadata.clone(),
        spec: GatewaySpec {
            selector: BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), gw.name().to_string())]),
            servers,
        },
        origin: gw.origin.clone(),
    }))
}

/// The VirtualService istiod derives from an HTTPRoute.
pub fn http_route(
    route: &Resource<HttpRouteSpec>,
) -> Result<Resource<VirtualServiceSpec>, InputError> {
    let ns = route.namespace();
    let mut gateways = Vec::new();
    let mut mesh_hosts = Vec::new();
    for (i, p) in route.spec.parent_refs.iter().enumerate() {
        let parent_ns = p.namespace.as_deref().unwrap_or(ns);
        match p.kind.as_deref().unwrap_or("Gateway") {
            "Gateway" => gateways.push(format!("{parent_ns}/{}", p.name)),
            // GAMMA: a route attached to a Service configures the sidecars calling it.
            "Service" => {
                gateways.push("mesh".to_string());
                mesh_hosts.push(format!("{}.{parent_ns}.svc.cluster.local", p.name));
            }
            other => {
                return Err(route.origin.error(
                    &format!("spec.parentRefs[{i}].kind"),
                    format!("parent kind {other} is not translated (Gateway and Service are)"),
                ));
            }
        }
    }
    if gateways.is_empty() {
        return Err(route.origin.error(
            "spec.parentRefs",
            "an HTTPRoute without parentRefs attaches to nothing",
        ));
    }
    let hosts = if !mesh_hosts.is_empty() {
        mesh_hosts
    } else if route.spec.hostnames.is_empty() {
        vec!["*".to_string()]
    } else {
        route.spec.hostnames.clone()
    };
    let mut http = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let destinations = backends(route, rule, &field)?;
        let timeout = rule.timeouts.as_ref().and_then(|t| t.request.clone());
        let matches = if rule.matches.is_empty() {
            vec![RouteMatch::default()]
        } else {
            rule.matches.clone()
        };
        for (j, m) in matches.iter().enumerate() {
            http.push((
                precedence(m),
                HttpRoute {
                    name: Some(format!("{}.{i}.{j}", route.name())),
                    matches: vec![http_match(route, m, &format!("{field}.matches[{j}]"))?],
                    route: destinations.clone(),
                    timeout: timeout.clone(),
                    ..Default::default()
                },
            ));
        }
    }
    // The Gateway API orders by match, not by position: exact paths, then longer prefixes,
    // then method, then more headers; ties keep their order (a stable sort).
    http.sort_by_key(|r| std::cmp::Reverse(r.0));
    Ok(Resource {
        metadata: route.metadata.clone(),
        spec: VirtualServiceSpec {
            hosts,
            gateways,
            http: http.into_iter().map(|(_, r)| r).collect(),
        },
        origin: route.origin.clone(),
    })
}

/// Higher first: (exact path, path length, has method, header count).
fn precedence(m: &RouteMatch) -> (bool, usize, bool, usize) {
    let path = m.path.as_ref();
    (
        path.is_some_and(|p| p.kind == "Exact"),
        path.map_or(1, |p| p.value.len()),
        m.method.is_some(),
        m.headers.len(),
    )
}

fn http_match(
    route: &Resource<HttpRouteSpec>,
    m: &RouteMatch,
    field: &str,
) -> Result<HttpMatch, InputError> {
    let path = m.path.clone().unwrap_or(PathMatch {
        kind: path_prefix(),
        value: root(),
    });
    let uri = match path.kind.as_str() {
        "Exact" => StringMatch::Exact(path.value),
        // "A trailing / is ignored"; "/" itself matches everything.
        "PathPrefix" if path.value == "/" => StringMatch::Prefix(path.value),
        "PathPrefix" => {
            StringMatch::PathSeparatedPrefix(path.value.trim_end_matches('/').to_string())
        }
        "RegularExpression" => StringMatch::Regex(path.value),
        other => {
            return Err(route.origin.error(
                &format!("{field}.path.type"),
                format!("path match type {other} is not Exact, PathPrefix or RegularExpression"),
            ));
        }
    };
    let mut headers = BTreeMap::new();
    for (k, h) in m.headers.iter().enumerate() {
        let value = match h.kind.as_str() {
            "Exact" => StringMatch::Exact(h.value.clone()),
            "RegularExpression" => StringMatch::Regex(h.value.clone()),
            other => {
                return Err(route.origin.error(
                    &format!("{field}.headers[{k}].type"),
                    format!("header match type {other} is not Exact or RegularExpression"),
                ));
            }
        };
        headers.insert(h.name.to_ascii_lowercase(), value);
    }
    Ok(HttpMatch {
        name: None,
        uri: Some(uri),
        headers,
        method: m.method.clone().map(StringMatch::Exact),
        ..Default::default()
    })
}

fn backends(
    route: &Resource<HttpRouteSpec>,
    rule: &RouteRule,
    field: &str,
) -> Result<Vec<RouteDestination>, InputError> {
    if rule.backend_refs.is_empty() {
        return Err(route.origin.error(
            &format!("{field}.backendRefs"),
            "a rule without backendRefs (Istio answers it with 500) is not translated",
        ));
    }
    let single = rule.backend_refs.len() == 1;
    let mut out = Vec::new();
    for (k, b) in rule.backend_refs.iter().enumerate() {
        let f = format!("{field}.backendRefs[{k}]");
        if b.kind.as_deref().is_some_and(|k| k != "Service") {
            return Err(route
                .origin
                .error(&format!("{f}.kind"), "only Service backends are translated"));
        }
        let port = b.port.ok_or_else(|| {
            route
                .origin
                .error(&format!("{f}.port"), "a Service backendRef needs a port")
        })?;
        let host = match &b.namespace {
            Some(n) if n != route.namespace() => format!("{}.{n}.svc.cluster.local", b.name),
            _ => b.name.clone(),
        };
        out.push(RouteDestination {
            destination: Destination {
                host,
                subset: None,
                port: Some(PortSelector { number: port }),
            },
            // Relative weights, as Envoy's weighted clusters take them; one backend takes all.
            weight: (!single).then_some(b.weight),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifests;
    use std::path::Path;

    fn load(yaml: &str) -> Result<Manifests, InputError> {
        let mut m = Manifests::default();
        m.add_text(Path::new("gw.yaml"), yaml).map(|_| m)
    }

    // Bookinfo's samples/bookinfo/gateway-api/bookinfo-gateway.yaml, as Istio ships it.
    const BOOKINFO: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: bookinfo-gateway\nspec:\n  gatewayClassName: istio\n  listeners:\n  - name: http\n    port: 80\n    protocol: HTTP\n    allowedRoutes:\n      namespaces:\n        from: Same\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: bookinfo\nspec:\n  parentRefs:\n  - name: bookinfo-gateway\n  rules:\n  - matches:\n    - path:\n        type: Exact\n        value: /productpage\n    - path:\n        type: PathPrefix\n        value: /static\n    backendRefs:\n    - name: productpage\n      port: 9080\n";

    #[test]
    fn a_gateway_becomes_an_istio_gateway_selecting_its_own_deployment() {
        let m = load(BOOKINFO).unwrap();
        let gw = &m.gateways[0];
        assert_eq!(gw.spec.selector[GATEWAY_NAME_LABEL], "bookinfo-gateway");
        assert_eq!(gw.spec.servers[0].port.number, 80);
        assert_eq!(gw.spec.servers[0].hosts, ["*"]);
        assert_eq!(gw.origin.line, 1);
    }

    #[test]
    fn an_http_route_becomes_a_virtual_service_with_one_route_per_match_exact_first() {
        let m = load(BOOKINFO).unwrap();
        let vs = &m.virtual_services[0];
        assert_eq!(vs.spec.gateways, ["default/bookinfo-gateway"]);
        assert_eq!(vs.spec.hosts, ["*"]);
        let uris: Vec<_> = vs
            .spec
            .http
            .iter()
            .map(|h| h.matches[0].uri.clone())
            .collect();
        assert_eq!(
            uris,
            [
                Some(StringMatch::Exact("/productpage".into())),
                Some(StringMatch::PathSeparatedPrefix("/static".into()))
            ]
        );
        let d = &vs.spec.http[0].route[0];
        assert_eq!(
            (d.destination.host.as_str(), d.weight),
            ("productpage", None)
        );
        assert_eq!(d.destination.port.as_ref().unwrap().number, 9080);
    }

    #[test]
    fn longer_prefixes_win_and_weights_stay_relative() {
        let m = load("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: edge, namespace: infra}]\n  hostnames: [shop.example.com]\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api/}, headers: [{name: X-Canary, value: 'true'}]}]\n    backendRefs: [{name: api, port: 8080, weight: 9}, {name: api-canary, namespace: canary, port: 8080, weight: 1}]\n").unwrap();
        let vs = &m.virtual_services[0];
        assert_eq!(vs.spec.gateways, ["infra/edge"]);
        assert_eq!(vs.spec.hosts, ["shop.example.com"]);
        let first = &vs.spec.http[0];
        assert_eq!(
            first.matches[0].uri,
            Some(StringMatch::PathSeparatedPrefix("/api".into()))
        );
        assert_eq!(
            first.matches[0].headers["x-canary"],
            StringMatch::Exact("true".into())
        );
        let weights: Vec<_> = first.route.iter().map(|d| d.weight).collect();
        assert_eq!(weights, [Some(9), Some(1)]);
        assert_eq!(
            first.route[1].destination.host,
            "api-canary.canary.svc.cluster.local"
        );
        assert_eq!(
            vs.spec.http[1].matches[0].uri,
            Some(StringMatch::Prefix("/".into()))
        );
    }

    #[test]
    fn a_grpc_route_matches_grpc_paths() {
        let m = load("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: edge}]\n  rules:\n  - matches: [{method: {service: shop.Catalog, method: Get}}, {method: {service: shop.Orders}}]\n    backendRefs: [{name: catalog, port: 50051}]\n").unwrap();
        let uris: Vec<_> = m.virtual_services[0]
            .spec
            .http
            .iter()
            .map(|h| h.matches[0].uri.clone())
            .collect();
        assert_eq!(
            uris,
            [
                Some(StringMatch::Exact("/shop.Catalog/Get".into())),
                Some(StringMatch::PathSeparatedPrefix("/shop.Orders".into()))
            ]
        );
    }

    #[test]
    fn what_is_not_translated_is_refused_at_its_line() {
        let err = load("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: g}]\n  rules:\n  - filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: a, port: 80}]\n").unwrap_err();
        assert_eq!(err.line, Some(7), "{err}");
        assert_eq!(err.field.as_deref(), Some("filters"), "{err}");
        let err = load("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: t, port: 9000, protocol: TCP}]\n").unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.listeners[0].protocol"),
            "{err}"
        );
        let other = load("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: eg\n  listeners: [{name: h, port: 80, protocol: HTTP}]\n").unwrap();
        assert!(other.gateways.is_empty());
        assert!(other.ignored[0].why.contains("`eg`"));
    }
}
