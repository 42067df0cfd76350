//! Route-level promises at their declared values: each route's timeout in every proxy that
//! carries it (and a hung request cut off at it), and the exact number of attempts retries make.

use std::time::Duration;

use cucumber::gherkin::Step;
use cucumber::{given, then, when};

use crate::conformance::steps::common::{observed, pods_of, requests_served, table, workload_call};
use crate::conformance::steps::jwt::ingress_call;
use crate::conformance::world::MeshWorld;
use crate::declared::human;
use crate::declared::routes::{
    DeclaredRoute, RouteRequest, gateway_route, ingress_host, ingress_route_named, mesh_route,
    named_route,
};
use crate::envoy::config_dump;
use crate::model::MeshModel;
use crate::translate::duration;
use crate::translate::virtual_service::binds_mesh;
use crate::{broken, promise, unchecked};

/// "the ingress route default" or "the route to llm-orchestrator".
fn route(model: &MeshModel, which: &str) -> DeclaredRoute {
    if let Some(name) = which.strip_prefix("the ingress route ") {
        return ingress_route_named(model, name).unwrap_or_else(|| {
            broken!("no VirtualService bound to the ingress gateway has a route named {name}")
        });
    }
    if let Some(service) = which.strip_prefix("the route to ") {
        let Some(svc) = model.service(service) else {
            unchecked!("the mesh declares no service {service}");
        };
        return mesh_route(model, svc, &RouteRequest::get("/"));
    }
    unchecked!("`{which}` names no route")
}

fn parse_duration(text: &str) -> Duration {
    duration::parse(text).unwrap_or_else(|| unchecked!("`{text}` is not a duration"))
}

// ---- timeouts ----

fn virtual_service<'a>(
    model: &'a MeshModel,
    name: &str,
) -> &'a crate::manifest::Resource<crate::manifest::istio::VirtualServiceSpec> {
    model
        .manifests
        .virtual_services
        .iter()
        .find(|v| v.name() == name)
        .unwrap_or_else(|| broken!("the mesh declares no VirtualService {name}"))
}

/// The proxies a route lives in: the ingress gateway for gateway VirtualServices, every
/// sidecar for mesh ones.
fn proxies_of(w: &MeshWorld, model: &MeshModel, vs_name: &str) -> Vec<String> {
    if binds_mesh(&virtual_service(model, vs_name).spec) {
        w.target.pods().into_iter().map(|p| p.name).collect()
    } else {
        vec!["istio-ingressgateway".into()]
    }
}

#[then("the proxies' routes have the timeouts their VirtualServices declare:")]
async fn route_timeouts(w: &mut MeshWorld, step: &Step) {
    let (_, rows) = table(step, "| virtual service | route | timeout |");
    let model = crate::declared::model(w.target.manifests());
    let mut dumps: std::collections::HashMap<String, Vec<config_dump::Route>> = Default::default();
    let mut lines = Vec::new();
    for row in rows {
        let [vs_name, route_name, promised] = &row[..] else {
            unchecked!("each row needs a virtual service, a route and a timeout");
        };
        let declared = named_route(&model, virtual_service(&model, vs_name), route_name)
            .unwrap_or_else(|| broken!("VirtualService {vs_name} has no route {route_name}"));
        let promised = parse_duration(promised);
        promise!(
            declared.timeout == Some(promised),
            "the promise is a {} timeout on {vs_name}/{route_name}; the VirtualService declares {} ({})",
            human(promised),
            declared.timeout.map(human).unwrap_or_else(|| "none".into()),
            declared.at
        );
        let proxies = proxies_of(w, &model, vs_name);
        for proxy in &proxies {
            if !dumps.contains_key(proxy) {
                let text = w
                    .target
                    .proxy_admin(proxy, "GET", "/config_dump")
                    .await
                    .unwrap_or_else(|e| unchecked!("reading {proxy}'s config dump: {e:#}"));
                let dump: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| unchecked!("{proxy}'s config dump is not JSON: {e}"));
                dumps.insert(proxy.clone(), config_dump::routes(&dump));
            }
            let routes: Vec<_> = dumps[proxy]
                .iter()
                .filter(|r| r.name == declared.name)
                .collect();
            if routes.is_empty() {
                broken!(
                    "{proxy} has no route {} ({vs_name}/{route_name}, {})",
                    declared.name,
                    declared.at
                );
            }
            for r in routes {
                promise!(
                    r.timeout == Some(promised),
                    "{proxy}'s route {} in {} has timeout {:?}; {vs_name} declares {} ({})",
                    r.name,
                    r.virtual_host,
                    r.timeout,
                    human(promised),
                    declared.at
                );
            }
        }
        lines.push(format!(
            "{vs_name}/{route_name}: {} in {} proxies",
            human(promised),
            proxies.len()
        ));
    }
    w.evidence(format!("n={} routes: {}", lines.len(), lines.join("; ")));
}

