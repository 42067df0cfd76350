//! Outlier detection at its declared values: a replica is ejected at exactly its consecutive
//! gateway errors (not one before), no more replicas than the declared percentage at once, and
//! the ejected one returns after the base ejection time. Read from the caller's own Envoy, with
//! the failing replica's own request count as the ground truth.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};

use crate::conformance::steps::common::{
    batch, caller_pod, cluster_of, judge_every, pod, pods_of, served_by, service, tally,
    unreachable, workload_call,
};
use crate::conformance::world::{Batch, MeshWorld};
use crate::declared::{Outlier, human, traffic};
use crate::envoy::clusters::{health_flags, is_ejected};
use crate::outcome::Outcome;
use crate::{broken, promise, unchecked};

fn outlier_of(w: &MeshWorld, service_name: &str) -> (Outlier, String) {
    let (model, svc) = service(w, service_name);
    let d = traffic::outlier(&model, &svc);
    match d.value {
        Some(o) => (o, d.at),
        None => broken!("{service_name} declares no outlier detection ({})", d.at),
    }
}

fn threshold(o: &Outlier, service: &str, at: &str) -> u32 {
    o.consecutive_gateway_errors
        .unwrap_or_else(|| broken!("{service} declares no consecutive gateway errors ({at})"))
}

#[given(
    regex = r"^(?P<service>\S+)'s DestinationRule ejects a replica after (\d+) consecutive gateway errors(?:, at most (\d+)% of them at once)?$"
)]
async fn declared_ejection(w: &mut MeshWorld, svc: String, n: u32, pct: String) {
    let (o, at) = outlier_of(w, &svc);
    promise!(
        o.consecutive_gateway_errors == Some(n),
        "the promise is ejection after {n} consecutive gateway errors to {svc}; the mesh declares {:?} ({at})",
        o.consecutive_gateway_errors
    );
    if let Ok(pct) = pct.parse::<u32>() {
        promise!(
            o.max_ejection_percent == pct,
            "the promise is at most {pct}% of {svc} ejected; the mesh declares {}% ({at})",
            o.max_ejection_percent
        );
    }
    w.evidence(format!(
        "{svc}: consecutiveGatewayErrors {n}, maxEjectionPercent {} ({at})",
        o.max_ejection_percent
    ));
}

#[given(
    regex = r"^(?P<service>\S+)'s DestinationRule ejects a replica for (\S+), checked every (\S+)$"
)]
async fn declared_ejection_time(w: &mut MeshWorld, svc: String, base: String, interval: String) {
    let (o, at) = outlier_of(w, &svc);
    let parse = |t: &str| {
        crate::translate::duration::parse(t)
            .unwrap_or_else(|| unchecked!("`{t}` is not a duration"))
    };
    promise!(
        o.base_ejection_time == parse(&base) && o.interval == parse(&interval),
        "the promise is ejection for {base}, checked every {interval}; the mesh declares {} every {} ({at})",
        human(o.base_ejection_time),
        human(o.interval)
    );
}

async fn flags(w: &MeshWorld, proxy: &str, svc: &str, pod_name: &str) -> String {
    let cluster = cluster_of(w, svc);
    let address = pod(w, pod_name).address();
    let body = match w.target.proxy_admin(proxy, "GET", "/clusters").await {
        Ok(b) => b,
        Err(e) => unchecked!("reading {proxy}'s /clusters: {e:#}"),
    };
    match health_flags(&body, &cluster, &address) {
        Some(f) => f.to_string(),
        None => unchecked!("{proxy}'s Envoy does not list {pod_name} ({address}) in {cluster}"),
    }
}

async fn ejected_hosts(w: &MeshWorld, proxy: &str, svc: &str) -> Vec<String> {
    let cluster = cluster_of(w, svc);
    let body = match w.target.proxy_admin(proxy, "GET", "/clusters").await {
        Ok(b) => b,
        Err(e) => unchecked!("reading {proxy}'s /clusters: {e:#}"),
    };
    crate::envoy::clusters::hosts(&body, &cluster)
        .into_iter()
        .filter(|h| health_flags(&body, &cluster, h).is_some_and(is_ejected))
        .collect()
}

