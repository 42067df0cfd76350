//! Steps and helpers shared by every promise: calls between workloads, and verdicts on their
//! outcome that never judge what the harness did not see.

use cucumber::{given, then, when};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::agent::Fault;
use crate::conformance::world::{Batch, CALL_TIMEOUT, MeshWorld};
use crate::outcome::Outcome;
use crate::target::{Call, From, PodInfo, Target};
use crate::{broken, promise, unchecked};

/// Calls in flight from all scenarios together. Scenarios run side by side, and their sum must
/// stay under the seed's connection pool (50 connections + 50 pending per cluster), or the
/// mesh rightly sheds the suite's own traffic with 503 overflow.
static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);

/// Makes `n` calls, at most `concurrency` at a time (and within the suite's shared budget).
pub async fn batch(target: Arc<dyn Target>, n: usize, concurrency: usize, call: Call) -> Batch {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < concurrency.max(1) {
            let (t, c) = (target.clone(), call.clone());
            set.spawn(async move {
                let _permit = IN_FLIGHT.acquire().await.expect("semaphore never closes");
                t.call(&c).await
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(o))) => out.push(o),
            Some(Ok(Err(e))) => unchecked!("the harness could not make a call: {e:#}"),
            Some(Err(e)) => unchecked!("a call task failed: {e}"),
            None => break,
        }
    }
    Batch {
        asked: n,
        outcomes: out,
    }
}

/// Why an outcome tells nothing about the mesh's promise: nothing listened where a proxy should
/// have (refused), or a proxy could not reach the next one's listener (Envoy's 503 for a failed
/// TCP connect). None when the outcome is the mesh's own answer.
pub fn unreachable(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Refused { detail } => Some(format!(
            "connection refused ({detail}): no proxy is listening there"
        )),
        Outcome::Response {
            status: 503, body, ..
        } if body.contains("Connection refused")
            || body.contains("reset reason: connection failure")
            || body.contains("reset reason: remote connection failure") =>
        {
            Some(format!(
                "the caller's proxy could not connect to the callee ({}): its proxy is not running",
                body.chars().take(160).collect::<String>()
            ))
        }
        _ => None,
    }
}

/// The last call's outcome, UNCHECKED if it never reached a live proxy.
pub fn observed(w: &MeshWorld) -> (&str, &Outcome) {
    let (desc, o) = w.last();
    if let Some(why) = unreachable(o) {
        unchecked!("{desc}: {why}");
    }
    (desc, o)
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

/// Judges every outcome of a batch with `ok`: BROKEN on any observed violation; UNCHECKED when
/// nothing was sent, fewer came back than asked, or some never reached a live proxy. Returns
/// the evidence line.
pub fn judge_every(batch: &Batch, what: &str, ok: impl Fn(&Outcome) -> bool) -> String {
    let n = batch.outcomes.len();
    if batch.asked == 0 || n == 0 {
        unchecked!("no requests were sent, so nothing shows that {what}");
    }
    let observed: Vec<&Outcome> = batch
        .outcomes
        .iter()
        .filter(|o| unreachable(o).is_none())
        .collect();
    let bad = observed.iter().filter(|o| !ok(o)).count();
    promise!(
        bad == 0,
        "{bad} of {n} requests show otherwise than that {what}: {}",
        tally(&batch.outcomes)
    );
    if observed.len() < batch.asked {
        unchecked!(
            "only {} of {} requests reached a live proxy ({}); nothing contradicts that {what}, but it was not seen for all",
            observed.len(),
            batch.asked,
            tally(&batch.outcomes)
        );
    }
    format!("n={n}: {what} ({})", tally(&batch.outcomes))
}

/// The pods of a service (UNCHECKED when the target lists none).
pub fn pods_of(w: &MeshWorld, service: &str) -> Vec<PodInfo> {
    let pods: Vec<PodInfo> = w
        .target
        .pods()
        .into_iter()
        .filter(|p| p.service == service)
        .collect();
    if pods.is_empty() {
        unchecked!(
            "the {} target lists no pods of service {service}",
            w.target.kind()
        );
    }
    pods
}

/// A pod by name.
pub fn pod(w: &MeshWorld, name: &str) -> PodInfo {
    w.target
        .pods()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| unchecked!("the {} target lists no pod {name}", w.target.kind()))
}

