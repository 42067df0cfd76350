//! Once a second: observers' notes, the live view, and the guardrails (error rate for a while,
//! a failing probe, too many pods faulted, the deadline); a trip reverts everything at once.

use std::time::{Duration, Instant};

use serde_json::json;

use super::run::{AbortRecord, Core};

impl Core {
    /// Once a second (calls in between do nothing): notes, the live view, and the guardrails.
    pub(super) async fn heartbeat(&mut self) {
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
        if let Some((text, _)) = &self.metrics {
            let m = super::live::metrics(&self.x, &self.traffic, &self.ledger, &probes, self.start);
            *text.lock().expect("metrics lock") = m;
        }
        if let Some(rule) = self.tripped() {
            self.abort(rule).await;
        }
    }

    /// The first guardrail that trips, if any.
    pub(super) fn tripped(&mut self) -> Option<String> {
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
    pub(super) async fn abort(&mut self, rule: String) {
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
}