#[when(
    regex = r"^(?P<workload>\S+) sends requests to (?P<service>\S+) until (?P<pod>\S+) has failed (one time fewer than the ejection threshold|as often as the ejection threshold)$"
)]
async fn fail_until(w: &mut MeshWorld, from: String, svc: String, failing: String, how: String) {
    let (o, at) = outlier_of(w, &svc);
    let n = u64::from(threshold(&o, &svc, &at));
    let want = if how.starts_with("one time fewer") {
        n - 1
    } else {
        n
    };
    let proxy = caller_pod(w, &from);
    let key = (failing.clone(), "served".to_string());
    let base = match w.stats_before.get(&key) {
        Some(b) => *b,
        None => {
            let ejected = ejected_hosts(w, &proxy, &svc).await;
            if !ejected.is_empty() {
                unchecked!(
                    "{proxy} already ejects {ejected:?} from {svc}: the count would not start at zero"
                );
            }
            let b = served_by(w, &failing).await;
            w.stats_before.insert(key, b);
            b
        }
    };
    let replicas = pods_of(w, &svc).len() as u64;
    let mut sent = 0;
    while served_by(w, &failing).await - base < want {
        if sent > 10 * n * replicas {
            unchecked!(
                "{failing} received {} requests after {sent} calls from {from}; the load balancer never reached it",
                served_by(w, &failing).await - base
            );
        }
        let o = w
            .target
            .call(&workload_call(&from, &svc, "/"))
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        if let Some(why) = unreachable(&o) {
            unchecked!("{from} -> {svc}: {why}");
        }
        sent += 1;
    }
    let got = served_by(w, &failing).await - base;
    if got != want {
        unchecked!(
            "{failing} answered {got} requests where {want} were asked (another caller is sending to it)"
        );
    }
    w.evidence(format!("{failing} has failed {got} requests from {proxy} ({sent} calls); ejection threshold {n} ({at})"));
}

