//! The experiment's phases: steady state before any fault, the method, recovery after the last
//! revert (the first whole second of load that meets the steady state), and the `after` phase.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::observe;
use super::run::{Core, Recovery};
use super::traffic::Window;

impl Core {
    pub(super) async fn run(mut self) -> Result<()> {
        let x = self.x.clone();
        self.phase_until(x.plan.before, "before").await;
        if self.aborted() {
            return Ok(());
        }
        let before = self.settled_window(0, x.plan.before.as_secs()).await;
        if let Some(why) = self.out_of_steady_state(&before, self.traffic.routes()) {
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

    pub(super) fn aborted(&self) -> bool {
        self.shared
            .lock()
            .expect("shared lock")
            .record
            .abort
            .is_some()
    }

    /// Waits (heartbeat every second) until `until` from the start.
    pub(super) async fn phase_until(&mut self, until: Duration, name: &str) {
        self.event("phase", json!({"phase": name}));
        while self.start.elapsed() < until && !self.aborted() {
            self.heartbeat().await;
            let left = until.saturating_sub(self.start.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
    }

    /// Waits (bounded by the load's timeout) for seconds [from, to) to complete, then merges them.
    pub(super) async fn settled_window(&self, from: u64, to: u64) -> Window {
        let deadline =
            Instant::now() + self.x.profile.load.value.timeout.0 + Duration::from_secs(2);
        while self.traffic.complete_seconds() < to && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.traffic.window(from, to, &[])
    }

    /// Why a window is outside the steady state, if it is.
    pub(super) fn out_of_steady_state(&self, w: &Window, _routes: &[String]) -> Option<String> {
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
    /// After the last revert: the steady state must be back within `recover_within`, then the
    /// `after` phase is measured. "Back" is the first whole second of load sent after the
    /// revert that meets the steady state, with every probe passing and no fault of the run
    /// left on the mesh; the time reported runs from the revert to that second's start.
    pub(super) async fn recover(&mut self) {
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