/// The model of the mesh's manifests and the service named `name`.
pub fn service(w: &MeshWorld, name: &str) -> (crate::model::MeshModel, crate::model::Service) {
    let model = crate::declared::model(w.target.manifests());
    let svc = model
        .service(name)
        .cloned()
        .unwrap_or_else(|| unchecked!("the mesh's manifests declare no service {name}"));
    (model, svc)
}

/// The Envoy cluster a caller's sidecar uses for a service's first port (Istio's naming).
pub fn cluster_of(w: &MeshWorld, service_name: &str) -> String {
    let (_, svc) = service(w, service_name);
    crate::translate::destination_rule::cluster_name(&svc, svc.default_port().port, None)
}

pub fn workload_call(from: &str, to: &str, path: &str) -> Call {
    let mut call = Call::new(From::Workload(from.into()), to, path);
    call.timeout = CALL_TIMEOUT;
    call
}

/// `n` calls one after another, one every `every`: a condition that lasts across several
/// scrapes, as an incident does (a single event on a series that did not exist before is
/// invisible to Prometheus' `rate`).
pub async fn paced(target: Arc<dyn Target>, n: usize, every: Duration, call: Call) -> Batch {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outcomes = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        match target.call(&call).await {
            Ok(o) => outcomes.push(o),
            Err(e) => unchecked!("the harness could not make a call: {e:#}"),
        }
    }
    Batch { asked: n, outcomes }
}

#[given("the mesh is running")]
async fn mesh_is_running(w: &mut MeshWorld) {
    if w.target.pods().is_empty() {
        unchecked!("the {} target lists no pods", w.target.kind());
    }
}

#[when(regex = r"^(?P<workload>\S+) calls (?P<service>\S+) at (\S+)$")]
async fn workload_calls(w: &mut MeshWorld, from: String, to: String, path: String) {
    w.call(
        format!("{from} -> {to} {path}"),
        workload_call(&from, &to, &path),
    )
    .await;
}

#[then(regex = r"^the call is (allowed|denied by RBAC|closed by RBAC)$")]
async fn call_verdict(w: &mut MeshWorld, verdict: String) {
    if verdict == "closed by RBAC" {
        return closed_by_rbac(w).await;
    }
    let (desc, o) = observed(w);
    let line = format!("n=1: {desc}: {}", o.summary());
    match verdict.as_str() {
        "allowed" => promise!(
            o.status().is_some_and(|s| (200..300).contains(&s)),
            "{desc}: expected the call to be allowed (2xx), got {}",
            o.summary()
        ),
        _ => promise!(
            o.status() == Some(403) && o.body() == Some("RBAC: access denied"),
            "{desc}: expected 403 \"RBAC: access denied\", got {}",
            o.summary()
        ),
    }
    w.evidence(line);
}

/// What repeating a call to a TCP port showed about the callee's network RBAC.
pub enum NetworkRbac {
    /// Closed without an answer, and the callee's denial counter rose by exactly one for each
    /// of the repeats (evidence line).
    Closed(String),
    /// A repeat got an HTTP answer.
    Answered(Outcome),
    /// Closed, but the callee's RBAC counted no denial: something else closed it.
    NotRbac(String),
    /// The harness could not tell (counters unreadable, or other calls' denials kept mixing in).
    Unknown(String),
}

/// Proofs by counter run one at a time, so that one proof's calls are not counted by another.
static RBAC_PROOF: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pods behind `to` (POD[:PORT] or SERVICE[:PORT]) and the pod port it reaches.
pub(super) fn callee_port(model: &crate::model::MeshModel, to: &str) -> Option<(Vec<String>, u16)> {
    let (name, port) = crate::target::split_port(to);
    if let Some(p) = model.pods.iter().find(|p| p.name == name) {
        return Some((vec![p.name.clone()], port.unwrap_or(*p.ports.first()?)));
    }
    let svc = model.service(name)?;
    let sp = port.and_then(|p| svc.port(p)).unwrap_or(svc.default_port());
    Some((
        model.pods_of(svc).map(|p| p.name.clone()).collect(),
        sp.target_port,
    ))
}

