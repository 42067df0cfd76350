//! Weighted routing at the edge, judged statistically at the declared weight: an exact binomial
//! test with a stated false-alarm rate and a sample sized for a stated power against a shift.

use cucumber::{given, then, when};

use crate::conformance::stats::{acceptance, clopper_pearson, power, sample_size};
use crate::conformance::steps::common::{batch, judge_every, table, tally, unreachable};
use crate::conformance::steps::jwt::ingress_call;
use crate::conformance::steps::routes::ingress_route_for;
use crate::conformance::world::{MeshWorld, Split};
use crate::declared::routes::{RouteRequest, ingress_route_named};
use crate::{broken, promise, unchecked};

/// Calls at once: the suite shares the seed's connection pool.
const CONCURRENCY: usize = 10;

fn request(path: &str, header: &str, value: &str) -> RouteRequest {
    if header.is_empty() {
        RouteRequest::get(path)
    } else {
        RouteRequest::get(path).header(header, value)
    }
}

fn headers(header: &str, value: &str) -> Vec<(String, String)> {
    if header.is_empty() {
        vec![]
    } else {
        vec![(header.to_string(), value.to_string())]
    }
}

#[given(regex = r"^the ingress route (\S+) sends (\d+(?:\.\d+)?)% of requests to version (\S+)$")]
async fn declared_weight(w: &mut MeshWorld, name: String, percent: f64, version: String) {
    let model = crate::declared::model(w.target.manifests());
    let route = ingress_route_named(&model, &name)
        .unwrap_or_else(|| broken!("no ingress route named {name}"));
    let share = route.weight_of_version(&model, &version) * 100.0;
    promise!(
        (share - percent).abs() < 1e-9,
        "the promise is {percent}% of {name}'s requests to {version}; its destinations declare {share}% ({})",
        route.at
    );
    w.evidence(format!("{name}: {share}% to {version} ({})", route.at));
}

#[then(regex = r"^the ingress routes send these shares to version (\S+):$")]
async fn declared_shares(w: &mut MeshWorld, version: String, step: &cucumber::gherkin::Step) {
    let (_, rows) = table(step, "| route | share |");
    let model = crate::declared::model(w.target.manifests());
    let mut lines = Vec::new();
    for row in rows {
        let [name, share] = &row[..] else {
            unchecked!("each row needs a route and a share");
        };
        let promised: f64 = share
            .trim_end_matches('%')
            .parse()
            .unwrap_or_else(|_| unchecked!("`{share}` is not a percentage"));
        let route = ingress_route_named(&model, name)
            .unwrap_or_else(|| broken!("no ingress route named {name}"));
        let declared = route.weight_of_version(&model, &version) * 100.0;
        promise!(
            (declared - promised).abs() < 1e-9,
            "the promise is {share} of {name}'s requests to {version}; its destinations declare {declared}% ({})",
            route.at
        );
        lines.push(format!("{name}: {declared}%"));
    }
    w.evidence(format!("to {version}: {}", lines.join(", ")));
}

