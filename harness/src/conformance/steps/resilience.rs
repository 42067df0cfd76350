//! Resilience under chaos: faults injected through the chaos machinery (the Target's
//! `inject`, with a lease the mesh keeps, reverted by the after-hook), load running in the
//! background while Envoy is watched, and judgements shared with `meshtest chaos` profiles
//! (`chaos::expect`), so a scenario and a profile never disagree about the same evidence.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};
use meshtest_load::{LoadArgs, LoadPlan};

use crate::chaos::expect::{self, Judgement, Routes};
use crate::chaos::profile::{Dur, Expect, RouteScope};
use crate::chaos::traffic::Window;
use crate::conformance::steps::jwt::token;
use crate::conformance::verdict::Verdict;
use crate::conformance::world::MeshWorld;
use crate::target::injection::{Injection, NetworkFault};
use crate::token::{Tier, TokenSpec};
use crate::{broken, unchecked};

/// How long a scenario's load runs.
const LOAD_SPAN: Duration = Duration::from_secs(4);
/// Each load request's timeout: longer than the mesh's 30 s route timeouts.
const LOAD_TIMEOUT: Duration = Duration::from_secs(45);
/// A scenario's faults end by themselves after this, whatever happens to the run.
const LEASE: Duration = Duration::from_secs(90);

/// The pods a name stands for: a pod, or every pod of a service (optionally of a version).
fn pods(w: &MeshWorld, name: &str, version: Option<&str>) -> Vec<String> {
    let all = w.target.pods();
    if all.iter().any(|p| p.name == name) {
        return vec![name.to_string()];
    }
    let out: Vec<String> = all
        .into_iter()
        .filter(|p| p.service == name && version.is_none_or(|v| p.version == v))
        .map(|p| p.name)
        .collect();
    if out.is_empty() {
        unchecked!(
            "no pod or service {name}{} in the mesh",
            version.map_or(String::new(), |v| format!(" (version {v})"))
        );
    }
    out
}

/// Injects one chaos fault for the scenario.
async fn inject(w: &mut MeshWorld, injection: Injection) {
    let id = format!("s{}", w.chaos.len() + 1);
    if let Err(e) = w
        .target
        .inject(&id, &w.chaos_owner, &injection, LEASE)
        .await
    {
        unchecked!("injecting {}: {e:#}", injection.describe());
    }
    w.evidence(format!(
        "injected {} (lease {} s)",
        injection.describe(),
        LEASE.as_secs()
    ));
    w.chaos.push((id, injection));
}

#[given(regex = r"^(?P<workload>\S+) fails every request$")]
async fn fails_every_request(w: &mut MeshWorld, name: String) {
    for pod in pods(w, &name, None) {
        let fault = crate::agent::Fault::status(503);
        inject(w, Injection::Workload { pod, fault }).await;
    }
}

#[given(regex = r"^every (\S+) pod of (?P<service>\S+) answers (\d+) to every request$")]
async fn version_answers(w: &mut MeshWorld, version: String, service: String, status: u16) {
    snapshot_subsets(w, &service).await;
    for pod in pods(w, &service, Some(&version)) {
        let fault = crate::agent::Fault::status(status);
        inject(w, Injection::Workload { pod, fault }).await;
    }
}

#[given(regex = r"^(\d+) ms of latency between (?P<workload>\S+) and (?P<workload2>\S+)$")]
async fn latency_between(w: &mut MeshWorld, ms: u64, from: String, to: String) {
    let fault = NetworkFault::Latency { ms, jitter_ms: 0 };
    let (from, to) = (pods(w, &from, None), pods(w, &to, None));
    inject(w, Injection::Network { from, to, fault }).await;
}

#[given(regex = r"^(?P<workload>\S+) cannot reach (?P<workload2>\S+)$")]
async fn partition(w: &mut MeshWorld, from: String, to: String) {
    let (from, to) = (pods(w, &from, None), pods(w, &to, None));
    inject(
        w,
        Injection::Network {
            from,
            to,
            fault: NetworkFault::Blackhole,
        },
    )
    .await;
}

#[given(regex = r"^(?P<workload>\S+) is down$")]
async fn is_down(w: &mut MeshWorld, name: String) {
    for pod in pods(w, &name, None) {
        // Replaced only when the scenario reverts it (or the lease ends).
        let backoff_ms = LEASE.as_millis() as u64;
        inject(w, Injection::PodKill { pod, backoff_ms }).await;
    }
}

