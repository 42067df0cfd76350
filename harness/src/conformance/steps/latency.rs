//! Latency under load, with the load generator's open-loop engine (coordinated omission
//! corrected) and HDR histograms that land in the run's report. A request that got no answer
//! within its timeout counts as slower than any limit below that timeout; one that got no
//! answer for another reason is unobserved, and can make the verdict UNCHECKED, never HOLDS.

use std::time::Duration;

use cucumber::{then, when};
use meshtest_load::{ErrorKind, LoadArgs, LoadPlan};

use crate::conformance::steps::jwt::token;
use crate::conformance::world::MeshWorld;
use crate::token::{Tier, TokenSpec};
use crate::{promise, unchecked};

/// Each load request's timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

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
    let mut args = ingress_load(w, &path, rate, n);
    if !header.is_empty() {
        args.headers.push(format!("{header}: {value}"));
    }
    if !tenant.is_empty() {
        let tier = Tier::parse(&tier).expect("tier from the regex");
        // A fresh tenant id per run, so its bucket is its own.
        let id = format!("{tenant}-{}", std::process::id());
        let token = token(w, &TokenSpec::new(&id, tier)).await;
        args.headers.push(format!("authorization: Bearer {token}"));
        args.tenant = Some(id);
        args.tier = Some(tier.as_str().into());
    }
    let result = run_load(&args).await;
    w.asked_load = n;
    w.loads.push(result);
}

/// An open loop of `n` requests at `rate` per second through the ingress to `path`.
pub fn ingress_load(w: &MeshWorld, path: &str, rate: f64, n: u64) -> LoadArgs {
    let base = w
        .target
        .ingress_url(false)
        .unwrap_or_else(|| unchecked!("the {} target has no HTTP ingress", w.target.kind()));
    let mut args = LoadArgs::for_url(format!("{base}{path}"));
    args.rate = Some(rate);
    args.requests = Some(n);
    args.no_progress = true;
    args.timeout = format!("{}s", TIMEOUT.as_secs());
    args
}

/// Runs a load; a plan or run the harness cannot make is UNCHECKED.
pub async fn run_load(args: &LoadArgs) -> meshtest_load::LoadResult {
    let plan = LoadPlan::from_args(args).unwrap_or_else(|e| unchecked!("load plan: {e}"));
    meshtest_load::run(&plan)
        .await
        .unwrap_or_else(|e| unchecked!("load against {}: {e}", args.url))
}

fn last_load(w: &MeshWorld) -> &meshtest_load::LoadResult {
    match w.loads.last() {
        Some(r) if r.recorder.total() > 0 => r,
        _ => unchecked!("no load was sent before this step, or nothing completed"),
    }
}

#[then(regex = r"^p(\d+(?:\.\d+)?) is below (\d+) ms$")]
async fn percentile_below(w: &mut MeshWorld, p: f64, limit_ms: u64) {
    let asked = w.asked_load;
    let r = last_load(w);
    let rec = &r.recorder;
    let limit_us = limit_ms * 1000;
    let n = asked.max(rec.total());
    let slow_answers: u64 = rec
        .latency
        .iter_recorded()
        .filter(|v| v.value_iterated_to() >= limit_us)
        .map(|v| v.count_at_value())
        .sum();
    // Timed out: slower than the limit (the timeout is longer); other failures: unobserved.
    let timeouts = rec.errors.get(ErrorKind::Timeout);
    let unobserved = rec.errors.total() - timeouts + (n - rec.total());
    let slow = slow_answers
        + if TIMEOUT.as_micros() as u64 >= limit_us {
            timeouts
        } else {
            0
        };
    // p-quantile < limit  <=>  fewer than n - ceil(q n) requests are at or past the limit.
    let allowed = n - ((p / 100.0) * n as f64).ceil() as u64;
    let line = format!(
        "n={n}: {slow} at or past {limit_ms} ms ({slow_answers} answers, {timeouts} timeouts), {unobserved} without an answer; p{p} allows {allowed}; p50 {:.1} ms, p{p} of answers {:.1} ms, max {:.1} ms, {:.1}/s",
        r.quantile(0.5).as_secs_f64() * 1000.0,
        r.quantile(p / 100.0).as_secs_f64() * 1000.0,
        r.quantile(1.0).as_secs_f64() * 1000.0,
        r.achieved_rate()
    );
    promise!(slow <= allowed, "p{p} is not below {limit_ms} ms: {line}");
    if slow + unobserved > allowed {
        unchecked!("too many requests got no answer to tell: {line}");
    }
    w.evidence(line);
}

#[then("no request failed")]
async fn none_failed(w: &mut MeshWorld) {
    let asked = w.asked_load;
    let r = last_load(w);
    let s = meshtest_load::Summary::from_result("check", r);
    let connect = r.recorder.errors.get(ErrorKind::Connect);
    promise!(
        s.requests.errors == connect,
        "{} of {} requests failed: status {:?}, errors {:?}",
        s.requests.errors,
        s.requests.total,
        s.status_counts,
        s.error_counts
    );
    if connect > 0 || s.requests.total < asked {
        unchecked!(
            "{connect} requests found nothing listening, {} of {asked} completed",
            s.requests.total
        );
    }
    w.evidence(format!(
        "n={}: none failed ({:?})",
        s.requests.total, s.status_counts
    ));
}