#[given(regex = r"^the ingress route (\S+) times out after (\d+) ms for this test$")]
async fn lower_timeout(w: &mut MeshWorld, route: String, ms: u64) {
    let mut manifests = w.target.manifests();
    let mut found = false;
    for vs in &mut manifests.virtual_services {
        let gateway = !vs.spec.gateways.is_empty();
        for http in vs
            .spec
            .http
            .iter_mut()
            .filter(|h| h.name.as_deref() == Some(route.as_str()) && gateway)
        {
            http.timeout = Some(format!("{ms}ms"));
            found = true;
        }
    }
    if !found {
        broken!("no gateway VirtualService has an http route named {route}");
    }
    w.manifests_changed = true;
    if let Err(e) = w.target.apply(manifests).await {
        unchecked!("applying the shorter timeout: {e:#}");
    }
    w.expected_deadline = Some(Duration::from_millis(ms));
}

#[given(regex = r"^(the ingress route \S+|the route to \S+) declares a timeout of (\S+)$")]
async fn declared_timeout(w: &mut MeshWorld, which: String, promised: String) {
    let model = crate::declared::model(w.target.manifests());
    let r = route(&model, &which);
    let promised = parse_duration(&promised);
    promise!(
        r.timeout == Some(promised),
        "the promise is a {} timeout on {which}; it declares {} ({})",
        human(promised),
        r.timeout.map(human).unwrap_or_else(|| "none".into()),
        r.at
    );
    let deadline = r.effective_deadline();
    w.expected_deadline = deadline;
    w.evidence(format!(
        "{which}: timeout {}, {}: a hung request ends after {}",
        human(promised),
        r.retries.describe(),
        deadline.map(human).unwrap_or_else(|| "never".into())
    ));
}

#[when(regex = r"^the client calls (\S+) through the ingress, waiting up to (\d+) s$")]
async fn ingress_waiting(w: &mut MeshWorld, path: String, secs: u64) {
    let mut call = ingress_call(w, &path, &[]);
    call.timeout = Duration::from_secs(secs);
    w.call(format!("ingress {path}"), call).await;
}

#[when(regex = r"^(?P<workload>\S+) calls (?P<service>\S+) at (\S+), waiting up to (\d+) s$")]
async fn workload_waiting(w: &mut MeshWorld, from: String, to: String, path: String, secs: u64) {
    let mut call = workload_call(&from, &to, &path);
    call.timeout = Duration::from_secs(secs);
    w.call(format!("{from} -> {to} {path}"), call).await;
}