/// Repeats `call` twice and judges each repeat by the callee's `tcp.inbound_PORT.rbac.denied`:
/// it must rise by exactly one per repeat. More than one means other scenarios' denials were
/// counted in the same window: the pair is tried again (3 times at most), then Unknown.
pub async fn network_rbac(w: &MeshWorld, to: &str, call: &Call) -> NetworkRbac {
    let model = crate::declared::model(w.target.manifests());
    let Some((pods, port)) = callee_port(&model, to) else {
        return NetworkRbac::Unknown(format!("no pod or service {to} in the mesh"));
    };
    let stat = format!("tcp.inbound_{port}.rbac.denied");
    let denied = || async {
        let mut sum = 0;
        for p in &pods {
            sum += crate::target::stat(&*w.target, p, &stat)
                .await
                .map_err(|e| format!("reading {stat} of {p}: {e:#}"))?;
        }
        Ok::<u64, String>(sum)
    };
    let _one_at_a_time = RBAC_PROOF.lock().await;
    'attempt: for _ in 0..3 {
        let mut last = None;
        for _ in 0..2 {
            let before = match denied().await {
                Ok(n) => n,
                Err(e) => return NetworkRbac::Unknown(e),
            };
            let o = match w.target.call(call).await {
                Ok(o) => o,
                Err(e) => return NetworkRbac::Unknown(format!("repeating the call: {e:#}")),
            };
            let after = match denied().await {
                Ok(n) => n,
                Err(e) => return NetworkRbac::Unknown(e),
            };
            if o.status().is_some() {
                return NetworkRbac::Answered(o);
            }
            match after - before {
                0 => {
                    return NetworkRbac::NotRbac(format!(
                        "{to}: {} but {stat} of {} stayed {before}",
                        o.summary(),
                        pods.join(",")
                    ));
                }
                1 => last = Some(o),
                _ => continue 'attempt,
            }
        }
        let o = last.expect("two repeats counted");
        return NetworkRbac::Closed(format!(
            "{to}: closed without an HTTP answer twice more ({}), and {stat} of {} rose by exactly one each time",
            o.summary(),
            pods.join(",")
        ));
    }
    NetworkRbac::Unknown(format!(
        "{stat} kept counting other calls' denials too (3 tries), so this call's denial could not be told apart"
    ))
}

/// A TCP port's refusal: no HTTP answer, and the callee's network RBAC counting exactly this
/// call's denials (so a dead proxy, a port nobody serves, or other scenarios' denials cannot
/// pass for it).
async fn closed_by_rbac(w: &mut MeshWorld) {
    let (desc, o) = observed(w);
    let (desc, o) = (desc.to_string(), o.clone());
    if matches!(o, Outcome::Response { .. }) {
        broken!(
            "{desc}: expected the connection closed by the callee's RBAC, got {}",
            o.summary()
        );
    }
    let Some(call) = w.last_call.clone() else {
        unchecked!("no call was made before this step");
    };
    match network_rbac(w, &call.to, &call).await {
        NetworkRbac::Closed(proof) => w.evidence(format!("n=3: {desc}: {}; {proof}", o.summary())),
        NetworkRbac::Answered(again) => {
            broken!("{desc}: repeated, it got {}", again.summary())
        }
        NetworkRbac::NotRbac(why) => unchecked!(
            "{desc}: {}, but the callee's network RBAC did not deny it ({why}): the connection was closed by something else",
            o.summary()
        ),
        NetworkRbac::Unknown(why) => unchecked!("{desc}: {}; {why}", o.summary()),
    }
}

#[then(regex = r"^the response status is (\d+)$")]
async fn status_is(w: &mut MeshWorld, status: u16) {
    let (desc, o) = observed(w);
    promise!(
        o.status() == Some(status),
        "{desc}: expected HTTP {status}, got {}",
        o.summary()
    );
    let line = format!("n=1: {desc}: HTTP {status}");
    w.evidence(line);
}

