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
    /// The last single call and its outcome.
    pub last: Option<(String, Outcome)>,
    /// Outcomes of the last batch of calls.
    pub batch: Vec<Outcome>,
    /// Authorization header to send on ingress calls.
    pub token: Option<String>,
    /// Tenants by the name the feature uses -> (unique tenant id, tier).
    pub tenants: HashMap<String, (String, crate::token::Tier)>,
    /// Per tenant: requests allowed before the first 429, and that 429.
    pub rate_limited: HashMap<String, (u64, Option<Outcome>)>,
    /// Stat values captured before the scenario acted, by (proxy, stat).
    pub stats_before: HashMap<(String, String), u64>,
    /// What to undo after the scenario.
    pub faulted_pods: Vec<String>,
    pub runtime_overrides: Vec<(String, String)>,
    pub manifests_changed: bool,
    /// Load runs of this scenario; the after-hook writes them into the run's report.
    pub loads: Vec<meshtest_load::LoadResult>,
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
            .field("batch", &self.batch.len())
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
            batch: vec![],
            token: None,
            tenants: HashMap::new(),
            rate_limited: HashMap::new(),
            stats_before: HashMap::new(),
            faulted_pods: vec![],
            runtime_overrides: vec![],
            manifests_changed: false,
            loads: vec![],
        })
    }

    /// Makes a call, remembering it (and a description for failure messages) as the last one.
    pub async fn call(&mut self, description: String, call: Call) -> &Outcome {
        let outcome = match self.target.call(&call).await {
            Ok(o) => o,
            Err(e) => panic!("{description}: the harness could not make the call: {e:#}"),
        };
        self.last = Some((description, outcome));
        &self.last.as_ref().expect("just set").1
    }

    pub fn last(&self) -> (&str, &Outcome) {
        let (d, o) = self.last.as_ref().expect("a step must make a call first");
        (d, o)
    }

    /// Undoes every change this scenario made to the mesh (called from the after-hook, also
    /// when a step failed).
    pub async fn revert(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
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