#[when(
    regex = r"^(\d+) requests per second go through the ingress to (\S+)(?: with header (\S+): (\S+))?$"
)]
async fn background_load(
    w: &mut MeshWorld,
    rate: u64,
    path: String,
    header: String,
    value: String,
) {
    let base = w
        .target
        .ingress_url(false)
        .unwrap_or_else(|| unchecked!("the {} target has no HTTP ingress", w.target.kind()));
    let mut args = LoadArgs::for_url(format!("{base}{path}"));
    args.rate = Some(rate as f64);
    args.duration = Some(format!("{}s", LOAD_SPAN.as_secs()));
    args.timeout = format!("{}s", LOAD_TIMEOUT.as_secs());
    args.no_progress = true;
    args.threads = Some(1);
    if !header.is_empty() {
        args.headers.push(format!("{header}: {value}"));
    }
    // A tenant of its own, so the rate limit bucket is the scenario's.
    let tenant = format!("resilience-{}-{}", std::process::id(), w.chaos_owner);
    let jwt = token(w, &TokenSpec::new(&tenant, Tier::Enterprise)).await;
    args.headers.push(format!("authorization: Bearer {jwt}"));
    let plan = LoadPlan::from_args(&args).unwrap_or_else(|e| unchecked!("load plan: {e}"));
    w.load_cancels.push(plan.cancel.clone());
    w.chaos_load_path = Some(path.clone());
    w.marks.insert("load".into(), Instant::now());
    w.chaos_load = Some(tokio::spawn(async move {
        meshtest_load::run(&plan).await.map_err(|e| e.to_string())
    }));
}

/// Waits for the background load, checks the faults reached it, and returns its window.
async fn finished_load(w: &mut MeshWorld) -> Window {
    if let Some(h) = w.chaos_load.take() {
        match h.await {
            Ok(Ok(r)) => w.loads.push(r),
            Ok(Err(e)) => unchecked!("the load could not run: {e}"),
            Err(e) => unchecked!("the load task failed: {e}"),
        }
    }
    let Some(r) = w.loads.last() else {
        unchecked!("no load was sent while the fault was in force");
    };
    let window = Window::of(&r.recorder);
    fault_reached_traffic(w).await;
    window
}

/// Every fault of the scenario must have met traffic, else nothing it shows is evidence.
async fn fault_reached_traffic(w: &mut MeshWorld) {
    let held = match w.target.injections().await {
        Ok(h) => h,
        Err(e) => unchecked!("listing the mesh's faults: {e:#}"),
    };
    for (id, injection) in w.chaos.clone() {
        match held.iter().find(|a| a.id == id && a.owner == w.chaos_owner) {
            Some(a) if a.observed > 0 => w.evidence(format!(
                "{}: met traffic {} times",
                injection.describe(),
                a.observed
            )),
            Some(_) => unchecked!(
                "fault not effective: {} never met the traffic",
                injection.describe()
            ),
            None => unchecked!(
                "the fault {} was no longer in force (its lease ended?)",
                injection.describe()
            ),
        }
    }
}

fn routes<'a>(w: &MeshWorld, model: &'a crate::model::MeshModel) -> Routes<'a> {
    let path = w.chaos_load_path.clone().unwrap_or_default();
    Routes {
        keys: vec![path.clone()],
        paths: [(path.clone(), path)].into_iter().collect(),
        model,
    }
}

/// Ends the step with the judgement's verdict.
fn settle(w: &mut MeshWorld, j: Judgement) {
    match j.verdict {
        Verdict::Holds => w.evidence(format!("{}: {}", j.hypothesis, j.evidence)),
        Verdict::Broken => broken!("{}: {}", j.hypothesis, j.evidence),
        Verdict::Unchecked => unchecked!("{}: {}", j.hypothesis, j.evidence),
    }
}

async fn judge_load(w: &mut MeshWorld, e: Expect) {
    let window = finished_load(w).await;
    let model = crate::declared::model(w.target.manifests());
    let j = expect::judge(&e, &routes(w, &model), &|_| window.clone());
    settle(w, j);
}

#[then("no client request fails")]
async fn no_client_request_fails(w: &mut MeshWorld) {
    judge_load(w, Expect::NoClientErrors(RouteScope::default())).await;
}

#[then(regex = r"^the error rate stays within the (\S+) subset's weight$")]
async fn within_subset_weight(w: &mut MeshWorld, subset: String) {
    w.alphas.push(expect::ALPHA);
    judge_load(
        w,
        Expect::ErrorRateAtMostWeight {
            subset,
            routes: vec![],
        },
    )
    .await;
}

#[then("every request ends within the route's timeout")]
async fn ends_within_route_timeout(w: &mut MeshWorld) {
    judge_load(
        w,
        Expect::RequestsEndWithin {
            within: "declared".into(),
            routes: vec![],
        },
    )
    .await;
}

#[then(regex = r"^every request fails within (\d+) ms$")]
async fn fails_within(w: &mut MeshWorld, ms: u64) {
    let path = w.chaos_load_path.clone().unwrap_or_default();
    let within = Dur(Duration::from_millis(ms));
    judge_load(
        w,
        Expect::FailsFast {
            within,
            routes: vec![path],
        },
    )
    .await;
}

