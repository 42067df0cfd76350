//! Steps shared by every promise: calls between workloads, and verdicts on their outcome.

use cucumber::{given, then, when};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::agent::Fault;
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::outcome::Outcome;
use crate::target::{Call, From, Target};

/// Calls in flight from all scenarios together. Scenarios run side by side, and their sum must
/// stay under the seed's connection pool (50 connections + 50 pending per cluster), or the
/// mesh rightly sheds the suite's own traffic with 503 overflow.
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);

/// Makes `n` calls, at most `concurrency` at a time (and within the suite's shared budget),
/// returning outcomes in completion order.
pub async fn batch(
    target: Arc<dyn Target>,
    n: usize,
    concurrency: usize,
    call: Call,
) -> Vec<Outcome> {
    calls(target, n, concurrency, call, true).await
}

/// All `n` calls at once, outside the shared budget: only for @serial scenarios that mean to
/// overflow a connection pool.
pub async fn burst(target: Arc<dyn Target>, n: usize, call: Call) -> Vec<Outcome> {
    calls(target, n, n, call, false).await
}

async fn calls(
    target: Arc<dyn Target>,
    n: usize,
    concurrency: usize,
    call: Call,
    budgeted: bool,
) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < concurrency.max(1) {
            let (t, c) = (target.clone(), call.clone());
            set.spawn(async move {
                let _permit = if budgeted {
                    Some(IN_FLIGHT.acquire().await.expect("semaphore never closes"))
                } else {
                    None
                };
                t.call(&c).await
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(o))) => out.push(o),
            Some(Ok(Err(e))) => panic!("the harness could not make a call: {e:#}"),
            Some(Err(e)) => panic!("a call task failed: {e}"),
            None => break,
        }
    }
    out
}

