//! Connection pools at their declared values: every DestinationRule declares the promised
//! policy; a pool takes exactly its connections and pending requests and sheds the next; a
//! connection carries at most its requests. All read from the caller's own Envoy.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};

use crate::conformance::steps::common::{
    caller_pod, clear_faults, cluster_of, cluster_stats, judge_every, pods_of, service, table,
    unreachable, workload_call,
};
use crate::conformance::world::{Batch, MeshWorld};
use crate::declared::traffic;
use crate::{broken, promise, unchecked};

/// Longest wait for the caller's Envoy to show what a request it just sent did.
const STAT_DEADLINE: Duration = Duration::from_secs(5);

#[given(
    regex = r"^(?P<service>\S+)'s DestinationRule allows (\d+) connections and (\d+) pending requests$"
)]
async fn declared_pool(w: &mut MeshWorld, svc: String, conns: u32, pending: u32) {
    let (model, s) = service(w, &svc);
    let p = traffic::pool(&model, &s);
    promise!(
        p.value.max_connections == Some(conns)
            && p.value.http1_max_pending_requests == Some(pending),
        "the promise is {conns} connections and {pending} pending requests to {svc}; the mesh declares {:?} and {:?} ({})",
        p.value.max_connections,
        p.value.http1_max_pending_requests,
        p.at
    );
    w.evidence(format!(
        "{svc}: maxConnections {conns}, http1MaxPendingRequests {pending} ({})",
        p.at
    ));
}

#[given(regex = r"^(?P<service>\S+)'s DestinationRule allows (\d+) requests per connection$")]
async fn declared_per_connection(w: &mut MeshWorld, svc: String, n: u32) {
    let (model, s) = service(w, &svc);
    let p = traffic::pool(&model, &s);
    promise!(
        p.value.max_requests_per_connection == Some(n),
        "the promise is {n} requests per connection to {svc}; the mesh declares {:?} ({})",
        p.value.max_requests_per_connection,
        p.at
    );
    w.evidence(format!("{svc}: maxRequestsPerConnection {n} ({})", p.at));
}

