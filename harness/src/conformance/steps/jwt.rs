//! End-user JWTs at the edge: which tokens the ingress accepts, how it refuses the rest, and
//! that every route it serves under the API prefix needs one.

use cucumber::{given, then, when};

use crate::conformance::steps::common::unreachable;
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::declared::routes::{
    RouteRequest, gateway_route, gateway_virtual_services, ingress_host,
};
use crate::manifest::istio::StringMatch;
use crate::model::MeshModel;
use crate::target::{Call, From};
use crate::token::{Breakage, Tier, TokenSpec};
use crate::{promise, unchecked};

/// A token for `spec` from the target's test issuer (named as the feature says the gateway
/// trusts, if it says).
pub async fn token(w: &MeshWorld, spec: &TokenSpec) -> String {
    let spec = TokenSpec {
        issuer: spec.issuer.clone().or_else(|| w.issuer.clone()),
        ..spec.clone()
    };
    match w.target.mint_token(&spec).await {
        Ok(t) => t,
        Err(e) => unchecked!("minting a token: {e:#}"),
    }
}

#[given(
    regex = r"^an? (valid|expired|tampered|badly signed|wrong-issuer) token for tenant (\S+) on the (free|pro|enterprise) tier$"
)]
async fn a_token(w: &mut MeshWorld, kind: String, tenant: String, tier: String) {
    let base = TokenSpec::new(&tenant, Tier::parse(&tier).expect("tier from the regex"));
    let spec = match kind.as_str() {
        "valid" => base,
        "expired" => TokenSpec {
            expired: true,
            ..base
        },
        "tampered" => TokenSpec {
            breakage: Breakage::Tampered,
            ..base
        },
        "badly signed" => TokenSpec {
            breakage: Breakage::BadSignature,
            ..base
        },
        _ => TokenSpec {
            issuer: Some("someone-else".into()),
            ..base
        },
    };
    w.token = Some(format!("Bearer {}", token(w, &spec).await));
}

/// The issuer the suite's tokens name is the suite's promise, not read back from the mesh: a
/// RequestAuthentication edited to trust another issuer breaks it.
#[given(regex = r"^the gateway trusts tokens from issuer (\S+)$")]
async fn gateway_trusts(w: &mut MeshWorld, issuer: String) {
    let model = crate::declared::model(w.target.manifests());
    let trusted: Vec<String> = model
        .request_authentications_for(&model.ingress)
        .flat_map(|r| {
            r.spec
                .jwt_rules
                .iter()
                .map(move |j| (j.issuer.clone(), crate::declared::where_(Some(&r.origin))))
        })
        .map(|(i, at)| format!("{i} ({at})"))
        .collect();
    promise!(
        trusted
            .iter()
            .any(|t| t.split(' ').next() == Some(issuer.as_str())),
        "the promise is that the gateway trusts issuer {issuer}; its RequestAuthentications trust {}",
        if trusted.is_empty() {
            "none".to_string()
        } else {
            trusted.join(", ")
        }
    );
    w.evidence(format!("the gateway trusts {issuer}"));
    w.issuer = Some(issuer);
}

#[given("a token that is not a JWT")]
async fn garbage_token(w: &mut MeshWorld) {
    w.token = Some("Bearer not-a-jwt".into());
}

#[given("no token")]
async fn no_token(w: &mut MeshWorld) {
    w.token = None;
}

/// An ingress call carrying the scenario's token (if any) and extra headers.
pub fn ingress_call(w: &MeshWorld, path: &str, headers: &[(String, String)]) -> Call {
    let mut call = Call::new(From::Ingress { https: false }, crate::target::INGRESS, path);
    call.timeout = CALL_TIMEOUT;
    if let Some(t) = &w.token {
        call = call.header("authorization", t);
    }
    for (k, v) in headers {
        call = call.header(k, v);
    }
    call
}

#[when(regex = r"^the client calls (\S+) through the ingress$")]
async fn calls_through_ingress(w: &mut MeshWorld, path: String) {
    let call = ingress_call(w, &path, &[]);
    w.call(format!("ingress {path}"), call).await;
}

