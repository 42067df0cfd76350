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

use super::expect::Judgement;
use super::journal::{Entry, Journal, now_ms};
use super::ledger::Ledger;
use super::observe::{self, ProbeResult};
use super::plan::Plan;
use super::profile::Profile;
use super::timeline::Timeline;
use super::traffic::{Stream, Traffic};
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
    /// Where the live view is served to Prometheus, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
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
    pub counters_before: Vec<(u64, u64)>,
    #[serde(skip)]
    pub counters_after: Vec<(u64, u64)>,
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
    /// The mesh's alerts that fired during the run (when the profile names alerts).
    pub alerts: Vec<super::alerts::Firing>,
    pub end_s: f64,
}

/// The end of a run.
pub struct Outcome {
    pub verdict: ChaosVerdict,
    pub report_dir: PathBuf,
    pub summary: PathBuf,
}

pub(super) struct Shared {
    pub(super) timeline: Timeline,
    pub(super) record: Record,
}

pub(super) struct Core {
    pub(super) x: Arc<Experiment>,
    pub(super) ledger: Ledger,
    pub(super) traffic: Arc<Traffic>,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) probes: Arc<Mutex<Vec<ProbeResult>>>,
    /// When each probe began failing.
    pub(super) failing_since: BTreeMap<String, Instant>,
    pub(super) start: Instant,
    pub(super) high_error_from: Option<u64>,
    pub(super) last_beat: Option<Instant>,
    /// The live view as Prometheus text, refreshed each heartbeat, and what serves it.
    pub(super) metrics: Option<(Arc<Mutex<String>>, meshtest_load::metrics::Exporter)>,
}

impl Core {
    pub(super) fn event(&self, name: &str, fields: serde_json::Value) {
        self.shared
            .lock()
            .expect("shared lock")
            .timeline
            .event(name, fields);
    }

    pub(super) fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub(super) fn with_fault<R>(&self, i: usize, f: impl FnOnce(&mut FaultRun) -> R) -> R {
        f(&mut self.shared.lock().expect("shared lock").record.faults[i])
    }

    pub(super) async fn pause(&self, point: &str) {
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
    let alert_watch = match (x.profile.alerts.is_empty(), x.target.prometheus_url()) {
        (false, Some(url)) => Some(super::alerts::spawn_watch(
            crate::prometheus::PrometheusApi::new(&url)?,
            shared.clone(),
            start,
            limit,
        )),
        _ => None,
    };
    let metrics = match x.metrics_listen {
        Some(addr) => {
            let text = Arc::new(Mutex::new(String::new()));
            let served = text.clone();
            let exporter = meshtest_load::metrics::Exporter::serve(
                addr,
                Arc::new(move || served.lock().expect("metrics lock").clone()),
            )
            .await
            .map_err(|e| crate::error::InputError::new("--metrics-listen", e.to_string()))?;
            if x.progress {
                eprintln!(
                    "meshtest: chaos metrics at http://{}/metrics",
                    exporter.addr
                );
            }
            Some((text, exporter))
        }
        None => None,
    };
    let core = Core {
        metrics,
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
    if let Some(w) = alert_watch {
        w.abort();
    }
    shared.lock().expect("shared lock").record.end_s = start.elapsed().as_secs_f64();
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
    let at = shared.lock().expect("shared lock").timeline.t();
    let started = Instant::now();
    let failed = ledger.revert_all(x.target.as_ref()).await;
    let revert_ms = started.elapsed().as_millis() as u64;
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
    // Faults the run was stopped in the middle of: reverted here, or not.
    let still_live: Vec<String> = ledger.live().into_iter().map(|(id, _)| id).collect();
    let shared = &mut *s;
    for (f, run) in x.plan.faults.iter().zip(shared.record.faults.iter_mut()) {
        if run.applied_at_s.is_none() || run.reverted_at_s.is_some() {
            continue;
        }
        let gone = f.injections.iter().all(|(id, _)| !still_live.contains(id));
        run.reverted_at_s = Some(at);
        run.revert_ms = Some(revert_ms);
        run.reverted = gone;
        if !gone {
            run.errors.push("not reverted when the run stopped".into());
        }
        shared.timeline.event(
            "fault_reverted",
            json!({"fault": f.id, "by": "cleanup", "ms": revert_ms, "reverted": gone}),
        );
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