#[then("the DestinationRules declare these traffic policies:")]
async fn declared_policies(w: &mut MeshWorld, step: &cucumber::gherkin::Step) {
    let (header, rows) = table(step, "| service | load balancer | ... |");
    let model = crate::declared::model(w.target.manifests());
    let mut wrong = Vec::new();
    let mut checked = 0;
    for row in rows {
        let Some((svc_name, promised)) = row.split_first() else {
            continue;
        };
        let Some(svc) = model.service(svc_name) else {
            broken!("the mesh declares no service {svc_name}");
        };
        // The service's policy and every subset's (a subset's own policy overrides it).
        let rule = crate::translate::destination_rule::rule_for(&model, svc)
            .unwrap_or_else(|e| unchecked!("{e}"));
        let mut subsets: Vec<Option<String>> = vec![None];
        subsets.extend(
            rule.iter()
                .flat_map(|r| r.spec.subsets.iter())
                .map(|s| Some(s.name.clone())),
        );
        for subset in subsets {
            let (policy, at) = traffic::policy(&model, svc, subset.as_deref());
            let declared = traffic::table_row(policy.as_ref());
            checked += 1;
            for ((column, want), got) in header[1..].iter().zip(promised).zip(&declared) {
                if want.trim() != got {
                    wrong.push(format!(
                        "{svc_name}{}: {column} is {got}, the promise is {want} ({at})",
                        subset
                            .as_ref()
                            .map(|s| format!(" subset {s}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
    }
    promise!(wrong.is_empty(), "{}", wrong.join("\n"));
    w.evidence(format!(
        "{checked} policies (services and their subsets) declare the promised values"
    ));
}

// ---- connection pool ----

#[when(
    regex = r"^(?P<workload>\S+) fills (?P<service>\S+)'s connection pool one request at a time$"
)]
async fn fill_pool(w: &mut MeshWorld, from: String, svc: String) {
    let (model, s) = service(w, &svc);
    let pool = traffic::pool(&model, &s).value;
    let (Some(c), Some(p)) = (pool.max_connections, pool.http1_max_pending_requests) else {
        broken!("{svc} declares no connection pool limits: nothing would ever be shed");
    };
    let cluster = cluster_of(w, &svc);
    let proxy = caller_pod(w, &from);
    let names = ["upstream_rq_active", "upstream_rq_pending_active"];
    let base = cluster_stats(w, &proxy, &cluster, &names).await;
    if base.iter().any(|v| *v > 0) {
        unchecked!(
            "{proxy} already has requests to {svc} in flight ({base:?}): the pool is not ours to fill"
        );
    }
    for i in 1..=(c + p) as u64 {
        let (target, call) = (w.target.clone(), workload_call(&from, &svc, "/health"));
        w.in_flight.push(tokio::spawn(async move {
            target.call(&call).await.map_err(|e| format!("{e:#}"))
        }));
        let deadline = Instant::now() + STAT_DEADLINE;
        loop {
            let v = cluster_stats(w, &proxy, &cluster, &names).await;
            if v[0] + v[1] >= i {
                break;
            }
            if let Some(done) = w.in_flight.iter().position(|h| h.is_finished()) {
                let h = w.in_flight.remove(done);
                let o = h.await.unwrap_or_else(|e| Err(e.to_string()));
                broken!(
                    "request {i} of the {} the pool should take ({c} connections + {p} pending) ended at once: {}",
                    c + p,
                    o.map(|o| o.summary()).unwrap_or_else(|e| e)
                );
            }
            if Instant::now() > deadline {
                unchecked!(
                    "request {i} to {svc} never showed in {proxy}'s Envoy stats (active + pending {:?})",
                    v
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[then(
    regex = r"^exactly (?P<service>\S+)'s declared connections are active on (?P<pod>\S+) and its declared pending requests wait$"
)]
async fn pool_is_full(w: &mut MeshWorld, svc: String, proxy: String) {
    let (model, s) = service(w, &svc);
    let pool = traffic::pool(&model, &s);
    let (c, p) = (
        pool.value.max_connections.unwrap_or(0) as u64,
        pool.value.http1_max_pending_requests.unwrap_or(0) as u64,
    );
    let cluster = cluster_of(w, &svc);
    let v = cluster_stats(
        w,
        &proxy,
        &cluster,
        &[
            "upstream_rq_active",
            "upstream_rq_pending_active",
            "upstream_cx_active",
        ],
    )
    .await;
    promise!(
        v[0] == c && v[1] == p,
        "{proxy} has {} requests active on {} connections and {} pending to {svc}; declared {c} connections and {p} pending ({})",
        v[0],
        v[2],
        v[1],
        pool.at
    );
    w.evidence(format!(
        "n={}: {proxy}: {} active on {} connections, {} pending (declared {c} + {p}, {})",
        c + p,
        v[0],
        v[2],
        v[1],
        pool.at
    ));
}

#[then(
    regex = r"^one more request from (?P<workload>\S+) to (?P<service>\S+) is shed with 503 and x-envoy-overloaded$"
)]
async fn one_more_is_shed(w: &mut MeshWorld, from: String, svc: String) {
    let started = Instant::now();
    let o = match w.target.call(&workload_call(&from, &svc, "/health")).await {
        Ok(o) => o,
        Err(e) => unchecked!("{e:#}"),
    };
    w.marks.insert("traffic".into(), Instant::now());
    if let Some(why) = unreachable(&o) {
        unchecked!("{from} -> {svc}: {why}");
    }
    promise!(
        o.status() == Some(503) && o.header("x-envoy-overloaded").is_some(),
        "the request past the pool's limit should be shed with 503 and x-envoy-overloaded; it got {}",
        o.summary()
    );
    w.evidence(format!(
        "n=1: the next request was shed in {:.0} ms: {}",
        started.elapsed().as_secs_f64() * 1000.0,
        o.summary()
    ));
}

#[then(regex = r"^once (?P<service>\S+) is released every held request is answered 200$")]
async fn released(w: &mut MeshWorld, svc: String) {
    clear_faults(w, &svc).await;
    let handles = std::mem::take(&mut w.in_flight);
    let asked = handles.len();
    let mut outcomes = Vec::new();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(Ok(o))) => outcomes.push(o),
            Ok(Ok(Err(e))) => unchecked!("a held request could not be made: {e}"),
            Ok(Err(e)) => unchecked!("a held request's task failed: {e}"),
            Err(_) => unchecked!("a held request did not end within 30 s of the release"),
        }
    }
    let line = judge_every(
        &Batch { asked, outcomes },
        "the held request is answered 200",
        |o| o.status() == Some(200),
    );
    w.evidence(line);
}

// ---- requests per connection ----

#[when(
    regex = r"^(?P<workload>\S+) sends (?P<service>\S+) ten connections' worth of requests at (\S+), one after another$"
)]
async fn ten_connections(w: &mut MeshWorld, from: String, svc: String, path: String) {
    let (model, s) = service(w, &svc);
    let Some(n) = traffic::pool(&model, &s).value.max_requests_per_connection else {
        broken!("{svc} declares no maximum of requests per connection");
    };
    if pods_of(w, &svc).len() != 1 {
        unchecked!("{svc} has several replicas: round robin would split connections between them");
    }
    let proxy = caller_pod(w, &from);
    let cluster = cluster_of(w, &svc);
    let before = cluster_stats(w, &proxy, &cluster, &["upstream_cx_max_requests"]).await[0];
    w.stats_before
        .insert((proxy, "upstream_cx_max_requests".into()), before);
    let k = 10 * n as usize;
    w.batch = Some(
        crate::conformance::steps::common::batch(
            w.target.clone(),
            k,
            1,
            workload_call(&from, &svc, &path),
        )
        .await,
    );
}

#[then(
    regex = r"^Envoy on (?P<pod>\S+) closed a connection to (?P<service>\S+) after every declared number of requests$"
)]
async fn closed_per_declared(w: &mut MeshWorld, proxy: String, svc: String) {
    let (model, s) = service(w, &svc);
    let declared = traffic::pool(&model, &s);
    let n = u64::from(declared.value.max_requests_per_connection.unwrap_or(0));
    let batch = w.batch().clone();
    judge_every(&batch, "the request got an HTTP answer", |o| {
        o.status().is_some()
    });
    let Some(before) = w
        .stats_before
        .get(&(proxy.clone(), "upstream_cx_max_requests".into()))
        .copied()
    else {
        unchecked!("no requests were counted before this step");
    };
    let cluster = cluster_of(w, &svc);
    let after = cluster_stats(w, &proxy, &cluster, &["upstream_cx_max_requests"]).await[0];
    let k = batch.outcomes.len() as u64;
    let closed = after - before;
    // With a limit of n, k = 10n sequential requests close exactly k / n connections whatever the
    // first connection had carried before; any other limit closes a different number.
    promise!(
        n > 0 && closed == k / n,
        "{k} sequential requests from {proxy} closed {closed} connections at their request limit; at the declared {n} per connection ({}) that is {}",
        declared.at,
        k / n.max(1)
    );
    w.evidence(format!(
        "n={k}: {proxy} closed {closed} connections to {svc} at the limit (declared {n}, {})",
        declared.at
    ));
}
