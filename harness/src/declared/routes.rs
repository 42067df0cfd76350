//! Which VirtualService route serves a request, and what that route declares: its timeout,
//! retries, fault and weighted destinations (Istio's defaults when a route says nothing).

use std::time::Duration;

use crate::manifest::Resource;
use crate::manifest::istio::{Fault, HttpMatch, HttpRoute, StringMatch, VirtualServiceSpec};
use crate::model::{MeshModel, Service};
use crate::translate::duration;
use crate::translate::gateway::gateways_for;
use crate::translate::virtual_service::{binds_gateway, mesh_virtual_service};

use super::where_;

/// A request as route matching sees it.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    pub path: String,
    pub method: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl RouteRequest {
    pub fn get(path: &str) -> RouteRequest {
        RouteRequest {
            path: path.into(),
            method: "GET".into(),
            headers: vec![],
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> RouteRequest {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

/// Retries as the route will run them.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub attempts: u32,
    pub retry_on: Vec<String>,
    pub per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// Istio's default when a route declares no retries.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                .split(',')
                .map(str::to_string)
                .collect(),
            per_try_timeout: None,
        }
    }

    /// Does the policy retry an upstream response with this status?
    pub fn retries_status(&self, status: u16) -> bool {
        self.attempts > 0
            && self.retry_on.iter().any(|c| match c.as_str() {
                "5xx" => status >= 500,
                "gateway-error" => (502..=504).contains(&status),
                "retriable-4xx" => status == 409,
                code => code.parse::<u16>() == Ok(status),
            })
    }

    /// Does it retry an attempt its per-try timeout cut off (Envoy answers those with 504)?
    pub fn retries_timeouts(&self) -> bool {
        self.retries_status(504) || self.retry_on.iter().any(|c| c == "reset")
    }

    /// "3 retries on gateway-error,connect-failure (per try 10s)".
    pub fn describe(&self) -> String {
        let mut s = format!("{} retries on {}", self.attempts, self.retry_on.join(","));
        if let Some(t) = self.per_try_timeout {
            s.push_str(&format!(" (per try {})", super::human(t)));
        }
        s
    }
}

/// One destination of a route with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub service: String,
    pub subset: Option<String>,
    pub weight: u32,
}

/// The route that serves a request, as declared.
#[derive(Debug, Clone)]
pub struct DeclaredRoute {
    /// The VirtualService (None: Istio's default route to the service).
    pub virtual_service: Option<String>,
    /// The http route's name, or its index in the VirtualService.
    pub name: String,
    pub index: usize,
    /// None: no timeout (Istio's default, 0s).
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<Fault>,
    pub destinations: Vec<Destination>,
    pub at: String,
}

impl DeclaredRoute {
    /// When a hung upstream's request ends: at the route timeout, or at the per-try timeout when
    /// the route does not retry timed-out attempts; None when nothing cuts it off.
    pub fn effective_deadline(&self) -> Option<Duration> {
        let per_try = self
            .retries
            .per_try_timeout
            .filter(|_| self.retries.attempts > 0);
        match (self.timeout, per_try) {
            (t, Some(p)) if !self.retries.retries_timeouts() => Some(t.map_or(p, |t| t.min(p))),
            (Some(t), Some(p)) => Some(t.min(p * (self.retries.attempts + 1))),
            (t, _) => t,
        }
    }

    /// Share (0..=1) of traffic to destinations whose pods have `version`.
    pub fn weight_of_version(&self, model: &MeshModel, version: &str) -> f64 {
        let total: u32 = self.destinations.iter().map(|d| d.weight).sum();
        if total == 0 {
            return 0.0;
        }
        let matching: u32 = self
            .destinations
            .iter()
            .filter(|d| {
                let versions = destination_versions(model, d);
                !versions.is_empty() && versions.iter().all(|v| v == version)
            })
            .map(|d| d.weight)
            .sum();
        f64::from(matching) / f64::from(total)
    }
}

