//! The cucumber World: one per scenario, holding the target and what the scenario has seen.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::outcome::Outcome;
use crate::target::{Call, Target};

/// The target every scenario of the current run talks to (set by the runner).
static CURRENT: RwLock<Option<Arc<dyn Target>>> = RwLock::new(None);
/// Where the current run writes its reports (load histograms land here too).
static REPORT_DIR: RwLock<Option<std::path::PathBuf>> = RwLock::new(None);

pub fn set_target(target: Option<Arc<dyn Target>>, report_dir: Option<std::path::PathBuf>) {
    *CURRENT.write().expect("target lock") = target;
    *REPORT_DIR.write().expect("report dir lock") = report_dir;
}

pub fn report_dir() -> Option<std::path::PathBuf> {
    REPORT_DIR.read().expect("report dir lock").clone()
}

/// Per-scenario state. Steps record what they did so later steps can judge it and so the
/// after-hook can revert every fault, runtime override and manifest change.
#[derive(cucumber::World)]
#[world(init = Self::new)]
pub struct MeshWorld {
    pub target: Arc<dyn Target>,
    /// The last single call (its description and outcome, and the call itself).
    pub last: Option<(String, Outcome)>,
    pub last_call: Option<Call>,
    /// The last batch of calls: how many were asked for and what came back.
    pub batch: Option<Batch>,
    /// Authorization header to send on ingress calls.
    pub token: Option<String>,
    /// The issuer tokens name (a feature's "the gateway trusts tokens from issuer X"), else
    /// the mesh's own.
    pub issuer: Option<String>,
    /// Tenants by the name the feature uses -> (unique tenant id, tier).
    pub tenants: HashMap<String, (String, crate::token::Tier)>,
    /// Per tenant: how draining its bucket went.
    pub rate_limited: HashMap<String, RateLimited>,
    /// Stat values captured before the scenario acted, by (proxy, stat).
    pub stats_before: HashMap<(String, String), u64>,
    /// What to undo after the scenario.
    pub faulted_pods: Vec<String>,
    pub runtime_overrides: Vec<(String, String)>,
    pub manifests_changed: bool,
    /// Load runs of this scenario; the after-hook writes them into the run's report.
    pub loads: Vec<meshtest_load::LoadResult>,
    /// What the Then steps saw, also when they held: sample sizes, declared values, intervals.
    pub evidence: Vec<String>,
    /// False-alarm rates of this scenario's statistical steps (their sum goes in the summary).
    pub alphas: Vec<f64>,
    /// Declared values read by Given steps, by name, for the steps after them.
    pub declared: HashMap<String, f64>,
    pub started: std::time::Instant,
    /// Calls still running in the background (a pool being filled), awaited by a later step.
    pub in_flight: Vec<tokio::task::JoinHandle<Result<Outcome, String>>>,
    /// Moments later steps measure from ("ejected api-gateway-0 airtable-gateway-0").
    pub marks: HashMap<String, std::time::Instant>,
    /// Per service, the delay of the fault set on every replica: requests sent under it may
    /// end that long after it is lifted.
    pub fault_delays: HashMap<String, Duration>,
    /// How long the last single call took.
    pub last_elapsed: Duration,
    /// When the scenario's route should cut a hung request off.
    pub expected_deadline: Option<Duration>,
    /// Requests the last load step asked for.
    pub asked_load: u64,
    /// What the last fault-injection sample counted.
    pub fault_sample: Option<super::steps::FaultSample>,
    /// The last statistical sample for a weighted split: (route share, n, alpha, power, shift).
    pub split: Option<Split>,
    /// Chaos faults the scenario injected (id, what), owned by `chaos_owner`.
    pub chaos: Vec<(String, crate::target::injection::Injection)>,
    /// "chaos-scenario-PID-N": unique per scenario, and found by `meshtest chaos revert`
    /// should the run die before its after-hook.
    pub chaos_owner: String,
    /// Load running in the background while Then steps watch the mesh.
    pub chaos_load: Option<tokio::task::JoinHandle<Result<meshtest_load::LoadResult, String>>>,
    pub chaos_load_path: Option<String>,
    /// Cancel flags of background loads: aborting their task does not stop the generator
    /// threads, setting these does.
    pub load_cancels: Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Alerts pending or firing when the scenario began watching Prometheus (by name and labels).
    pub alerts_before: Vec<String>,
}

static SCENARIOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How a split sample was sized.
#[derive(Debug, Clone)]
pub struct Split {
    pub route: String,
    pub declared: f64,
    pub alpha: f64,
    pub power: f64,
    pub shift: f64,
}

/// A tenant that sent requests until it was limited.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// 2xx answers before (and in the batch of) the first refusal.
    pub allowed: u64,
    pub sent: u64,
    /// From before the first request to after the last answer.
    pub elapsed: Duration,
    /// The first non-2xx answer, if any.
    pub rejection: Option<Outcome>,
}