#[then(regex = r"^Envoy on (?P<pod>\S+) has (not )?ejected (?P<pod2>\S+) from (?P<service>\S+)$")]
async fn ejected(w: &mut MeshWorld, proxy: String, not: String, failing: String, svc: String) {
    let want_ejected = not.is_empty();
    // Ejection is posted to Envoy's main thread right after the failing response: give it a
    // moment to show, and watch that long for one that should not come.
    let window = if want_ejected {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(1)
    };
    let started = Instant::now();
    let mut last;
    loop {
        last = flags(w, &proxy, &svc, &failing).await;
        if is_ejected(&last) || started.elapsed() > window {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if want_ejected && is_ejected(&last) {
        w.marks
            .insert(format!("ejected {proxy} {failing}"), started);
    }
    let batch_note = w
        .batch
        .as_ref()
        .map(|b| tally(&b.outcomes))
        .unwrap_or_default();
    promise!(
        is_ejected(&last) == want_ejected,
        "{proxy} {} {failing} from {svc}: health flags {last:?} {batch_note}",
        if want_ejected {
            "did not eject"
        } else {
            "ejected"
        }
    );
    w.evidence(format!(
        "{proxy}: {failing} health flags {last} after watching {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

#[then(
    regex = r"^the next (\d+) requests from (?P<workload>\S+) to (?P<service>\S+) at (\S+) are answered by replicas other than (?P<pod>\S+)$"
)]
async fn answered_by_others(
    w: &mut MeshWorld,
    n: usize,
    from: String,
    to: String,
    path: String,
    other: String,
) {
    let batch = batch(w.target.clone(), n, 1, workload_call(&from, &to, &path)).await;
    let line = judge_every(
        &batch,
        &format!("a replica other than {other} answers 200"),
        |o: &Outcome| {
            o.status() == Some(200)
                && o.json()
                    .and_then(|e| e["pod"].as_str().map(str::to_string))
                    .is_some_and(|p| p != other)
        },
    );
    w.evidence(line);
}

#[when(
    regex = r"^(?P<workload>\S+) sends requests to (?P<service>\S+) until every replica has failed as often as the ejection threshold$"
)]
async fn fail_all(w: &mut MeshWorld, from: String, svc: String) {
    let (o, at) = outlier_of(w, &svc);
    let n = u64::from(threshold(&o, &svc, &at));
    let pods = pods_of(w, &svc);
    let mut base = Vec::new();
    for p in &pods {
        base.push(served_by(w, &p.name).await);
    }
    let mut outcomes = Vec::new();
    for _ in 0..(20 * n * pods.len() as u64) {
        let mut all = true;
        for (p, b) in pods.iter().zip(&base) {
            all &= served_by(w, &p.name).await - b >= n;
        }
        if all {
            break;
        }
        let o = w
            .target
            .call(&workload_call(&from, &svc, "/"))
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        outcomes.push(o);
    }
    let asked = outcomes.len();
    w.batch = Some(Batch { asked, outcomes });
}

#[then(
    regex = r"^Envoy on (?P<pod>\S+) has ejected as many (?P<service>\S+) replicas as its declared maximum ejection percentage allows, no more$"
)]
async fn ejected_at_most(w: &mut MeshWorld, proxy: String, svc: String) {
    let (o, at) = outlier_of(w, &svc);
    let hosts = pods_of(w, &svc).len() as u32;
    let most = o.max_ejected(hosts);
    let started = Instant::now();
    let mut ejected = ejected_hosts(w, &proxy, &svc).await;
    while (ejected.len() as u32) < most && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(25)).await;
        ejected = ejected_hosts(w, &proxy, &svc).await;
    }
    promise!(
        ejected.len() as u32 == most,
        "with every one of {hosts} replicas failing, {proxy} ejected {} ({ejected:?}); maxEjectionPercent {} ({at}) allows exactly {most} at once",
        ejected.len(),
        o.max_ejection_percent
    );
    w.evidence(format!("{hosts} replicas failing; {proxy} ejected {ejected:?}; declared maxEjectionPercent {} ({at}) -> {most}", o.max_ejection_percent));
}

#[when(regex = r"^(?P<pod>\S+) answers normally again$")]
async fn answers_normally(w: &mut MeshWorld, pod_name: String) {
    if let Err(e) = w.target.set_fault(&pod_name, Default::default()).await {
        unchecked!("clearing the fault on {pod_name}: {e:#}");
    }
}

#[then(
    regex = r"^(?P<pod>\S+) returns to (?P<pod2>\S+)'s pool no sooner than the base ejection time and no later than one interval after it$"
)]
async fn returns_after_base(w: &mut MeshWorld, failing: String, proxy: String) {
    let Some(ejected_at) = w.marks.get(&format!("ejected {proxy} {failing}")).copied() else {
        unchecked!("{failing}'s ejection by {proxy} was not observed before this step");
    };
    let svc = pod(w, &failing).service;
    let (o, at) = outlier_of(w, &svc);
    let latest = o.base_ejection_time + o.interval + Duration::from_secs(2);
    let returned = loop {
        let f = flags(w, &proxy, &svc, &failing).await;
        if !is_ejected(&f) {
            break ejected_at.elapsed();
        }
        if ejected_at.elapsed() > latest {
            broken!(
                "{failing} was still ejected {:.1} s after its ejection; declared base ejection time {} checked every {} ({at})",
                ejected_at.elapsed().as_secs_f64(),
                human(o.base_ejection_time),
                human(o.interval)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The ejection was seen within a poll of happening.
    promise!(
        returned + Duration::from_millis(500) >= o.base_ejection_time,
        "{failing} returned {:.1} s after its ejection, before the declared base ejection time {} ({at})",
        returned.as_secs_f64(),
        human(o.base_ejection_time)
    );
    w.evidence(format!("{failing} returned to {proxy}'s pool {:.1} s after its ejection (declared {} + interval {}, {at})", returned.as_secs_f64(), human(o.base_ejection_time), human(o.interval)));
}
