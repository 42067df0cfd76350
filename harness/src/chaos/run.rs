//! Runs an experiment: load starts, the steady state is measured, each fault is journaled,
//! applied, verified in the data plane and reverted on its schedule, guardrails are checked
//! every second, and the steady state must come back. Whatever ends the run (its end, an abort,
//! Ctrl-C, SIGTERM, an error, a panic) everything it applied is reverted before it returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use super::expect::{self, Judgement};
use super::journal::{Entry, Journal, now_ms};
use super::ledger::Ledger;
use super::observe::{self, ProbeResult};
use super::plan::{Plan, PlannedFault};
use super::profile::{Expect, Profile};
use super::timeline::Timeline;
use super::traffic::{Stream, Traffic, Window};
use crate::local::owner::Owner;
use crate::model::MeshModel;
use crate::target::Target;
use crate::token::TokenSpec;

/// Everything an experiment needs, resolved and checked.
pub struct Experiment {
    pub profile: Profile,
    pub plan: Plan,
    pub target: Arc<dyn Target>,
    pub model: MeshModel,
    pub journal_dir: PathBuf,
    pub report_dir: PathBuf,
    /// Attached runs: the state file of the mesh acted on (journaled for `chaos revert`).
    pub attached_state: Option<PathBuf>,
    /// This process owns the mesh, so it keeps the leases (`Target::tick`).
    pub keeps_leases: bool,
    pub progress: bool,
    /// Test hook: stop at this point (`before-journal`, `journaled`, `applied:KIND`,
    /// `reverting`) until killed.
    pub pause_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChaosVerdict {
    Holds,
    Broken,
    Unchecked,
    Aborted,
    RevertFailed,
}

impl ChaosVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ChaosVerdict::Holds => "HOLDS",
            ChaosVerdict::Broken => "BROKEN",
            ChaosVerdict::Unchecked => "UNCHECKED",
            ChaosVerdict::Aborted => "ABORTED",
            ChaosVerdict::RevertFailed => "REVERT_FAILED",
        }
    }

    /// 0 holds; 1 broken, aborted, or not reverted; 3 could not check.
    pub fn exit_code(self) -> u8 {
        match self {
            ChaosVerdict::Holds => crate::error::exit::OK,
            ChaosVerdict::Unchecked => crate::error::exit::UNCHECKED,
            _ => crate::error::exit::FAILED,
        }
    }
}

/// What happened to one fault.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRun {
    pub applied_at_s: Option<f64>,
    pub apply_ms: Option<u64>,
    pub verified_at_s: Option<f64>,
    /// From the end of the apply to the data plane showing it.
    pub verify_ms: Option<u64>,
    pub verification: String,
    pub reverted_at_s: Option<f64>,
    pub revert_ms: Option<u64>,
    pub reverted: bool,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub subset_before: Vec<(u64, u64)>,
    #[serde(skip)]
    pub subset_after: Vec<(u64, u64)>,
    #[serde(skip)]
    pub watchers: Vec<Judgement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AbortRecord {
    pub rule: String,
    pub tripped_at_s: f64,
    pub trip_to_reverted_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// From the last revert to the steady state being back (None: it did not come back).
    pub back_after_ms: Option<u64>,
    pub within_ms: u64,
    pub detail: String,
}

/// The record of a run, for judging and the reports.
#[derive(Debug, Default)]
pub struct Record {
    pub faults: Vec<FaultRun>,
    pub judgements: Vec<(String, Judgement)>,
    pub abort: Option<AbortRecord>,
    pub recovery: Option<Recovery>,
    pub interrupted: Option<String>,
    pub error: Option<String>,
    pub skipped_faults: Option<String>,
    /// Seconds of load in the `after` window.
    pub after: Option<(u64, u64)>,
    /// Fault ids the target still held at the end.
    pub left_behind: Vec<String>,
    pub end_s: f64,
}

/// The end of a run.
pub struct Outcome {
    pub verdict: ChaosVerdict,
    pub report_dir: PathBuf,
    pub summary: PathBuf,
}

struct Shared {
    timeline: Timeline,
    record: Record,
}

