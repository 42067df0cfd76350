//! Connection-pool overflow and outlier ejection, confirmed in the caller's Envoy stats.

use std::time::Duration;

use cucumber::{then, when};

use crate::conformance::steps::common::{batch, burst, cluster_of, tally};
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::target::{Call, From, stat};

fn workload_call(from: &str, to: &str, path: &str) -> Call {
    let mut call = Call::new(From::Workload(from.into()), to, path);
    call.timeout = CALL_TIMEOUT;
    call
}

#[when(regex = r"^(\S+) sends (\d+) concurrent requests to (\S+) at (\S+)$")]
async fn concurrent(w: &mut MeshWorld, from: String, n: usize, to: String, path: String) {
    w.batch = burst(w.target.clone(), n, workload_call(&from, &to, &path)).await;
}

#[when(regex = r"^(\S+) sends (\d+) requests to (\S+) at (\S+)$")]
async fn sequential(w: &mut MeshWorld, from: String, n: usize, to: String, path: String) {
    let cluster = cluster_of(w, &to);
    let retry = format!("cluster.{cluster}.upstream_rq_retry");
    let before = stat(w.target.as_ref(), &from, &retry).await.unwrap_or(0);
    w.stats_before.insert((from.clone(), retry), before);
    w.batch = batch(w.target.clone(), n, 1, workload_call(&from, &to, &path)).await;
}

#[then(regex = r"^some responses are 503 with header x-envoy-overloaded$")]
async fn overloaded(w: &mut MeshWorld) {
    let n = w
        .batch
        .iter()
        .filter(|o| o.status() == Some(503) && o.header("x-envoy-overloaded").is_some())
        .count();
    assert!(
        n > 0,
        "no response was a 503 with x-envoy-overloaded: {}",
        tally(&w.batch)
    );
}

#[then(regex = r"^Envoy on (\S+) counts pending-request overflows to (\S+)$")]
async fn overflow_stat(w: &mut MeshWorld, proxy: String, service: String) {
    let name = format!(
        "cluster.{}.upstream_rq_pending_overflow",
        cluster_of(w, &service)
    );
    let value = stat(w.target.as_ref(), &proxy, &name)
        .await
        .expect("reading stats");
    assert!(value > 0, "{proxy}: {name} = {value}");
}

#[then(regex = r"^Envoy on (\S+) has ejected (\S+) from (\S+)$")]
async fn ejected(w: &mut MeshWorld, proxy: String, pod: String, service: String) {
    let cluster = cluster_of(w, &service);
    let address = w
        .target
        .pods()
        .into_iter()
        .find(|p| p.name == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"))
        .address;
    let flag = format!("{cluster}::{address}::health_flags::");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut line = String::new();
    loop {
        let clusters = w
            .target
            .proxy_admin(&proxy, "GET", "/clusters")
            .await
            .expect("reading /clusters");
        line = clusters
            .lines()
            .find(|l| l.starts_with(&flag))
            .map(str::to_string)
            .unwrap_or(line);
        if line.contains("failed_outlier_check") || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ejections = stat(
        w.target.as_ref(),
        &proxy,
        &format!("cluster.{cluster}.outlier_detection.ejections_active"),
    )
    .await
    .unwrap_or(0);
    assert!(
        line.contains("failed_outlier_check"),
        "{proxy} did not eject {pod} ({address}) from {cluster}: health flags {:?}, ejections_active {ejections}; responses: {}",
        line.rsplit("::").next().unwrap_or("(host not listed)"),
        tally(&w.batch)
    );
}

#[then(
    regex = r"^the next (\d+) requests from (\S+) to (\S+) at (\S+) are answered by replicas other than (\S+)$"
)]
async fn answered_by_others(
    w: &mut MeshWorld,
    n: usize,
    from: String,
    to: String,
    path: String,
    pod: String,
) {
    let outcomes = batch(w.target.clone(), n, 1, workload_call(&from, &to, &path)).await;
    let pods: Vec<String> = outcomes
        .iter()
        .map(|o| {
            o.json()
                .and_then(|e| e["pod"].as_str().map(str::to_string))
                .unwrap_or_else(|| o.summary())
        })
        .collect();
    assert!(
        outcomes.iter().all(|o| o.status() == Some(200)) && !pods.contains(&pod),
        "expected {n} answers from replicas other than {pod}; got {} from {pods:?}",
        tally(&outcomes)
    );
}

#[then(regex = r"^Envoy on (\S+) retried requests to (\S+)$")]
async fn retried(w: &mut MeshWorld, proxy: String, service: String) {
    let name = format!("cluster.{}.upstream_rq_retry", cluster_of(w, &service));
    let before = w
        .stats_before
        .get(&(proxy.clone(), name.clone()))
        .copied()
        .unwrap_or(0);
    let now = stat(w.target.as_ref(), &proxy, &name)
        .await
        .expect("reading stats");
    assert!(
        now > before,
        "{proxy}: {name} stayed at {before} (now {now}); responses: {}",
        tally(&w.batch)
    );
}
