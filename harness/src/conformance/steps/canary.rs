//! The canary split and header routing at the edge, judged statistically.

use cucumber::{then, when};

use crate::conformance::stats::clopper_pearson;
use crate::conformance::steps::common::{batch, tally};
use crate::conformance::steps::jwt::ingress_call;
use crate::conformance::world::MeshWorld;

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
    let headers = if header.is_empty() {
        vec![]
    } else {
        vec![(header, value)]
    };
    let call = ingress_call(w, &path, &headers);
    w.batch = batch(w.target.clone(), n, 10, call).await;
}

fn versions(w: &MeshWorld) -> Vec<String> {
    let bad: Vec<_> = w.batch.iter().filter(|o| o.status() != Some(200)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {}",
        bad.len(),
        w.batch.len(),
        tally(&w.batch)
    );
    w.batch
        .iter()
        .map(|o| {
            o.json()
                .and_then(|e| e["version"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("no version in {}", o.summary()))
        })
        .collect()
}

#[then(
    regex = r"^the share of version (\S+) is consistent with (\d+(?:\.\d+)?)% at a false-alarm rate of (\d+(?:\.\d+)?)$"
)]
async fn share_consistent(w: &mut MeshWorld, version: String, percent: f64, alpha: f64) {
    let versions = versions(w);
    let n = versions.len() as u64;
    let k = versions.iter().filter(|v| **v == version).count() as u64;
    let (lo, hi) = clopper_pearson(k, n, alpha);
    let declared = percent / 100.0;
    let line = format!(
        "canary split: n={n}, {version} share {:.3} ({k}/{n}), {:.1}% Clopper-Pearson interval [{lo:.3}, {hi:.3}], declared {declared:.3}, false-alarm rate {alpha}",
        k as f64 / n as f64,
        (1.0 - alpha) * 100.0
    );
    println!("{line}");
    assert!(
        lo <= declared && declared <= hi,
        "the declared weight is outside the interval: {line}"
    );
}

#[then(regex = r"^every response comes from version (\S+)$")]
async fn every_from(w: &mut MeshWorld, version: String) {
    let versions = versions(w);
    let other = versions.iter().filter(|v| **v != version).count();
    assert_eq!(
        other,
        0,
        "{other} of {} responses came from other versions: {versions:?}",
        versions.len()
    );
}

#[then(regex = r#"^every response body is "(.*)"$"#)]
async fn every_body(w: &mut MeshWorld, body: String) {
    let other = w
        .batch
        .iter()
        .filter(|o| o.body() != Some(body.as_str()))
        .count();
    assert_eq!(
        other,
        0,
        "{other} of {} responses had another body: {}",
        w.batch.len(),
        tally(&w.batch)
    );
}