#[then(regex = r#"^the response body is "(.*)"$"#)]
async fn body_is(w: &mut MeshWorld, body: String) {
    let (desc, o) = observed(w);
    promise!(
        o.body() == Some(body.as_str()),
        "{desc}: expected body {body:?}, got {}",
        o.summary()
    );
    let line = format!("n=1: {desc}: body {body:?}");
    w.evidence(line);
}

#[then(regex = r#"^the response has header (\S+)(?: "(.*)")?$"#)]
async fn has_header(w: &mut MeshWorld, name: String, value: String) {
    let (desc, o) = observed(w);
    let got = o.header(&name);
    promise!(
        got.is_some(),
        "{desc}: expected header {name}, got {}",
        o.summary()
    );
    if !value.is_empty() {
        promise!(
            got == Some(value.as_str()),
            "{desc}: header {name} is {got:?}, expected {value:?}"
        );
    }
    let line = format!("n=1: {desc}: header {name}: {}", got.unwrap_or_default());
    w.evidence(line);
}

#[then(regex = r"^the upstream sees the caller identity (\S+)$")]
async fn upstream_identity(w: &mut MeshWorld, spiffe: String) {
    let (desc, o) = observed(w);
    let Some(echo) = o.json() else {
        broken!(
            "{desc}: the answer is not the agent's echo: {}",
            o.summary()
        );
    };
    let caller = echo["caller"].as_str().map(str::to_string);
    promise!(
        caller.as_deref() == Some(spiffe.as_str()),
        "{desc}: the callee saw caller identity {caller:?} (from x-forwarded-client-cert), expected {spiffe}"
    );
    w.evidence(format!("n=1: {desc}: the callee saw {spiffe}"));
}

#[when(
    regex = r"^(?P<workload>\S+) sends (?P<service>\S+) (\d+) requests at (\S+), one every (\d+) ms$"
)]
async fn workload_sends_paced(
    w: &mut MeshWorld,
    from: String,
    to: String,
    n: usize,
    path: String,
    every_ms: u64,
) {
    let call = workload_call(&from, &to, &path);
    let every = Duration::from_millis(every_ms);
    w.batch = Some(paced(w.target.clone(), n, every, call).await);
    w.marks.insert("traffic".into(), std::time::Instant::now());
}

#[then(regex = r"^at least (\d+) of those requests were answered (\d+)$")]
async fn at_least_answered(w: &mut MeshWorld, least: usize, status: u16) {
    let b = w.batch();
    // A request nothing answered (no proxy listening, a reset) says nothing of the mesh's
    // answer: the count would be short for the harness's reason, not the mesh's.
    if let Some(why) = b.outcomes.iter().find_map(unreachable) {
        unchecked!("{why}");
    }
    if b.outcomes.is_empty() {
        unchecked!("no request was sent before this step");
    }
    let answered = b
        .outcomes
        .iter()
        .filter(|o| o.status() == Some(status))
        .count();
    promise!(
        answered >= least,
        "{answered} of {} requests were answered {status}, fewer than {least}",
        b.outcomes.len()
    );
    w.evidence(format!(
        "n={}: {answered} answered {status}",
        b.outcomes.len()
    ));
}

#[then(regex = r"^every response is (\d+)$")]
async fn every_response_is(w: &mut MeshWorld, status: u16) {
    let line = judge_every(w.batch(), &format!("the answer is {status}"), |o| {
        o.status() == Some(status)
    });
    w.evidence(line);
}

#[given(regex = r"^(?P<pod>\S+) answers every request with status (\d+)$")]
async fn pod_fails(w: &mut MeshWorld, pod: String, status: u16) {
    set_fault(w, &pod, Fault::status(status)).await;
}

#[given(regex = r"^every (?P<service>\S+) replica answers every request with status (\d+)$")]
async fn service_fails(w: &mut MeshWorld, service: String, status: u16) {
    fault_every_replica(w, &service, Fault::status(status)).await;
}