#[then("the answer came at the route's deadline, within 10%")]
async fn at_deadline(w: &mut MeshWorld) {
    let Some(deadline) = w.expected_deadline else {
        unchecked!("no step said when the route should cut the request off");
    };
    let (desc, o) = observed(w);
    let (desc, summary) = (desc.to_string(), o.summary());
    if o.status().is_none() {
        unchecked!("{desc}: {summary}: the answer's time says nothing about the route");
    }
    let took = w.last_elapsed;
    let (lo, hi) = (deadline.mul_f64(0.9), deadline.mul_f64(1.1));
    promise!(
        took >= lo && took <= hi,
        "{desc}: {summary} after {:.3} s; the route's deadline is {} (accepted {:.3}-{:.3} s)",
        took.as_secs_f64(),
        human(deadline),
        lo.as_secs_f64(),
        hi.as_secs_f64()
    );
    w.evidence(format!(
        "n=1: {desc}: {summary} after {:.3} s (deadline {})",
        took.as_secs_f64(),
        human(deadline)
    ));
}

// ---- retries ----

#[given(
    regex = r"^(the ingress route \S+|the route to \S+) declares (\d+) retries on (\S+?)(?: with (\S+) per try)?$"
)]
async fn declared_retries(
    w: &mut MeshWorld,
    which: String,
    attempts: u32,
    on: String,
    per_try: String,
) {
    let model = crate::declared::model(w.target.manifests());
    let r = route(&model, &which);
    let mut promised: Vec<&str> = on.split(',').collect();
    let mut declared: Vec<&str> = r.retries.retry_on.iter().map(String::as_str).collect();
    promised.sort();
    declared.sort();
    let per_try = (!per_try.is_empty()).then(|| parse_duration(&per_try));
    promise!(
        r.retries.attempts == attempts
            && promised == declared
            && (per_try.is_none() || per_try == r.retries.per_try_timeout),
        "the promise is {attempts} retries on {on}{} for {which}; it declares {} ({})",
        per_try
            .map(|p| format!(" with {} per try", human(p)))
            .unwrap_or_default(),
        r.retries.describe(),
        r.at
    );
    w.evidence(format!("{which}: {} ({})", r.retries.describe(), r.at));
}

#[then(
    regex = r"^the (?P<service>\S+) replicas received exactly the attempts (the ingress route \S+|its route) allows for a (\d+)$"
)]
async fn attempts_received(w: &mut MeshWorld, service: String, which: String, status: u16) {
    let model = crate::declared::model(w.target.manifests());
    let r = if which == "its route" {
        route(&model, &format!("the route to {service}"))
    } else {
        route(&model, &which)
    };
    let expected = if r.retries.retries_status(status) {
        u64::from(r.retries.attempts) + 1
    } else {
        1
    };
    let Some(before) = w
        .stats_before
        .get(&(service.clone(), "served".into()))
        .copied()
    else {
        unchecked!("the requests {service} served were not counted before the call");
    };
    // The attempts may still be arriving when the caller's answer is back: poll briefly.
    let started = std::time::Instant::now();
    let mut got = requests_served(w, &service).await - before;
    while got < expected && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        got = requests_served(w, &service).await - before;
    }
    let (desc, o) = observed(w);
    let line = format!(
        "n=1: {desc} -> {}; {} replicas of {service} received {got} attempts; {} ({}) allows {expected} for a {status}",
        o.summary(),
        pods_of(w, &service).len(),
        r.retries.describe(),
        r.at
    );
    promise!(got == expected, "{line}");
    w.evidence(line);
}

/// Records how many requests a service's replicas have served, for `attempts_received`.
pub async fn count_from_now(w: &mut MeshWorld, service: &str) {
    let n = requests_served(w, service).await;
    w.stats_before
        .insert((service.to_string(), "served".into()), n);
}

#[given(regex = r"^the requests (?P<service>\S+) receives are counted from now$")]
async fn counted(w: &mut MeshWorld, service: String) {
    count_from_now(w, &service).await;
}

/// The gateway route a request would take (for other steps' evidence).
pub fn ingress_route_for(w: &MeshWorld, req: &RouteRequest) -> DeclaredRoute {
    let model = crate::declared::model(w.target.manifests());
    gateway_route(&model, &ingress_host(&model), req)
        .unwrap_or_else(|| broken!("no ingress route serves {} {:?}", req.path, req.headers))
}