struct Core {
    x: Arc<Experiment>,
    ledger: Ledger,
    traffic: Arc<Traffic>,
    shared: Arc<Mutex<Shared>>,
    probes: Arc<Mutex<Vec<ProbeResult>>>,
    /// When each probe began failing.
    failing_since: BTreeMap<String, Instant>,
    start: Instant,
    high_error_from: Option<u64>,
    last_beat: Option<Instant>,
}

impl Core {
    fn event(&self, name: &str, fields: serde_json::Value) {
        self.shared
            .lock()
            .expect("shared lock")
            .timeline
            .event(name, fields);
    }

    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn with_fault<R>(&self, i: usize, f: impl FnOnce(&mut FaultRun) -> R) -> R {
        f(&mut self.shared.lock().expect("shared lock").record.faults[i])
    }

    async fn pause(&self, point: &str) {
        if self.x.pause_at.as_deref() == Some(point) {
            eprintln!("meshtest: paused at {point} (test hook; kill me)");
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
    }
}

/// Runs `x`; `stop` resolves on Ctrl-C / SIGTERM.
pub async fn run(
    x: Experiment,
    stop: impl std::future::Future<Output = String>,
) -> Result<Outcome> {
    let x = Arc::new(x);
    std::fs::create_dir_all(&x.report_dir)
        .with_context(|| format!("creating {}", x.report_dir.display()))?;
    let streams = streams(&x).await?;
    let journal = Journal::create(&x.journal_dir, &x.plan.run_id)?;
    let ledger = Ledger::new(journal, &x.plan.run_id);
    ledger.write(&Entry::Start {
        run_id: x.plan.run_id.clone(),
        profile: x.profile.name.clone(),
        owner: Owner::current(),
        target: x.target.kind().into(),
        state: x.attached_state.clone(),
        at_unix_ms: now_ms(),
    })?;
    let start = Instant::now();
    let notes = x.journal_dir.join(format!("{}.notes.jsonl", x.plan.run_id));
    let timeline = Timeline::create(&x.report_dir.join("timeline.jsonl"), notes, start)?;
    let limit = x.plan.span() + x.profile.steady_state.recover_within.0 + Duration::from_secs(5);
    let traffic = Arc::new(Traffic::start(streams, limit));
    let shared = Arc::new(Mutex::new(Shared {
        timeline,
        record: Record {
            faults: vec![FaultRun::default(); x.plan.faults.len()],
            ..Record::default()
        },
    }));
    let keeper = x.keeps_leases.then(|| spawn_keeper(x.target.clone()));
    let probes = Arc::new(Mutex::new(Vec::new()));
    let prober = spawn_prober(x.clone(), probes.clone(), shared.clone(), limit).await;
    let core = Core {
        x: x.clone(),
        ledger: ledger.clone(),
        traffic: traffic.clone(),
        shared: shared.clone(),
        probes,
        failing_since: BTreeMap::new(),
        start,
        high_error_from: None,
        last_beat: None,
    };
    shared.lock().expect("shared lock").timeline.event("start", json!({"run_id": x.plan.run_id, "profile": x.profile.name, "seed": x.plan.seed, "journal": ledger.journal_path()}));
    // The experiment runs in its own task: a panic there is caught here, and cleanup follows.
    let mut task = tokio::spawn(core.run());
    tokio::select! {
        r = &mut task => {
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(e) if e.is_panic() => Some(format!("meshtest bug (panic): {}", panic_text(e))),
                Err(e) => Some(e.to_string()),
            };
            shared.lock().expect("shared lock").record.error = err;
        }
        why = stop => {
            task.abort();
            let _ = (&mut task).await;
            let mut s = shared.lock().expect("shared lock");
            s.timeline.event("interrupted", json!({"signal": why}));
            s.record.interrupted = Some(why);
        }
    }
    cleanup(&x, &ledger, &shared).await;
    prober.abort();
    if !traffic
        .drain(x.profile.load.value.timeout.0 + Duration::from_secs(5))
        .await
    {
        shared
            .lock()
            .expect("shared lock")
            .timeline
            .event("load", json!({"drained": false}));
    }
    if let Some(k) = keeper {
        k.abort();
    }
    let verdict = super::judge::judge(
        &x,
        &traffic,
        &mut shared.lock().expect("shared lock").record,
    );
    let summary = {
        let mut s = shared.lock().expect("shared lock");
        s.record.end_s = start.elapsed().as_secs_f64();
        s.timeline
            .event("verdict", json!({"verdict": verdict.as_str()}));
        super::report::write(&x, &traffic, &s.record, &s.timeline, verdict)?
    };
    ledger.write(&Entry::Finished {
        verdict: verdict.as_str().into(),
        at_unix_ms: now_ms(),
    })?;
    Ok(Outcome {
        verdict,
        report_dir: x.report_dir.clone(),
        summary,
    })
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Reverts whatever is still live and checks the target holds nothing of this run.
async fn cleanup(x: &Experiment, ledger: &Ledger, shared: &Arc<Mutex<Shared>>) {
    let live = ledger.live();
    if !live.is_empty() {
        shared.lock().expect("shared lock").timeline.event(
            "cleanup",
            json!({"reverting": live.iter().map(|(id, _)| id).collect::<Vec<_>>()}),
        );
    }
    let failed = ledger.revert_all(x.target.as_ref()).await;
    let held = match x.target.injections().await {
        Ok(list) => list
            .into_iter()
            .filter(|a| a.owner == x.plan.run_id)
            .map(|a| a.id)
            .collect(),
        Err(e) => vec![format!("(could not list the target's faults: {e:#})")],
    };
    let mut s = shared.lock().expect("shared lock");
    for f in failed {
        s.timeline
            .event("revert_failed", json!({"id": f.id, "error": f.error}));
    }
    if !held.is_empty() {
        s.timeline.event("left_behind", json!({"ids": held}));
    }
    s.record.left_behind = held;
}

/// The load's streams, with a JWT minted per tenant (unique to the run).
async fn streams(x: &Experiment) -> Result<Vec<Stream>> {
    let load = &x.profile.load.value;
    let base = x
        .target
        .ingress_url(false)
        .context("the target has no HTTP ingress to send load through")?;
    let rates = super::traffic::split_rate(
        load.rate,
        &load
            .routes
            .iter()
            .map(|r| r.value.weight)
            .collect::<Vec<_>>(),
    );
    let tokens = tokens(x).await?;
    let mut out = Vec::new();
    for (r, rate) in load.routes.iter().zip(rates) {
        let r = &r.value;
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(t) = &r.token {
            headers.push((
                "authorization".into(),
                format!("Bearer {}", tokens[&t.tenant]),
            ));
        }
        out.push(Stream::new(
            r.key(),
            &super::traffic::ingress_url(&base, &r.path),
            &r.method,
            &headers,
            rate,
            load.timeout.0,
        )?);
    }
    Ok(out)
}

/// JWTs by tenant, for load routes and probes; each tenant's id gets the run id, so a rate
/// limit bucket is the run's own.
pub async fn tokens(x: &Experiment) -> Result<BTreeMap<String, String>> {
    let mut wanted: Vec<&super::profile::TokenFor> = x
        .profile
        .load
        .value
        .routes
        .iter()
        .filter_map(|r| r.value.token.as_ref())
        .collect();
    wanted.extend(
        x.profile
            .steady_state
            .probes
            .iter()
            .filter_map(|p| p.value.call.as_ref()?.token.as_ref()),
    );
    let mut out = BTreeMap::new();
    for t in wanted {
        if out.contains_key(&t.tenant) {
            continue;
        }
        let spec = TokenSpec::new(
            &format!("{}-{}", t.tenant, x.plan.run_id),
            super::profile::tier(t),
        );
        let token = x
            .target
            .mint_token(&spec)
            .await
            .context("minting a JWT for the load")?;
        out.insert(t.tenant.clone(), token);
    }
    Ok(out)
}

fn spawn_keeper(target: Arc<dyn Target>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = target.tick().await {
                eprintln!("meshtest: ending an expired fault: {e:#}");
            }
        }
    })
}