/// A batch of calls: `asked` of them were sent; `outcomes` is what came back.
#[derive(Debug, Clone)]
pub struct Batch {
    pub asked: usize,
    pub outcomes: Vec<Outcome>,
}

impl std::fmt::Debug for MeshWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens stay out of reports and logs.
        f.debug_struct("MeshWorld")
            .field("target", &self.target.kind())
            .field(
                "last",
                &self
                    .last
                    .as_ref()
                    .map(|(d, o)| format!("{d}: {}", o.summary())),
            )
            .field("batch", &self.batch.as_ref().map(|b| b.outcomes.len()))
            .finish_non_exhaustive()
    }
}

impl MeshWorld {
    async fn new() -> anyhow::Result<Self> {
        let target = CURRENT
            .read()
            .expect("target lock")
            .clone()
            .ok_or_else(|| {
                anyhow::anyhow!("no target: run features through meshtest::conformance::run")
            })?;
        Ok(MeshWorld {
            target,
            last: None,
            last_call: None,
            batch: None,
            token: None,
            issuer: None,
            tenants: HashMap::new(),
            rate_limited: HashMap::new(),
            stats_before: HashMap::new(),
            faulted_pods: vec![],
            runtime_overrides: vec![],
            manifests_changed: false,
            loads: vec![],
            evidence: vec![],
            alphas: vec![],
            declared: HashMap::new(),
            started: std::time::Instant::now(),
            in_flight: vec![],
            marks: HashMap::new(),
            fault_delays: HashMap::new(),
            last_elapsed: Duration::ZERO,
            expected_deadline: None,
            asked_load: 0,
            fault_sample: None,
            split: None,
            chaos: vec![],
            chaos_owner: format!(
                "chaos-scenario-{}-{}",
                std::process::id(),
                SCENARIOS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            chaos_load: None,
            chaos_load_path: None,
            load_cancels: Vec::new(),
            alerts_before: Vec::new(),
        })
    }

    /// Records (and prints) what a step observed, whatever the verdict.
    pub fn evidence(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("      evidence: {line}");
        self.evidence.push(line);
    }

    /// The last batch, which must exist (a Then step without a When is a feature mistake).
    pub fn batch(&self) -> &Batch {
        match &self.batch {
            Some(b) => b,
            None => crate::unchecked!("no requests were sent before this step"),
        }
    }

    /// Makes a call, remembering it (and a description for failure messages) as the last one.
    pub async fn call(&mut self, description: String, call: Call) -> &Outcome {
        let started = std::time::Instant::now();
        let outcome = match self.target.call(&call).await {
            Ok(o) => o,
            Err(e) => {
                crate::unchecked!("{description}: the harness could not make the call: {e:#}")
            }
        };
        self.last_elapsed = started.elapsed();
        self.marks
            .insert("traffic".into(), std::time::Instant::now());
        self.last = Some((description, outcome));
        self.last_call = Some(call);
        &self.last.as_ref().expect("just set").1
    }

    pub fn last(&self) -> (&str, &Outcome) {
        match &self.last {
            Some((d, o)) => (d, o),
            None => crate::unchecked!("no call was made before this step"),
        }
    }

    /// Undoes every change this scenario made to the mesh (called from the after-hook, also
    /// when a step failed).
    pub async fn revert(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Held requests end once their fault is lifted below; nobody waits for them any more.
        for h in std::mem::take(&mut self.in_flight) {
            h.abort();
        }
        for cancel in std::mem::take(&mut self.load_cancels) {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(h) = self.chaos_load.take() {
            h.abort();
        }
        for (id, injection) in std::mem::take(&mut self.chaos).into_iter().rev() {
            if let Err(e) = self
                .target
                .revert_injection(&id, &self.chaos_owner, &injection)
                .await
            {
                problems.push(format!("reverting {}: {e:#}", injection.describe()));
            }
        }
        for pod in std::mem::take(&mut self.faulted_pods) {
            if let Err(e) = self.target.set_fault(&pod, Default::default()).await {
                problems.push(format!("clearing the fault on {pod}: {e:#}"));
            }
        }
        for (proxy, key) in std::mem::take(&mut self.runtime_overrides) {
            // An empty value removes the admin-layer override.
            if let Err(e) = self
                .target
                .proxy_admin(&proxy, "POST", &format!("/runtime_modify?{key}="))
                .await
            {
                problems.push(format!("removing runtime override {key} on {proxy}: {e:#}"));
            }
        }
        if std::mem::take(&mut self.manifests_changed)
            && let Err(e) = self.target.apply(self.target.manifests()).await
        {
            problems.push(format!("restoring the declared manifests: {e:#}"));
        }
        problems
    }
}

/// Deadline for each single call a step makes.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
