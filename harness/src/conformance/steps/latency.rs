//! Latency under load, with the load generator's open-loop engine (coordinated omission
//! corrected) and HDR histograms that land in the run's report.

use std::time::Duration;

use cucumber::{then, when};
use meshtest_load::{LoadArgs, LoadPlan};

use crate::conformance::world::MeshWorld;
use crate::token::{Tier, TokenSpec, mint};

#[when(
    regex = r"^(\d+) requests are sent through the ingress to (\S+) at (\d+) per second(?: as tenant (\S+) on the (free|pro|enterprise) tier)?(?: with header (\S+): (\S+))?$"
)]
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    w: &mut MeshWorld,
    n: u64,
    path: String,
    rate: f64,
    tenant: String,
    tier: String,
    header: String,
    value: String,
) {
    let base = w
        .target
        .ingress_url(false)
        .unwrap_or_else(|| panic!("the {} target has no HTTP ingress", w.target.kind()));
    let mut args = LoadArgs::for_url(format!("{base}{path}"));
    args.rate = Some(rate);
    args.requests = Some(n);
    args.no_progress = true;
    args.timeout = "10s".into();
    if !header.is_empty() {
        args.headers.push(format!("{header}: {value}"));
    }
    if !tenant.is_empty() {
        let tier = Tier::parse(&tier).expect("tier from the regex");
        // A fresh tenant id per run, so its bucket is its own.
        let id = format!("{tenant}-{}", std::process::id());
        let token = mint(&TokenSpec::new(&id, tier)).expect("minting a token");
        args.headers.push(format!("authorization: Bearer {token}"));
        args.tenant = Some(id);
        args.tier = Some(tier.as_str().into());
    }
    let plan = LoadPlan::from_args(&args).unwrap_or_else(|e| panic!("load plan: {e}"));
    let result = meshtest_load::run(&plan)
        .await
        .unwrap_or_else(|e| panic!("load run against {base}{path}: {e}"));
    w.loads.push(result);
}

fn last_load(w: &MeshWorld) -> &meshtest_load::LoadResult {
    w.loads.last().expect("a step must send load first")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[then(regex = r"^p(\d+(?:\.\d+)?) is below (\d+) ms$")]
async fn percentile_below(w: &mut MeshWorld, p: f64, limit: f64) {
    let r = last_load(w);
    let got = ms(r.quantile(p / 100.0));
    assert!(
        got < limit,
        "p{p} is {got:.1} ms, the limit is {limit} ms (p50 {:.1} ms, max {:.1} ms, {} requests at {:.1}/s)",
        ms(r.quantile(0.5)),
        ms(r.quantile(1.0)),
        r.latency().len(),
        r.achieved_rate()
    );
}

#[then("no request failed")]
async fn none_failed(w: &mut MeshWorld) {
    let r = last_load(w);
    let s = meshtest_load::Summary::from_result("check", r);
    assert_eq!(
        s.requests.errors, 0,
        "{} of {} requests failed: status {:?}, errors {:?}",
        s.requests.errors, s.requests.total, s.status_counts, s.error_counts
    );
}

#[then(regex = r"^the achieved rate is within (\d+)% of the asked rate$")]
async fn rate_within(w: &mut MeshWorld, pct: f64) {
    let r = last_load(w);
    let asked = r.asked_rate().expect("open loop has an asked rate");
    let achieved = r.achieved_rate();
    let off = (achieved - asked).abs() / asked * 100.0;
    assert!(
        off <= pct,
        "asked {asked:.1}/s, achieved {achieved:.1}/s ({off:.1}% off, limit {pct}%)"
    );
}