#[then(regex = r"^Envoy on (?P<pod>\S+) ejects (?P<pod2>\S+) within (\d+) s$")]
async fn ejects_within(w: &mut MeshWorld, proxy: String, pod: String, secs: u64) {
    let started = w
        .marks
        .get("load")
        .copied()
        .unwrap_or_else(|| unchecked!("no load was started before this step"));
    let model = crate::declared::model(w.target.manifests());
    let by = w
        .target
        .pods()
        .into_iter()
        .find(|p| p.name == proxy)
        .map(|p| p.service)
        .unwrap_or_else(|| unchecked!("no pod {proxy}"));
    let within = Duration::from_secs(secs).saturating_sub(started.elapsed());
    let gateway = w.chaos.iter().all(|(_, i)| expect::gateway_errors(i));
    let hyp = format!("Envoy on {proxy} ejects {pod} within {secs} s");
    let j = expect::watch_ejection(
        w.target.as_ref(),
        &model,
        &by,
        std::slice::from_ref(&pod),
        gateway,
        within,
        hyp,
    )
    .await;
    // The watch covers every proxy of the service; the step names one.
    let mine = j
        .evidence
        .split("; ")
        .filter(|l| l.starts_with(&format!("{proxy} ")))
        .collect::<Vec<_>>()
        .join("; ");
    let verdict = if mine.contains(&format!("{proxy} ejected {pod} after")) {
        Verdict::Holds
    } else if mine.contains("did not eject") {
        Verdict::Broken
    } else {
        Verdict::Unchecked
    };
    settle(
        w,
        Judgement::new(
            j.hypothesis,
            verdict,
            if mine.is_empty() { j.evidence } else { mine },
        ),
    );
}

/// Envoy's default `max_ejection_time`.
const ENVOY_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Waits (polling, bounded) until `proxy` ejects no pod of `service`: an ejection left by an
/// earlier scenario or run lasts the declared base ejection time (longer for a host ejected
/// again), and a watch that starts with one would judge nothing.
#[given(regex = r"^Envoy on (?P<pod>\S+) ejects no (?P<service>\S+) replica$")]
async fn ejects_none(w: &mut MeshWorld, proxy: String, service: String) {
    let model = crate::declared::model(w.target.manifests());
    let svc = model
        .service(&service)
        .cloned()
        .unwrap_or_else(|| unchecked!("no service {service}"));
    let outlier = crate::declared::traffic::outlier(&model, &svc).value;
    // A host ejected again stays out base x ejections, up to Envoy's max_ejection_time (Istio
    // leaves it at Envoy's default: 300 s, or the base time if longer).
    let limit = outlier.map_or(Duration::ZERO, |o| {
        o.base_ejection_time.max(ENVOY_MAX_EJECTION_TIME) + o.interval
    }) + Duration::from_secs(5);
    let addresses: Vec<(String, String)> = w
        .target
        .pods()
        .into_iter()
        .filter(|p| p.service == service)
        .map(|p| (p.name.clone(), p.address()))
        .collect();
    let started = Instant::now();
    loop {
        let mut ejected = Vec::new();
        for (name, addr) in &addresses {
            match crate::chaos::observe::host_view(w.target.as_ref(), &proxy, &svc.fqdn(), addr)
                .await
            {
                Some(v) if v.ejected => ejected.push(name.clone()),
                Some(_) => {}
                None => unchecked!("{proxy}'s Envoy does not answer"),
            }
        }
        if ejected.is_empty() {
            w.evidence(format!(
                "{proxy} ejected no {service} replica (waited {:.1} s)",
                started.elapsed().as_secs_f64()
            ));
            return;
        }
        if started.elapsed() > limit {
            unchecked!(
                "{proxy} still ejects {} after {} s (an earlier fault's ejection, longer than Envoy's maximum ejection time)",
                ejected.join(", "),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Envoy's counters of every subset of `service`, before the fault.
async fn snapshot_subsets(w: &mut MeshWorld, service: &str) {
    let model = crate::declared::model(w.target.manifests());
    let subsets: Vec<String> = model
        .manifests
        .destination_rules
        .iter()
        .filter(|r| {
            model
                .resolve_host(&r.spec.host, r.namespace())
                .is_some_and(|s| s.name == service)
        })
        .flat_map(|r| r.spec.subsets.iter().map(|s| s.name.clone()))
        .collect();
    for subset in subsets {
        let (errors, total) =
            expect::subset_counters(w.target.as_ref(), &model, service, &subset).await;
        w.stats_before
            .insert((format!("{service}/{subset}"), "5xx".into()), errors);
        w.stats_before
            .insert((format!("{service}/{subset}"), "total".into()), total);
    }
}

#[then(regex = r"^the (\S+) subset of (?P<service>\S+) serves no 5xx$")]
async fn subset_serves_no_5xx(w: &mut MeshWorld, subset: String, service: String) {
    finished_load(w).await;
    let key = format!("{service}/{subset}");
    let before = match (
        w.stats_before.get(&(key.clone(), "5xx".into())),
        w.stats_before.get(&(key.clone(), "total".into())),
    ) {
        (Some(e), Some(t)) => (*e, *t),
        _ => unchecked!(
            "no DestinationRule declares subset {subset} of {service}, or its counters were not read before the fault"
        ),
    };
    let model = crate::declared::model(w.target.manifests());
    let after = expect::subset_counters(w.target.as_ref(), &model, &service, &subset).await;
    let j = expect::judge_subset(
        &format!("{service} subset {subset} serves no 5xx"),
        before,
        after,
    );
    settle(w, j);
}