/// A request that exercises each gateway route and each edge policy path under `prefix`.
fn probes(model: &MeshModel, prefix: &str) -> (Vec<RouteRequest>, Vec<String>) {
    let mut probes = Vec::new();
    let mut skipped = Vec::new();
    let probe_path = |p: &str| format!("{}meshtest-probe", p.trim_end_matches('*'));
    for vs in gateway_virtual_services(model) {
        for (i, http) in vs.spec.http.iter().enumerate() {
            let name = http.name.clone().unwrap_or_else(|| format!("#{i}"));
            let matches: Vec<_> = if http.matches.is_empty() {
                vec![None]
            } else {
                http.matches.iter().map(Some).collect()
            };
            for m in matches {
                let path = match m.and_then(|m| m.uri.as_ref()) {
                    None => probe_path(prefix),
                    Some(StringMatch::Prefix(p)) if p.starts_with(prefix) => probe_path(p),
                    Some(StringMatch::PathSeparatedPrefix(p)) if p.starts_with(prefix) => {
                        probe_path(&format!("{p}/"))
                    }
                    Some(StringMatch::Exact(p)) if p.starts_with(prefix) => p.clone(),
                    Some(StringMatch::Regex(_)) => {
                        skipped.push(format!("{}/{name}: a regex path", vs.name()));
                        continue;
                    }
                    Some(_) => continue,
                };
                let mut req = RouteRequest::get(&path);
                let mut ok = true;
                for (h, sm) in m.map(|m| &m.headers).into_iter().flatten() {
                    match sm {
                        StringMatch::Exact(v) => req = req.header(h, v),
                        StringMatch::Prefix(v) | StringMatch::PathSeparatedPrefix(v) => {
                            req = req.header(h, &format!("{v}x"))
                        }
                        StringMatch::Regex(_) => ok = false,
                    }
                }
                if ok {
                    probes.push(req);
                } else {
                    skipped.push(format!("{}/{name}: a regex header", vs.name()));
                }
            }
        }
    }
    // Every path an edge AuthorizationPolicy names under the prefix (an opening there is
    // exactly what would let a request through without a token).
    let ingress = &model.ingress;
    for p in &model.manifests.authorization_policies {
        if !ingress.selected_by(
            p.namespace(),
            p.spec.selector.as_ref().map(|s| &s.match_labels),
        ) {
            continue;
        }
        for rule in p.spec.rules.iter().flatten() {
            for to in &rule.to {
                for path in to
                    .operation
                    .paths
                    .iter()
                    .chain(to.operation.not_paths.iter())
                {
                    if path.starts_with(prefix) {
                        let path = if path.ends_with('*') {
                            probe_path(path)
                        } else {
                            path.clone()
                        };
                        probes.push(RouteRequest::get(&path));
                    }
                }
            }
        }
    }
    probes.dedup_by(|a, b| a.path == b.path && a.headers == b.headers);
    (probes, skipped)
}

#[then(regex = r"^every route the gateway serves under (\S+) refuses a request without a token$")]
async fn api_needs_token(w: &mut MeshWorld, prefix: String) {
    let model = crate::declared::model(w.target.manifests());
    let (probes, skipped) = probes(&model, &prefix);
    let probes: Vec<RouteRequest> = probes
        .into_iter()
        .filter(|p| gateway_route(&model, &ingress_host(&model), p).is_some())
        .collect();
    if probes.is_empty() {
        unchecked!("the gateway serves no route under {prefix} that a probe could reach");
    }
    let valid = TokenSpec::new(&format!("probe-{}", std::process::id()), Tier::Enterprise);
    let bearer = format!("Bearer {}", token(w, &valid).await);
    let mut lines = Vec::new();
    for p in &probes {
        let route = gateway_route(&model, &ingress_host(&model), p)
            .map(|r| r.name)
            .unwrap_or_default();
        let mut call = ingress_call(w, &p.path, &p.headers);
        call.headers.retain(|(k, _)| k != "authorization");
        let without = w
            .target
            .call(&call)
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        if let Some(why) = unreachable(&without) {
            unchecked!("ingress {}: {why}", p.path);
        }
        let with = w
            .target
            .call(&call.clone().header("authorization", &bearer))
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        let refused = |s: Option<u16>| matches!(s, Some(401 | 403));
        promise!(
            refused(without.status()),
            "{} {:?} (route {route}) without a token got {}: the route is open",
            p.path,
            p.headers,
            without.summary()
        );
        if with.status().is_none() || refused(with.status()) {
            unchecked!(
                "{} {:?} (route {route}) is refused without a token, but also with a valid one ({}): the refusal does not show the token requirement",
                p.path,
                p.headers,
                with.summary()
            );
        }
        lines.push(format!(
            "{} (route {route}): without a token {}, with a valid token {}",
            p.path,
            without.status().unwrap_or(0),
            with.status().unwrap_or(0)
        ));
    }
    let mut line = format!("n={} probes: {}", probes.len(), lines.join("; "));
    if !skipped.is_empty() {
        line.push_str(&format!("; not probed: {}", skipped.join(", ")));
    }
    w.evidence(line);
}
