//! The method: each fault journaled and applied on its schedule, verified in the data plane by
//! a task of its own, watched (ejections, subset counters) while in force, and reverted.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::expect::{self, Judgement};
use super::observe;
use super::plan::PlannedFault;
use super::profile::Expect;
use super::run::Core;

/// A fault's verification: when the data plane first showed it, and how.
type Verifier = tokio::task::JoinHandle<Option<(Instant, String)>>;

impl Core {
    pub(super) async fn method(&mut self) -> Result<()> {
        let x = self.x.clone();
        let mut verifiers: Vec<Option<Verifier>> = (0..x.plan.faults.len()).map(|_| None).collect();
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
    pub(super) async fn apply(&mut self, i: usize, f: &PlannedFault) -> Result<Verifier> {
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
    pub(super) async fn verified(
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
            if let Some(c) = expect::window_counters(x.target.as_ref(), &x.model, &e.value).await {
                before.push(c);
            }
            if let Expect::EjectedWithin { within, by } = &e.value {
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
        }
        self.with_fault(i, |r| r.counters_before = before);
        tasks
    }

    pub(super) async fn revert(&mut self, i: usize, f: &PlannedFault) {
        let x = self.x.clone();
        let mut after = Vec::new();
        for e in &x.profile.method[f.index].value.expect {
            if let Some(c) = expect::window_counters(x.target.as_ref(), &x.model, &e.value).await {
                after.push(c);
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
            r.counters_after = after;
        });
    }
}