/// Runs the probes once a second, recording each result.
async fn spawn_prober(
    x: Arc<Experiment>,
    latest: Arc<Mutex<Vec<ProbeResult>>>,
    shared: Arc<Mutex<Shared>>,
    limit: Duration,
) -> tokio::task::JoinHandle<()> {
    let tokens = tokens(&x).await.unwrap_or_default();
    let mut base = BTreeMap::new();
    for p in &x.profile.steady_state.probes {
        if let Some(s) = &p.value.stat {
            base.insert(
                p.value.name.clone(),
                observe::stat_value(x.target.as_ref(), &s.proxy, &s.name).await,
            );
        }
    }
    tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < limit + Duration::from_secs(60) {
            let mut results = Vec::new();
            for p in &x.profile.steady_state.probes {
                results.push(observe::probe(x.target.as_ref(), &p.value, &tokens, &base).await);
            }
            {
                let mut s = shared.lock().expect("shared lock");
                for r in &results {
                    s.timeline.event(
                        "probe",
                        json!({"probe": r.name, "ok": r.ok, "detail": r.detail}),
                    );
                }
            }
            *latest.lock().expect("probe lock") = results;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

impl Core {
    async fn run(mut self) -> Result<()> {
        let x = self.x.clone();
        self.phase_until(x.plan.before, "before").await;
        if self.aborted() {
            return Ok(());
        }
        let before = self.settled_window(0, x.plan.before.as_secs()).await;
        if let Some(why) = self.out_of_steady_state(&before, &self.traffic.routes().to_vec()) {
            let msg = format!(
                "the mesh was not in its steady state before any fault ({why}): no fault was injected"
            );
            self.event("skipped", json!({"why": msg}));
            self.shared
                .lock()
                .expect("shared lock")
                .record
                .skipped_faults = Some(msg);
            return Ok(());
        }
        self.method().await?;
        self.recover().await;
        Ok(())
    }

    fn aborted(&self) -> bool {
        self.shared
            .lock()
            .expect("shared lock")
            .record
            .abort
            .is_some()
    }

    /// Waits (heartbeat every second) until `until` from the start.
    async fn phase_until(&mut self, until: Duration, name: &str) {
        self.event("phase", json!({"phase": name}));
        while self.start.elapsed() < until && !self.aborted() {
            self.heartbeat().await;
            let left = until.saturating_sub(self.start.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
    }

    /// Waits (bounded by the load's timeout) for seconds [from, to) to complete, then merges them.
    async fn settled_window(&self, from: u64, to: u64) -> Window {
        let deadline =
            Instant::now() + self.x.profile.load.value.timeout.0 + Duration::from_secs(2);
        while self.traffic.complete_seconds() < to && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.traffic.window(from, to, &[])
    }

    /// Why a window is outside the steady state, if it is.
    fn out_of_steady_state(&self, w: &Window, _routes: &[String]) -> Option<String> {
        let ss = &self.x.profile.steady_state;
        match w.error_rate() {
            None => return Some("no request completed".into()),
            Some(r) if r >= ss.error_rate_below.fraction() => {
                return Some(format!(
                    "error rate {:.2}% is not below {}%: {}",
                    r * 100.0,
                    ss.error_rate_below.0,
                    w.describe()
                ));
            }
            _ => {}
        }
        match w.quantile(0.99) {
            Some(p) if p >= ss.p99_below.0 => Some(format!(
                "p99 {:.1} ms is not below {}: {}",
                p.as_secs_f64() * 1000.0,
                meshtest_load::duration::human(ss.p99_below.0),
                w.describe()
            )),
            _ => None,
        }
    }

    /// The fault timeline: apply, verify and revert each fault on its schedule.
    async fn method(&mut self) -> Result<()> {
        let x = self.x.clone();
        let mut verifiers: Vec<Option<tokio::task::JoinHandle<Option<(Instant, String)>>>> =
            (0..x.plan.faults.len()).map(|_| None).collect();
        let mut watchers: Vec<Vec<tokio::task::JoinHandle<Judgement>>> =
            (0..x.plan.faults.len()).map(|_| vec![]).collect();
        let mut applied = vec![false; x.plan.faults.len()];
        let mut reverted = vec![false; x.plan.faults.len()];
        while reverted.iter().any(|r| !r) {
            if self.aborted() {
                break;
            }
            let now = self.start.elapsed();
            for (i, f) in x.plan.faults.iter().enumerate() {
                if !applied[i] && now >= f.start {
                    applied[i] = true;
                    verifiers[i] = Some(self.apply(i, f).await?);
                }
                if verifiers[i].as_ref().is_some_and(|v| v.is_finished()) {
                    let done = verifiers[i].take().expect("checked").await.ok().flatten();
                    watchers[i] = self.verified(i, f, done).await;
                }
                if applied[i] && !reverted[i] && now >= f.end() {
                    reverted[i] = true;
                    if let Some(v) = verifiers[i].take() {
                        v.abort();
                        self.verified(i, f, None).await;
                    }
                    self.revert(i, f).await;
                }
            }
            self.heartbeat().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, ws) in watchers.into_iter().enumerate() {
            for w in ws {
                if let Ok(j) = w.await {
                    self.with_fault(i, |r| r.watchers.push(j));
                }
            }
        }
        Ok(())
    }

    /// Journals and applies every injection of fault `f`; returns its verification task.
    async fn apply(
        &mut self,
        i: usize,
        f: &PlannedFault,
    ) -> Result<tokio::task::JoinHandle<Option<(Instant, String)>>> {
        let x = self.x.clone();
        let step = &x.profile.method[f.index].value;
        if let Some(note) = &step.note {
            self.event("note", json!({"text": note, "by": "profile"}));
        }
        let baseline = match observe::evidence_stats(f.kind) {
            Some(filter) => {
                observe::counter_sum(
                    x.target.as_ref(),
                    &observe::proxies(x.target.as_ref()),
                    filter,
                )
                .await
            }
            None => 0,
        };
        self.pause("before-journal").await;
        let started = Instant::now();
        let at = self.t();
        for (n, (id, injection)) in f.injections.iter().enumerate() {
            self.event("fault_journaled", json!({"fault": f.id, "id": id, "injection": injection, "inverse": injection.inverse(), "lease_ms": f.lease.as_millis() as u64}));
            let result = self
                .ledger
                .apply(x.target.as_ref(), &f.name, id, injection, f.lease)
                .await;
            if n == 0 {
                self.pause("journaled").await;
            }
            if let Err(e) = result {
                let msg = format!("{e:#}");
                self.event(
                    "fault_failed",
                    json!({"fault": f.id, "id": id, "error": msg}),
                );
                self.with_fault(i, |r| r.errors.push(format!("{id}: {msg}")));
            }
        }
        let apply_ms = started.elapsed().as_millis() as u64;
        self.with_fault(i, |r| {
            r.applied_at_s = Some(at);
            r.apply_ms = Some(apply_ms);
        });
        self.event("fault_applied", json!({"fault": f.id, "name": f.name, "kind": f.kind, "target": f.target(), "apply_ms": apply_ms}));
        self.pause(&format!("applied:{}", f.kind)).await;
        let (target, fault, within) = (x.target.clone(), f.clone(), step.verify_within());
        Ok(tokio::spawn(async move {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if let Ok(Some(evidence)) = observe::shows(target.as_ref(), &fault, baseline).await
                {
                    return Some((Instant::now(), evidence));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }))
    }

    /// Records the verification; starts the fault's Envoy-side watchers when it is effective.
    async fn verified(
        &mut self,
        i: usize,
        f: &PlannedFault,
        done: Option<(Instant, String)>,
    ) -> Vec<tokio::task::JoinHandle<Judgement>> {
        let x = self.x.clone();
        let Some((when, evidence)) = done else {
            let within = x.profile.method[f.index].value.verify_within();
            let msg = format!(
                "fault not effective: the data plane did not show it within {} (checked: {})",
                meshtest_load::duration::human(within),
                super::plan::verified_by(f.kind)
            );
            self.event("fault_not_effective", json!({"fault": f.id, "why": msg}));
            self.with_fault(i, |r| r.verification = msg);
            return vec![];
        };
        let at = when.duration_since(self.start).as_secs_f64();
        let applied_at = self.with_fault(i, |r| r.applied_at_s.unwrap_or(at));
        let apply_ms = self.with_fault(i, |r| r.apply_ms.unwrap_or(0));
        let verify_ms = (((at - applied_at) * 1000.0) as u64).saturating_sub(apply_ms);
        self.event(
            "fault_verified",
            json!({"fault": f.id, "evidence": evidence, "verify_ms": verify_ms}),
        );
        self.with_fault(i, |r| {
            r.verified_at_s = Some(at);
            r.verify_ms = Some(verify_ms);
            r.verification = evidence;
        });
        let mut before = Vec::new();
        let mut tasks = Vec::new();
        for e in &x.profile.method[f.index].value.expect {
            match &e.value {
                Expect::SubsetUnaffected { service, subset } => {
                    before.push(
                        expect::subset_counters(x.target.as_ref(), &x.model, service, subset).await,
                    );
                }
                Expect::EjectedWithin { within, by } => {
                    let (target, model, by, pods, within, hyp) = (
                        x.target.clone(),
                        x.model.clone(),
                        by.clone(),
                        f.pods.clone(),
                        within.0,
                        e.value.describe(),
                    );
                    let gateway = f.injections.iter().all(|(_, i)| expect::gateway_errors(i));
                    tasks.push(tokio::spawn(async move {
                        expect::watch_ejection(
                            target.as_ref(),
                            &model,
                            &by,
                            &pods,
                            gateway,
                            within,
                            hyp,
                        )
                        .await
                    }));
                }
                _ => {}
            }
        }
        self.with_fault(i, |r| r.subset_before = before);
        tasks
    }

    async fn revert(&mut self, i: usize, f: &PlannedFault) {
        let x = self.x.clone();
        let mut after = Vec::new();
        for e in &x.profile.method[f.index].value.expect {
            if let Expect::SubsetUnaffected { service, subset } = &e.value {
                after.push(
                    expect::subset_counters(x.target.as_ref(), &x.model, service, subset).await,
                );
            }
        }
        let at = self.t();
        let started = Instant::now();
        let mut errors = Vec::new();
        for (n, (id, _)) in f.injections.iter().enumerate().rev() {
            let r = self.ledger.revert(x.target.as_ref(), id).await;
            self.event(
                "fault_reverted",
                json!({"fault": f.id, "id": id, "found": r.found, "ms": r.ms, "error": r.error}),
            );
            if let Some(e) = r.error {
                errors.push(format!("{id}: {e}"));
            }
            if n + 1 == f.injections.len() {
                self.pause("reverting").await;
            }
        }
        let revert_ms = started.elapsed().as_millis() as u64;
        self.with_fault(i, |r| {
            r.reverted_at_s = Some(at);
            r.revert_ms = Some(revert_ms);
            r.reverted = errors.is_empty();
            r.errors.extend(errors);
            r.subset_after = after;
        });
    }

    /// Once a second (calls in between do nothing): notes, the live view, and the guardrails.
    async fn heartbeat(&mut self) {
        if self
            .last_beat
            .is_some_and(|t| t.elapsed() < Duration::from_millis(950))
        {
            return;
        }
        self.last_beat = Some(Instant::now());
        let notes = self
            .shared
            .lock()
            .expect("shared lock")
            .timeline
            .take_notes();
        for n in notes {
            if self.x.progress {
                eprintln!("meshtest: note: {n}");
            }
        }
        let probes = self.probes.lock().expect("probe lock").clone();
        for p in &probes {
            if p.ok {
                self.failing_since.remove(&p.name);
            } else {
                self.failing_since
                    .entry(p.name.clone())
                    .or_insert_with(Instant::now);
            }
        }
        if self.x.progress {
            eprintln!(
                "{}",
                super::live::line(&self.x, &self.traffic, &self.ledger, &probes, self.start)
            );
        }
        if let Some(rule) = self.tripped() {
            self.abort(rule).await;
        }
    }

    /// The first guardrail that trips, if any.
    fn tripped(&mut self) -> Option<String> {
        let a = &self.x.profile.abort;
        let hold = a.r#for.map_or(Duration::from_secs(3), |d| d.0);
        if let Some(d) = a.deadline
            && self.start.elapsed() > d.0
        {
            return Some(format!(
                "the experiment ran past its deadline of {}",
                meshtest_load::duration::human(d.0)
            ));
        }
        if let Some(name) = &a.probe_failing
            && let Some(since) = self.failing_since.get(name)
            && since.elapsed() >= hold
        {
            return Some(format!(
                "probe {name} failed for {}",
                meshtest_load::duration::human(hold)
            ));
        }
        if let Some(max) = a.max_pods {
            let pods: std::collections::BTreeSet<String> = self
                .ledger
                .live()
                .iter()
                .flat_map(|(_, i)| i.pods())
                .collect();
            if pods.len() > max {
                return Some(format!(
                    "{} pods faulted at once, more than {max}",
                    pods.len()
                ));
            }
        }
        if let Some(limit) = a.error_rate_above {
            let last = self.traffic.last_complete()?;
            let w = self.traffic.window(last, last + 1, &[]);
            if w.error_rate().is_some_and(|r| r > limit.fraction()) {
                let from = *self.high_error_from.get_or_insert(last);
                if last + 1 - from >= hold.as_secs().max(1) {
                    return Some(format!(
                        "the error rate stayed above {}% for {} ({})",
                        limit.0,
                        meshtest_load::duration::human(hold),
                        w.describe()
                    ));
                }
            } else {
                self.high_error_from = None;
            }
        }
        None
    }

    /// Reverts everything at once and records how long that took.
    async fn abort(&mut self, rule: String) {
        let tripped_at = self.t();
        self.event("abort", json!({"rule": rule}));
        if self.x.progress {
            eprintln!("meshtest: ABORT: {rule}: reverting every fault");
        }
        let started = Instant::now();
        let failed = self.ledger.revert_all(self.x.target.as_ref()).await;
        let ms = started.elapsed().as_millis() as u64;
        self.event("aborted", json!({"trip_to_reverted_ms": ms, "failed": failed.iter().map(|f| &f.id).collect::<Vec<_>>()}));
        let mut s = self.shared.lock().expect("shared lock");
        for f in s
            .record
            .faults
            .iter_mut()
            .filter(|f| f.applied_at_s.is_some() && f.reverted_at_s.is_none())
        {
            f.reverted_at_s = Some(tripped_at);
            f.reverted = failed.is_empty();
        }
        s.record.abort = Some(AbortRecord {
            rule,
            tripped_at_s: tripped_at,
            trip_to_reverted_ms: ms,
        });
    }

    /// After the last revert: the steady state must be back within `recover_within`, then the
    /// `after` phase is measured. "Back" is the first whole second of load sent after the
    /// revert that meets the steady state, with every probe passing and no fault of the run
    /// left on the mesh; the time reported runs from the revert to that second's start.
    async fn recover(&mut self) {
        let x = self.x.clone();
        let within = x.profile.steady_state.recover_within.0;
        let from = self.start.elapsed();
        self.event("phase", json!({"phase": "recovery"}));
        let mut k = from.as_secs_f64().ceil() as u64;
        let mut detail = String::from("no second after the last revert completed");
        let mut back = None;
        while back.is_none() && self.start.elapsed() < from + within + Duration::from_secs(1) {
            self.heartbeat().await;
            while back.is_none()
                && self.traffic.is_complete(k)
                && Duration::from_secs(k) < from + within
            {
                let w = self.traffic.window(k, k + 1, &[]);
                let probes_ok = self.probes.lock().expect("probe lock").iter().all(|p| p.ok);
                let held = observe::held(x.target.as_ref()).await.unwrap_or_default();
                let ours = held
                    .iter()
                    .any(|id| self.ledger.live().iter().any(|(l, _)| l == id));
                match (self.out_of_steady_state(&w, &[]), probes_ok, ours) {
                    (None, true, false) => {
                        back = Some((Duration::from_secs(k).saturating_sub(from), k))
                    }
                    (why, p, o) => {
                        detail = format!(
                            "second {k}: {}{}{}",
                            why.unwrap_or_default(),
                            if p { "" } else { "; a probe fails" },
                            if o { "; faults still held" } else { "" }
                        );
                        k += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovery = Recovery {
            back_after_ms: back.map(|(d, _)| d.as_millis() as u64),
            within_ms: within.as_millis() as u64,
            detail: if back.is_some() {
                "steady state back".into()
            } else {
                detail
            },
        };
        self.event("recovery", json!(recovery));
        self.shared.lock().expect("shared lock").record.recovery = Some(recovery);
        if let Some((_, second)) = back {
            let after_start = self.start.elapsed();
            self.phase_until(after_start + x.plan.after, "after").await;
            let to = self.start.elapsed().as_secs();
            self.shared.lock().expect("shared lock").record.after =
                Some((second, to.max(second + 1)));
        }
        self.traffic.stop();
    }
}