/// "200 x88, 403 x12 (e.g. \"RBAC: access denied\"), reset x1": the evidence for batch verdicts.
pub fn tally(outcomes: &[Outcome]) -> String {
    let mut counts: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for o in outcomes {
        let key = o
            .status()
            .map(|s| s.to_string())
            .unwrap_or_else(|| o.kind().to_string());
        let entry = counts.entry(key).or_insert_with(|| (0, o.summary()));
        entry.0 += 1;
    }
    counts
        .iter()
        .map(|(k, (n, example))| {
            if k.starts_with('2') {
                format!("{k} x{n}")
            } else {
                format!("{k} x{n} (e.g. {example})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Envoy cluster a caller's sidecar uses for a service (Istio's naming).
pub fn cluster_of(world: &MeshWorld, service: &str) -> String {
    let pod = world
        .target
        .pods()
        .into_iter()
        .find(|p| p.service == service)
        .unwrap_or_else(|| panic!("no service named {service}"));
    format!(
        "outbound|8080||{service}.{}.svc.cluster.local",
        pod.namespace
    )
}

#[given("the mesh is running")]
async fn mesh_is_running(w: &mut MeshWorld) {
    assert!(
        !w.target.pods().is_empty(),
        "the {} target lists no pods",
        w.target.kind()
    );
}

#[when(regex = r"^(\S+) calls (\S+) at (\S+)$")]
async fn workload_calls(w: &mut MeshWorld, from: String, to: String, path: String) {
    let mut call = Call::new(From::Workload(from.clone()), &to, &path);
    call.timeout = CALL_TIMEOUT;
    w.call(format!("{from} -> {to} {path}"), call).await;
}

#[then(regex = r"^the call is (allowed|denied by RBAC)$")]
async fn call_verdict(w: &mut MeshWorld, verdict: String) {
    let (desc, o) = w.last();
    match verdict.as_str() {
        "allowed" => assert!(
            o.status().is_some_and(|s| (200..300).contains(&s)),
            "{desc}: expected the call to be allowed (2xx), got {}",
            o.summary()
        ),
        _ => assert!(
            o.status() == Some(403) && o.body() == Some("RBAC: access denied"),
            "{desc}: expected 403 \"RBAC: access denied\", got {}",
            o.summary()
        ),
    }
}

#[then(regex = r"^the response status is (\d+)$")]
async fn status_is(w: &mut MeshWorld, status: u16) {
    let (desc, o) = w.last();
    assert_eq!(
        o.status(),
        Some(status),
        "{desc}: expected HTTP {status}, got {}",
        o.summary()
    );
}

#[then(regex = r#"^the response body is "(.*)"$"#)]
async fn body_is(w: &mut MeshWorld, body: String) {
    let (desc, o) = w.last();
    assert_eq!(
        o.body(),
        Some(body.as_str()),
        "{desc}: expected body {body:?}, got {}",
        o.summary()
    );
}

#[then(regex = r#"^the response has header (\S+)(?: "(.*)")?$"#)]
async fn has_header(w: &mut MeshWorld, name: String, value: String) {
    let (desc, o) = w.last();
    let got = o.header(&name);
    assert!(
        got.is_some(),
        "{desc}: expected header {name}, got {}",
        o.summary()
    );
    if !value.is_empty() {
        assert_eq!(got, Some(value.as_str()), "{desc}: header {name}");
    }
}

#[then(regex = r"^the upstream sees the caller identity (\S+)$")]
async fn upstream_identity(w: &mut MeshWorld, spiffe: String) {
    let (desc, o) = w.last();
    let caller = o
        .json()
        .and_then(|e| e["caller"].as_str().map(str::to_string));
    assert_eq!(
        caller.as_deref(),
        Some(spiffe.as_str()),
        "{desc}: the echo's caller identity (from x-forwarded-client-cert); response {}",
        o.summary()
    );
}

#[then(regex = r"^every response is (\d+)$")]
async fn every_response_is(w: &mut MeshWorld, status: u16) {
    assert!(!w.batch.is_empty(), "no batch of requests was sent");
    let bad = w
        .batch
        .iter()
        .filter(|o| o.status() != Some(status))
        .count();
    assert_eq!(
        bad,
        0,
        "expected all {} responses to be {status}; got {}",
        w.batch.len(),
        tally(&w.batch)
    );
}

#[given(regex = r"^(\S+) answers every request with status (\d+)$")]
async fn pod_fails(w: &mut MeshWorld, pod: String, status: u16) {
    set_fault(w, &pod, Fault::status(status)).await;
}

#[given(regex = r"^every (\S+) replica answers every request with status (\d+)$")]
async fn service_fails(w: &mut MeshWorld, service: String, status: u16) {
    fault_every_replica(w, &service, Fault::status(status)).await;
}

#[given(regex = r"^every (\S+) replica takes (\d+) ms to answer$")]
async fn service_slow(w: &mut MeshWorld, service: String, ms: u64) {
    fault_every_replica(w, &service, Fault::delay_ms(ms)).await;
}

#[given(regex = r"^every (\S+) replica hangs$")]
async fn service_hangs(w: &mut MeshWorld, service: String) {
    fault_every_replica(w, &service, Fault::hang()).await;
}

async fn fault_every_replica(w: &mut MeshWorld, service: &str, fault: Fault) {
    for pod in pods_of(w, service) {
        set_fault(w, &pod, fault.clone()).await;
    }
}

pub fn pods_of(w: &MeshWorld, service: &str) -> Vec<String> {
    let pods: Vec<String> = w
        .target
        .pods()
        .into_iter()
        .filter(|p| p.service == service)
        .map(|p| p.name)
        .collect();
    assert!(!pods.is_empty(), "no pods of service {service}");
    pods
}

pub async fn set_fault(w: &mut MeshWorld, pod: &str, fault: Fault) {
    // Journal first, so the after-hook reverts even a half-applied fault.
    w.faulted_pods.push(pod.to_string());
    if let Err(e) = w.target.set_fault(pod, fault).await {
        panic!("setting a fault on {pod}: {e:#}");
    }
}