#[when(
    regex = r"^enough requests are sent through the ingress to (\S+)(?: with header (\S+): (\S+))? to judge its split at a false-alarm rate of (\S+) with power (\S+) against a (\d+)-point shift$"
)]
async fn enough_for_split(
    w: &mut MeshWorld,
    path: String,
    header: String,
    value: String,
    alpha: f64,
    target_power: f64,
    points: f64,
) {
    let route = ingress_route_for(w, &request(&path, &header, &value));
    let model = crate::declared::model(w.target.manifests());
    // The share of the version the route sends least to: the one a canary test watches.
    let versions: Vec<String> = {
        let mut v: Vec<String> = model.pods.iter().map(|p| p.version.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let (version, declared) = versions
        .iter()
        .map(|v| (v.clone(), route.weight_of_version(&model, v)))
        .filter(|(_, s)| *s > 0.0 && *s < 1.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_else(|| {
            broken!(
                "route {} ({}) does not split between versions",
                route.name,
                route.at
            )
        });
    let shift = points / 100.0;
    let n = sample_size(
        declared,
        alpha,
        &[declared - shift, declared + shift],
        target_power,
        100_000,
    )
    .unwrap_or_else(|| unchecked!("no sample of up to 100000 requests reaches that power"));
    let call = ingress_call(w, &path, &headers(&header, &value));
    w.batch = Some(batch(w.target.clone(), n as usize, CONCURRENCY, call).await);
    w.split = Some(Split {
        route: format!(
            "{} ({}): {:.1}% to {version}",
            route.name,
            route.at,
            declared * 100.0
        ),
        declared,
        alpha,
        power: target_power,
        shift,
    });
}

/// The version each answer came from; BROKEN when the mesh answered something else.
fn versions(w: &MeshWorld) -> Vec<String> {
    let b = w.batch();
    judge_every(b, "the request is answered 200", |o| {
        o.status() == Some(200)
    });
    b.outcomes
        .iter()
        .map(|o| {
            o.json()
                .and_then(|e| e["version"].as_str().map(str::to_string))
                .unwrap_or_else(|| broken!("an answer carries no version: {}", o.summary()))
        })
        .collect()
}

#[then(regex = r"^the share of version (\S+) is consistent with the declared weight$")]
async fn share_consistent(w: &mut MeshWorld, version: String) {
    let Some(split) = w.split.clone() else {
        unchecked!("no split sample was taken before this step");
    };
    let versions = versions(w);
    let n = versions.len() as u64;
    let k = versions.iter().filter(|v| **v == version).count() as u64;
    let (lo, hi) = acceptance(n, split.declared, split.alpha);
    let (cl, ch) = clopper_pearson(k, n, split.alpha);
    let line = format!(
        "n={n}: {version} answered {k} ({:.3}); route {}; accepted {lo}-{hi} at a false-alarm rate of {}; {:.1}% interval [{cl:.3}, {ch:.3}]; power {:.3} against {:.3} and {:.3} against {:.3}",
        k as f64 / n as f64,
        split.route,
        split.alpha,
        (1.0 - split.alpha) * 100.0,
        power(n, split.declared, split.alpha, split.declared - split.shift),
        split.declared - split.shift,
        power(n, split.declared, split.alpha, split.declared + split.shift),
        split.declared + split.shift,
    );
    w.alphas.push(split.alpha);
    promise!(
        (lo..=hi).contains(&k),
        "the split is not the declared one: {line}"
    );
    w.evidence(line);
}

#[when(
    regex = r"^(\d+) requests are sent through the ingress to (\S+)(?: with header (\S+): (\S+))?$"
)]
async fn n_through_ingress(
    w: &mut MeshWorld,
    n: usize,
    path: String,
    header: String,
    value: String,
) {
    let call = ingress_call(w, &path, &headers(&header, &value));
    w.batch = Some(batch(w.target.clone(), n, CONCURRENCY, call).await);
}

#[then(regex = r"^every response comes from version (\S+)$")]
async fn every_from(w: &mut MeshWorld, version: String) {
    let versions = versions(w);
    let other = versions.iter().filter(|v| **v != version).count();
    promise!(
        other == 0,
        "{other} of {} responses came from other versions: {}",
        versions.len(),
        tally(&w.batch().outcomes)
    );
    w.evidence(format!(
        "n={}: every answer came from {version}",
        versions.len()
    ));
}

#[then(regex = r#"^every response body is "(.*)"$"#)]
async fn every_body(w: &mut MeshWorld, body: String) {
    if w.batch().outcomes.iter().any(|o| unreachable(o).is_some()) {
        unchecked!(
            "some requests reached no live proxy: {}",
            tally(&w.batch().outcomes)
        );
    }
    let line = judge_every(w.batch(), &format!("the body is {body:?}"), |o| {
        o.body() == Some(body.as_str())
    });
    w.evidence(line);
}