#[given(regex = r"^every (?P<service>\S+) replica takes (\d+) ms to answer$")]
#[when(regex = r"^every (?P<service>\S+) replica takes (\d+) ms to answer$")]
async fn service_slow(w: &mut MeshWorld, service: String, ms: u64) {
    fault_every_replica(w, &service, Fault::delay_ms(ms)).await;
}

#[given(regex = r"^every (?P<service>\S+) replica hangs$")]
async fn service_hangs(w: &mut MeshWorld, service: String) {
    fault_every_replica(w, &service, Fault::hang()).await;
}

#[given(regex = r"^every (?P<service>\S+) replica holds every request until released$")]
async fn service_holds(w: &mut MeshWorld, service: String) {
    fault_every_replica(w, &service, Fault::hold()).await;
}

pub async fn fault_every_replica(w: &mut MeshWorld, service: &str, fault: Fault) {
    let delay = Duration::from_millis(fault.delay_ms.unwrap_or(0));
    w.fault_delays.insert(service.to_string(), delay);
    for pod in pods_of(w, service) {
        set_fault(w, &pod.name, fault.clone()).await;
    }
    // Steps judging what the fault causes (an alert) measure from here.
    w.marks
        .insert("condition".into(), std::time::Instant::now());
}

pub async fn set_fault(w: &mut MeshWorld, pod: &str, fault: Fault) {
    // Journal first, so the after-hook reverts even a half-applied fault.
    w.faulted_pods.push(pod.to_string());
    if let Err(e) = w.target.set_fault(pod, fault).await {
        unchecked!("setting a fault on {pod}: {e:#}");
    }
}

/// Clears the faults of a service's pods now (the after-hook would anyway).
pub async fn clear_faults(w: &mut MeshWorld, service: &str) {
    for pod in pods_of(w, service) {
        if let Err(e) = w.target.set_fault(&pod.name, Fault::default()).await {
            unchecked!("clearing the fault on {}: {e:#}", pod.name);
        }
    }
}

/// Requests a service's pods have received so far, summed.
pub async fn requests_served(w: &MeshWorld, service: &str) -> u64 {
    let mut total = 0;
    for pod in pods_of(w, service) {
        total += served_by(w, &pod.name).await;
    }
    total
}

/// Requests one pod's agent has received so far.
pub async fn served_by(w: &MeshWorld, pod: &str) -> u64 {
    match w.target.agent_stats(pod).await {
        Ok(s) => s.requests,
        Err(e) => unchecked!("reading what {pod} served: {e:#}"),
    }
}

/// Counters and gauges `names` (without the `cluster.<c>.` prefix) of `cluster` on `proxy`.
pub async fn cluster_stats(w: &MeshWorld, proxy: &str, cluster: &str, names: &[&str]) -> Vec<u64> {
    let prefix = format!("cluster.{cluster}.");
    let filter = format!(
        "^{}({})$",
        crate::regex_literal::escape(&prefix),
        names.join("|")
    );
    let body = match crate::target::stats_matching(w.target.as_ref(), proxy, &filter).await {
        Ok(b) => b,
        Err(e) => unchecked!("reading {proxy}'s Envoy stats: {e:#}"),
    };
    names
        .iter()
        .map(|n| crate::envoy::stats::parse_stat(&body, &format!("{prefix}{n}")).unwrap_or(0))
        .collect()
}

/// The pod a workload (a pod, or a service by its first pod) calls from.
pub fn caller_pod(w: &MeshWorld, from: &str) -> String {
    // A workload given by service name calls from its first pod: its Envoy holds the pool.
    match w
        .target
        .pods()
        .into_iter()
        .find(|p| p.name == from || p.service == from)
    {
        Some(p) => p.name,
        None => unchecked!("no pod or service named {from}"),
    }
}

/// The rows of a step's data table after its header (`shape` says what the table should look
/// like, for the message when it is missing).
pub fn table<'a>(
    step: &'a cucumber::gherkin::Step,
    shape: &str,
) -> (&'a [String], &'a [Vec<String>]) {
    match step.table.as_ref().and_then(|t| t.rows.split_first()) {
        Some((header, rows)) if !rows.is_empty() => (header, rows),
        _ => unchecked!("the step needs a table: {shape}"),
    }
}