/// The versions of the pods a destination sends to.
pub fn destination_versions(model: &MeshModel, d: &Destination) -> Vec<String> {
    let Some(service) = model.service(&d.service) else {
        return vec![];
    };
    let labels = match &d.subset {
        None => None,
        Some(name) => {
            let declared = model
                .manifests
                .destination_rules
                .iter()
                .filter(|r| model.resolve_host(&r.spec.host, r.namespace()) == Some(service))
                .flat_map(|r| r.spec.subsets.iter())
                .find(|s| &s.name == name);
            match declared {
                Some(s) => Some(s.labels.clone()),
                // A subset no DestinationRule declares reaches no pod.
                None => return vec![],
            }
        }
    };
    let mut versions: Vec<String> = model
        .pods_of(service)
        .filter(|p| {
            labels
                .as_ref()
                .is_none_or(|l| crate::model::labels_match(l, &p.labels))
        })
        .map(|p| p.version.clone())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// The Host a call through the ingress gateway sends when it names none: the first host of a
/// gateway-bound VirtualService, else of a Gateway server, that is not a bare `*`
/// (`*.example.com` becomes `www.example.com`); else `localhost`, which `*` accepts.
pub fn ingress_host(model: &MeshModel) -> String {
    let bound = gateway_virtual_services(model)
        .into_iter()
        .flat_map(|vs| vs.spec.hosts.iter());
    let served = model
        .manifests
        .gateways
        .iter()
        .flat_map(|g| g.spec.servers.iter())
        .flat_map(|s| s.hosts.iter());
    bound
        .chain(served)
        .map(|h| h.rsplit_once('/').map_or(h.as_str(), |(_, h)| h))
        .find(|h| *h != "*")
        .map(|h| match h.strip_prefix("*.") {
            Some(domain) => format!("www.{domain}"),
            None => h.to_string(),
        })
        .unwrap_or_else(|| "localhost".into())
}

/// The VirtualServices bound to the gateways that select the ingress gateway, in order.
pub fn gateway_virtual_services(model: &MeshModel) -> Vec<&Resource<VirtualServiceSpec>> {
    let ingress = &model.ingress;
    let gateways: Vec<_> = gateways_for(model, ingress).collect();
    model
        .manifests
        .virtual_services
        .iter()
        .filter(|vs| {
            gateways
                .iter()
                .any(|g| binds_gateway(&vs.spec, vs.namespace(), g.name(), g.namespace()))
        })
        .collect()
}

/// The gateway route that serves `req` (first matching route of the first bound
/// VirtualService whose hosts cover `host`), if any.
pub fn gateway_route(model: &MeshModel, host: &str, req: &RouteRequest) -> Option<DeclaredRoute> {
    for vs in gateway_virtual_services(model) {
        if !vs.spec.hosts.iter().any(|h| host_matches(h, host)) {
            continue;
        }
        for (i, http) in vs.spec.http.iter().enumerate() {
            if route_matches(http, req) {
                return Some(declared(model, vs, i, http));
            }
        }
    }
    None
}

/// The route a sidecar uses for `req` to `service`: its mesh VirtualService's first matching
/// route, or Istio's default route.
pub fn mesh_route(model: &MeshModel, service: &Service, req: &RouteRequest) -> DeclaredRoute {
    if let Some(vs) = mesh_virtual_service(model, service) {
        for (i, http) in vs.spec.http.iter().enumerate() {
            if route_matches(http, req) {
                return declared(model, vs, i, http);
            }
        }
    }
    DeclaredRoute {
        virtual_service: None,
        name: "default".into(),
        index: 0,
        timeout: None,
        retries: RetryPolicy::istio_default(),
        fault: None,
        destinations: vec![Destination {
            service: service.name.clone(),
            subset: None,
            weight: 100,
        }],
        at: where_(None),
    }
}

/// A route of the VirtualServices bound to the ingress gateway, by name (or `#N`).
pub fn ingress_route_named(model: &MeshModel, name: &str) -> Option<DeclaredRoute> {
    gateway_virtual_services(model)
        .into_iter()
        .find_map(|vs| named_route(model, vs, name))
}

/// A route of a VirtualService by name (or, written `#N`, by index).
pub fn named_route(
    model: &MeshModel,
    vs: &Resource<VirtualServiceSpec>,
    name: &str,
) -> Option<DeclaredRoute> {
    let index = match name.strip_prefix('#') {
        Some(n) => n.parse().ok()?,
        None => vs
            .spec
            .http
            .iter()
            .position(|h| h.name.as_deref() == Some(name))?,
    };
    Some(declared(model, vs, index, vs.spec.http.get(index)?))
}

fn declared(
    model: &MeshModel,
    vs: &Resource<VirtualServiceSpec>,
    index: usize,
    http: &HttpRoute,
) -> DeclaredRoute {
    let retries = match &http.retries {
        None => RetryPolicy::istio_default(),
        Some(r) => RetryPolicy {
            attempts: r.attempts.unwrap_or(2),
            retry_on: r
                .retry_on
                .as_deref()
                .unwrap_or(
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                )
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            per_try_timeout: r.per_try_timeout.as_deref().and_then(duration::parse),
        },
    };
    let destinations = http
        .route
        .iter()
        .filter_map(|rd| {
            let service = model.resolve_host(&rd.destination.host, vs.namespace())?;
            Some(Destination {
                service: service.name.clone(),
                subset: rd.destination.subset.clone(),
                // One destination without a weight takes everything.
                weight: rd
                    .weight
                    .unwrap_or(if http.route.len() == 1 { 100 } else { 0 }),
            })
        })
        .collect();
    DeclaredRoute {
        virtual_service: Some(vs.name().to_string()),
        name: http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{index}", vs.name())),
        index,
        timeout: http
            .timeout
            .as_deref()
            .and_then(duration::parse)
            .filter(|t| !t.is_zero()),
        retries,
        fault: http.fault.clone(),
        destinations,
        at: where_(Some(&vs.origin)),
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.split(':').next().unwrap_or(host);
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix))
}

