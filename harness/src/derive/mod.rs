//! `meshtest derive`: Gherkin features written from a mesh's own policies (mTLS per pod port,
//! the authorization matrix, ingress routes, JWT refusals, gated faults, rate limits, circuit
//! breakers), meant to be read and committed. Each expectation is decided from the manifests by `declared`, never by
//! running the mesh, so a suite derived today fails when a policy is loosened tomorrow.

mod circuit_breakers;
mod faults;
mod jwt;
mod rate_limits;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::declared::authorization::{Ask, Caller, Decision, decide};
use crate::manifest::istio::{MtlsMode, OutboundMode, StringMatch};
use crate::model::{MeshModel, Pod, Workload};
use crate::translate::peer_authentication::effective_mode;
use crate::translate::sidecar_scope::SidecarScope;

/// One feature file: its name and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub file: String,
    pub text: String,
    pub scenarios: usize,
}

/// The path a matrix call asks for when no policy names one.
const DEFAULT_PATH: &str = "/health";

/// Every feature the mesh's policies give, in a stable order.
pub fn features(model: &MeshModel, source: &str) -> Vec<Feature> {
    [
        mtls(model, source),
        authorization(model, source),
        ingress(model, source),
        jwt::jwt(model, source),
        faults::faults(model, source),
        rate_limits::rate_limits(model, source),
        circuit_breakers::circuit_breakers(model, source),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn header(title: &str, about: &str, source: &str) -> String {
    format!(
        "# Derived by `meshtest derive` from {source}. Regenerate it after changing the mesh\n# on purpose; a failure here means the mesh no longer does what its policies said.\nFeature: {title}\n  {about}\n\n  Background:\n    Given the mesh is running\n"
    )
}

fn mode_name(m: MtlsMode) -> &'static str {
    match m {
        MtlsMode::Strict => "STRICT",
        MtlsMode::Permissive | MtlsMode::Unset => "PERMISSIVE",
        MtlsMode::Disable => "DISABLE",
    }
}

/// Each service port with the one mode every pod behind it has (ports whose pods disagree are
/// left out: no single promise holds for them).
fn declared_modes(model: &MeshModel) -> Vec<(String, MtlsMode)> {
    let mut out = Vec::new();
    for service in &model.services {
        for port in &service.ports {
            let modes: BTreeSet<&str> = model
                .pods_of(service)
                .map(|p| {
                    mode_name(effective_mode(
                        &model.manifests,
                        &Workload::of(p),
                        port.target_port,
                    ))
                })
                .collect();
            if modes.len() == 1 {
                let m = effective_mode(
                    &model.manifests,
                    &Workload::of(model.pods_of(service).next().expect("one pod")),
                    port.target_port,
                );
                out.push((format!("{}:{}", service.name, port.port), m));
            }
        }
    }
    out
}

fn mtls(model: &MeshModel, source: &str) -> Option<Feature> {
    let modes = declared_modes(model);
    if modes.is_empty() {
        return None;
    }
    let mut text = header(
        "mTLS as the PeerAuthentications declare it",
        "Every service port keeps the mode declared for it; STRICT ports refuse plaintext from a live proxy.",
        source,
    );
    text.push_str(
        "\n  Scenario: Every pod port answers plaintext only if its declared mode allows it\n",
    );
    for (i, (target, m)) in modes.iter().enumerate() {
        let kw = if i == 0 { "Given" } else { "And" };
        let _ = writeln!(
            text,
            "    {kw} the PeerAuthentications declare {} mTLS for {target}",
            mode_name(*m)
        );
    }
    text.push_str(
        "    Then every pod port answers plaintext from outside the mesh as its declared mTLS mode says\n",
    );
    let strict: Vec<&String> = modes
        .iter()
        .filter(|(_, m)| *m == MtlsMode::Strict)
        .map(|(t, _)| t)
        .collect();
    let mut scenarios = 1;
    if !strict.is_empty() {
        text.push_str("\n  Scenario Outline: Plaintext to <service> is refused by its live proxy\n    Given the PeerAuthentications declare STRICT mTLS for <service>\n    When a client outside the mesh calls <service> at /health over plaintext\n    Then the connection is refused without an HTTP response by a live proxy\n\n    Examples:\n");
        text.push_str(&table(
            &["service"],
            strict.iter().map(|t| vec![t.to_string()]).collect(),
        ));
        scenarios += strict.len();
    }
    Some(Feature {
        file: "mtls.feature".into(),
        text,
        scenarios,
    })
}

/// How a feature names the caller with `pod`'s identity: its service when every pod of the
/// service runs as the same account, else the pod.
fn caller_name(model: &MeshModel, pod: &Pod) -> String {
    let service = model.service_of(pod);
    let same = model
        .pods_of(service)
        .all(|p| p.service_account == pod.service_account);
    if same && pod.service == service.name {
        service.name.clone()
    } else {
        pod.name.clone()
    }
}

/// The paths a matrix call asks for: the default, then each path the workload's policies name
/// (a wildcard filled in), so that both the policies' general rules and their path rules are
/// exercised.
fn probe_paths(model: &MeshModel, workload: &Workload) -> Vec<String> {
    let mut paths = vec![DEFAULT_PATH.to_string()];
    let named = crate::translate::authorization_policy::applicable(&model.manifests, workload)
        .flat_map(|p| p.spec.rules.iter().flatten())
        .flat_map(|r| r.to.iter())
        .flat_map(|t| t.operation.paths.iter().chain(&t.operation.not_paths));
    for p in named {
        let path = match (p.strip_suffix('*'), p.strip_prefix('*')) {
            _ if p == "*" => continue,
            (Some(prefix), _) => format!("{prefix}meshtest-probe"),
            (_, Some(suffix)) => format!("/meshtest-probe{suffix}"),
            _ => p.clone(),
        };
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

fn authorization(model: &MeshModel, source: &str) -> Option<Feature> {
    // One caller per identity.
    let mut seen = BTreeSet::new();
    let callers: Vec<&Pod> = model
        .pods
        .iter()
        .filter(|p| seen.insert((p.namespace.clone(), p.service_account.clone())))
        .collect();
    let mut rows = Vec::new();
    let mut undecided = BTreeSet::new();
    // A call outside the caller's Sidecar egress never reaches the callee with its identity:
    // it is not an authorization question (features/egress steps judge it).
    let mut outside: BTreeMap<(String, &str), BTreeSet<String>> = BTreeMap::new();
    let mut scopes = Vec::new();
    for c in &callers {
        match SidecarScope::of(model, &Workload::of(c)) {
            Ok(scope) => scopes.push(scope),
            // translate::proxy::check refuses such manifests before deriving.
            Err(_) => return None,
        }
    }
    for callee in &model.services {
        let Some(pod) = model.pods_of(callee).next() else {
            continue;
        };
        let workload = Workload::of(pod);
        let paths = probe_paths(model, &workload);
        for port in &callee.ports {
            for ((caller, scope), path) in callers
                .iter()
                .zip(&scopes)
                .flat_map(|c| paths.iter().map(move |p| (c, p)))
            {
                if !scope.sees(callee, port.port) {
                    let why = match scope.mode {
                        OutboundMode::RegistryOnly => "REGISTRY_ONLY: its own proxy answers 502",
                        OutboundMode::AllowAny => {
                            "ALLOW_ANY: they leave in plaintext, without its identity"
                        }
                    };
                    outside
                        .entry((caller_name(model, caller), why))
                        .or_default()
                        .insert(format!("{}:{}", callee.name, port.port));
                    continue;
                }
                let who = Caller::workload(&caller.namespace, &caller.service_account);
                let tcp = !port.protocol.is_http();
                // A TCP port is asked once (paths mean nothing to it).
                if tcp && path != DEFAULT_PATH {
                    continue;
                }
                let host = format!("{}:{}", callee.name, port.port);
                let ask = Ask {
                    port: port.target_port,
                    path,
                    method: "GET",
                    tcp,
                    host: &host,
                };
                let d = decide(&model.manifests, &workload, &who, &ask);
                if let Decision::Undecidable { why } = &d {
                    undecided.insert(format!("{host}: {why}"));
                    continue;
                }
                let verdict = match (d.allowed(), tcp) {
                    (true, _) => "allowed",
                    (false, false) => "denied by RBAC",
                    (false, true) => "closed by RBAC",
                };
                rows.push(vec![
                    caller_name(model, caller),
                    format!("{}:{}", callee.name, port.port),
                    path.clone(),
                    verdict.to_string(),
                    d.reason(),
                ]);
            }
        }
    }
    for ((caller, why), hosts) in outside {
        undecided.insert(format!(
            "calls from {caller} to {}, outside its Sidecar's egress hosts ({why})",
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if rows.is_empty() {
        return None;
    }
    let mut text = header(
        "Authorization as the AuthorizationPolicies decide it",
        "Every workload identity calls every service port; each call is allowed or denied as the policies decide (a TCP port's denial closes the connection).",
        source,
    );
    for u in &undecided {
        let _ = writeln!(text, "  # Left out: {u}.");
    }
    text.push_str("\n  Scenario Outline: <caller> calling <callee> at <path> is <verdict>\n    When <caller> calls <callee> at <path>\n    Then the call is <verdict>\n\n    Examples:\n");
    let scenarios = rows.len();
    text.push_str(&table(
        &["caller", "callee", "path", "verdict", "decided by"],
        rows,
    ));
    Some(Feature {
        file: "authorization.feature".into(),
        text,
        scenarios,
    })
}

/// A request path that a gateway route's match takes, if a plain one does.
fn route_path(m: Option<&StringMatch>) -> Option<String> {
    match m {
        None => Some("/".into()),
        Some(StringMatch::Exact(p)) => Some(p.clone()),
        Some(StringMatch::Prefix(p)) => Some(p.clone()),
        Some(StringMatch::PathSeparatedPrefix(p)) => Some(p.clone()),
        Some(StringMatch::Regex(_)) => None,
    }
}

/// (route, path, version, share %) for each version a weighted route splits traffic to, when
/// the route can be named in a step (`the ingress route NAME`).
fn canary_splits(
    model: &MeshModel,
    route: &crate::declared::DeclaredRoute,
    path: &str,
) -> Vec<Vec<String>> {
    let named = crate::declared::routes::ingress_route_named(model, &route.name);
    if named.is_none_or(|n| n.virtual_service != route.virtual_service || n.index != route.index) {
        return Vec::new();
    }
    let versions: BTreeSet<String> = route
        .destinations
        .iter()
        .flat_map(|d| crate::declared::routes::destination_versions(model, d))
        .collect();
    // The split is judged on its smallest share (the canary), as features/canary.feature does.
    versions
        .into_iter()
        .map(|v| (route.weight_of_version(model, &v) * 100.0, v))
        .filter(|(share, _)| *share > 0.0 && *share < 100.0)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(share, v)| vec![route.name.clone(), path.to_string(), v, format!("{share}")])
        .into_iter()
        .collect()
}

/// The paths to call through the ingress: each plain route's own path, and the paths the
/// gateway's policies name that the same route serves (a catch-all route is often open only
/// at /health).
fn ingress_probes(
    model: &MeshModel,
    route_of: &dyn Fn(&str) -> Option<crate::declared::DeclaredRoute>,
) -> Vec<String> {
    let policy_paths = probe_paths(model, &model.ingress);
    let mut candidates = Vec::new();
    for vs in crate::declared::routes::gateway_virtual_services(model) {
        // Faults answer for their routes; the fault features check them.
        for http in vs.spec.http.iter().filter(|h| h.fault.is_none()) {
            let matches: Vec<_> = if http.matches.is_empty() {
                vec![None]
            } else {
                http.matches.iter().map(Some).collect()
            };
            for m in matches {
                // Header, method or regex conditions need more than a path: left out.
                if m.is_some_and(|m| !m.headers.is_empty() || m.method.is_some()) {
                    continue;
                }
                let Some(path) = route_path(m.and_then(|m| m.uri.as_ref())) else {
                    continue;
                };
                let Some(own) = route_of(&path) else {
                    continue;
                };
                candidates.push(path);
                for p in &policy_paths {
                    if route_of(p).is_some_and(|r| {
                        r.virtual_service == own.virtual_service && r.index == own.index
                    }) {
                        candidates.push(p.clone());
                    }
                }
            }
        }
    }
    candidates
}

/// The gateway's plain HTTP port and Host, and each path to probe with the route it really
/// takes (an earlier route may shadow a later one's path), once.
struct IngressPaths {
    port: u16,
    host: String,
    paths: Vec<(String, crate::declared::DeclaredRoute)>,
}

fn ingress_paths(model: &MeshModel) -> Option<IngressPaths> {
    let port = model
        .manifests
        .gateways
        .iter()
        .flat_map(|g| g.spec.servers.iter())
        .find(|s| s.port.protocol == "HTTP")
        .map(|s| s.port.number)?;
    let host = crate::declared::routes::ingress_host(model);
    let route_of = |path: &str| {
        let req = crate::declared::RouteRequest::get(path);
        crate::declared::routes::gateway_route(model, &host, &req).filter(|r| r.fault.is_none())
    };
    let mut seen = BTreeSet::new();
    let mut paths = Vec::new();
    for path in ingress_probes(model, &route_of) {
        if let Some(route) = route_of(&path)
            && seen.insert(path.clone())
        {
            paths.push((path, route));
        }
    }
    Some(IngressPaths { port, host, paths })
}

fn ingress(model: &MeshModel, source: &str) -> Option<Feature> {
    let mut rows = Vec::new();
    let mut splits = Vec::new();
    let IngressPaths {
        port: gateway_port,
        host,
        paths,
    } = ingress_paths(model)?;
    for (path, route) in paths {
        let ask = Ask {
            port: gateway_port,
            path: &path,
            method: "GET",
            tcp: false,
            host: &host,
        };
        let d = decide(
            &model.manifests,
            &model.ingress,
            &Caller { principal: None },
            &ask,
        );
        if matches!(d, Decision::Undecidable { .. }) {
            continue;
        }
        // One sample per route is enough for its split.
        if d.allowed() && !splits.iter().any(|r: &Vec<String>| r[0] == route.name) {
            splits.extend(canary_splits(model, &route, &path));
        }
        rows.push(vec![
            path,
            if d.allowed() {
                "allowed"
            } else {
                "denied by RBAC"
            }
            .to_string(),
            d.reason(),
        ]);
    }
    if rows.is_empty() {
        return None;
    }
    let mut text = header(
        "Ingress routes answer as the gateway's routes and policies declare",
        "A request without a token on each gateway route reaches its backend or is denied as the policies decide.",
        source,
    );
    text.push_str("\n  Scenario Outline: <path> through the ingress is <verdict>\n    Given no token\n    When the client calls <path> through the ingress\n    Then the call is <verdict>\n\n    Examples:\n");
    let mut scenarios = rows.len();
    text.push_str(&table(&["path", "verdict", "decided by"], rows));
    if !splits.is_empty() {
        text.push_str("\n  Scenario Outline: <route> sends <share>% of <path> to version <version>\n    Given no token\n    And the ingress route <route> sends <share>% of requests to version <version>\n    When enough requests are sent through the ingress to <path> to judge its split at a false-alarm rate of 0.001 with power 0.99 against a 5-point shift\n    Then the share of version <version> is consistent with the declared weight\n\n    Examples:\n");
        scenarios += splits.len();
        text.push_str(&table(&["route", "path", "version", "share"], splits));
    }
    Some(Feature {
        file: "ingress.feature".into(),
        text,
        scenarios,
    })
}

/// A Gherkin table, columns padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("      | {} |\n", padded.join(" | "))
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pyairtable_mesh_derives_its_matrix_and_strict_ports() {
        let model = crate::translate::tests::pyairtable_model();
        let fs = features(&model, "mesh/pyairtable");
        let names: Vec<&str> = fs.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(
            names,
            [
                "mtls.feature",
                "authorization.feature",
                "ingress.feature",
                "jwt.feature",
                "faults.feature",
                "rate_limits.feature",
                "circuit_breakers.feature"
            ]
        );
        // The buckets' table and one scenario per tier (enterprise's 10000 @slow).
        assert_eq!(fs[5].scenarios, 4, "{}", fs[5].text);
        assert!(
            fs[5]
                .text
                .contains("  @slow\n  Scenario: An enterprise-tier tenant")
        );
        // Four invalid tokens at each of the five ingress paths.
        assert_eq!(fs[3].scenarios, 20, "{}", fs[3].text);
        // auth-service runs one replica: no ejection scenario; the others' pools and ejections.
        assert_eq!(fs[6].scenarios, 8, "{}", fs[6].text);
        // The chaos-testing route's rates with its header, and nothing without it.
        assert_eq!(fs[4].scenarios, 2, "{}", fs[4].text);
        assert!(fs[4].text.contains("Given the ingress route chaos-testing declares a 2s delay for 1% and a 503 abort for 0.5% of requests"), "{}", fs[4].text);
        let mtls = &fs[0].text;
        assert!(
            mtls.contains("declare PERMISSIVE mTLS for auth-service:8081"),
            "{mtls}"
        );
        assert!(mtls.contains("| auth-service:8080"), "{mtls}");
        let authz = &fs[1].text;
        // features/authz.feature's matrix, decided from the policies alone.
        for (caller, callee, verdict) in [
            ("api-gateway", "auth-service:8080", "allowed"),
            ("auth-service", "airtable-gateway:8080", "denied by RBAC"),
            ("workflow-engine", "llm-orchestrator:8080", "allowed"),
            ("llm-orchestrator", "api-gateway:8080", "denied by RBAC"),
        ] {
            let row = authz
                .lines()
                .find(|l| {
                    let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                    cells.get(1) == Some(&caller) && cells.get(2) == Some(&callee)
                })
                .unwrap_or_else(|| panic!("no row {caller} -> {callee}:\n{authz}"));
            assert!(row.contains(verdict), "{row}");
        }
    }
}