/// Does an http route serve `req`? (No match clause: everything; else any of its matches.)
pub fn route_matches(http: &HttpRoute, req: &RouteRequest) -> bool {
    http.matches.is_empty() || http.matches.iter().any(|m| match_one(m, req))
}

fn match_one(m: &HttpMatch, req: &RouteRequest) -> bool {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let (path, uri) = if m.ignore_uri_case {
        (path.to_ascii_lowercase(), m.uri.as_ref().map(lowercase))
    } else {
        (path.to_string(), m.uri.clone())
    };
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .collect();
    uri.as_ref().is_none_or(|u| string_matches(u, &path))
        && m.query_params.iter().all(|(name, sm)| {
            params
                .iter()
                .any(|(k, v)| k == name && string_matches(sm, v))
        })
        && m.method
            .as_ref()
            .is_none_or(|x| string_matches(x, &req.method))
        && m.headers.iter().all(|(name, sm)| {
            req.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .is_some_and(|(_, v)| string_matches(sm, v))
        })
}

fn lowercase(m: &StringMatch) -> StringMatch {
    match m {
        StringMatch::Exact(v) => StringMatch::Exact(v.to_ascii_lowercase()),
        StringMatch::Prefix(v) => StringMatch::Prefix(v.to_ascii_lowercase()),
        StringMatch::PathSeparatedPrefix(v) => {
            StringMatch::PathSeparatedPrefix(v.to_ascii_lowercase())
        }
        StringMatch::Regex(v) => StringMatch::Regex(format!("(?i){v}")),
    }
}

fn string_matches(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(e) => value == e,
        StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        StringMatch::PathSeparatedPrefix(p) => value
            .strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?'])),
        StringMatch::Regex(r) => {
            regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(value))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::pyairtable_model;

    #[test]
    fn the_edge_routes_by_header_then_prefix() {
        let m = pyairtable_model();
        let at = |req: RouteRequest| gateway_route(&m, "pyairtable.local", &req).unwrap();
        let health = at(RouteRequest::get("/health"));
        assert_eq!(health.name, "default");
        assert_eq!(health.timeout, Some(Duration::from_secs(30)));
        assert_eq!(health.retries.attempts, 3);
        assert!(health.retries.retries_status(503));
        assert!((health.weight_of_version(&m, "v2") - 0.1).abs() < 1e-9);
        assert_eq!(at(RouteRequest::get("/api/v1/llm/complete")).name, "llm");
        assert_eq!(
            at(RouteRequest::get("/x").header("x-chaos-test", "enabled")).name,
            "chaos-testing"
        );
        let canary = at(RouteRequest::get("/x").header("x-pyairtable-canary", "true"));
        assert_eq!(canary.name, "canary-opt-in");
        assert_eq!(canary.weight_of_version(&m, "v2"), 1.0);
        assert_eq!(
            at(RouteRequest::get("/x").header("x-pyairtable-canary", "false")).name,
            "default"
        );
    }

    #[test]
    fn mesh_routes_and_deadlines() {
        let m = pyairtable_model();
        let airtable = mesh_route(
            &m,
            m.service("airtable-gateway").unwrap(),
            &RouteRequest::get("/"),
        );
        assert_eq!(airtable.retries.attempts, 3);
        // A hung replica: each 10 s try is retried (504 is a gateway error) until the 30 s timeout.
        assert_eq!(airtable.effective_deadline(), Some(Duration::from_secs(30)));
        let auth = mesh_route(
            &m,
            m.service("auth-service").unwrap(),
            &RouteRequest::get("/"),
        );
        assert_eq!(auth.virtual_service, None);
        assert_eq!(auth.timeout, None);
        assert!(
            !auth.retries.retries_status(503),
            "Istio 1.27+ does not retry 503 by default"
        );
    }

    #[test]
    fn a_per_try_timeout_that_is_not_retried_is_the_deadline() {
        let route = DeclaredRoute {
            virtual_service: None,
            name: "r".into(),
            index: 0,
            timeout: Some(Duration::from_secs(120)),
            retries: RetryPolicy {
                attempts: 2,
                retry_on: vec!["connect-failure".into()],
                per_try_timeout: Some(Duration::from_secs(60)),
            },
            fault: None,
            destinations: vec![],
            at: String::new(),
        };
        assert_eq!(route.effective_deadline(), Some(Duration::from_secs(60)));
    }
}
