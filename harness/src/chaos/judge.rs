//! The verdict of a run: each hypothesis (steady state before, each fault's expectations and
//! the steady state of the routes it should not hurt, recovery, steady state after) judged on
//! what was observed; a fault that never showed in the data plane makes its hypotheses
//! UNCHECKED, never HOLDS.

use super::expect::{self, Judgement, Routes};
use super::profile::Expect;
use super::run::{ChaosVerdict, Experiment, Record};
use super::traffic::{Traffic, Window};
use crate::conformance::verdict::Verdict;

pub fn judge(x: &Experiment, traffic: &Traffic, record: &mut Record) -> ChaosVerdict {
    let routes = Routes {
        keys: traffic.routes().to_vec(),
        paths: x
            .profile
            .load
            .value
            .routes
            .iter()
            .map(|r| (r.value.key().to_string(), r.value.path.clone()))
            .collect(),
        model: &x.model,
    };
    let mut out: Vec<(String, Judgement)> = Vec::new();
    let before = traffic.window(0, x.plan.before.as_secs(), &[]);
    let mut b = steady_state(x, &before, "all routes");
    if b.verdict == Verdict::Broken {
        // Not a verdict on the mesh's resilience: the experiment could not start from steady state.
        b.verdict = Verdict::Unchecked;
    }
    out.push(("before".into(), b));
    if record.skipped_faults.is_none() {
        for (f, run) in x.plan.faults.iter().zip(&record.faults) {
            let phase = format!("{} {}", f.id, f.name);
            for j in fault(x, traffic, &routes, f, run) {
                out.push((phase.clone(), j));
            }
        }
    }
    match &record.recovery {
        Some(r) => out.push((
            "recovery".into(),
            Judgement::new(
                format!(
                    "steady state back within {} of the last revert",
                    meshtest_load::duration::human(std::time::Duration::from_millis(r.within_ms))
                ),
                if r.back_after_ms.is_some() {
                    Verdict::Holds
                } else {
                    Verdict::Broken
                },
                match r.back_after_ms {
                    Some(ms) => format!("back after {ms} ms"),
                    None => r.detail.clone(),
                },
            ),
        )),
        None if record.skipped_faults.is_none() => out.push((
            "recovery".into(),
            Judgement::new(
                "steady state back after the last revert",
                Verdict::Unchecked,
                "the run ended before recovery was checked",
            ),
        )),
        None => {}
    }
    for j in super::alerts::judge(&x.profile.alerts, record) {
        out.push(("alerts".into(), j));
    }
    if let Some((from, to)) = record.after {
        out.push((
            "after".into(),
            steady_state(x, &traffic.window(from, to, &[]), "all routes"),
        ));
    }
    if let Some(e) = &record.error {
        out.push((
            "run".into(),
            Judgement::new(
                "the experiment ran to its end",
                Verdict::Unchecked,
                e.clone(),
            ),
        ));
    }
    if let Some(i) = &record.interrupted {
        out.push((
            "run".into(),
            Judgement::new(
                "the experiment ran to its end",
                Verdict::Unchecked,
                format!("interrupted by {i}; every fault was reverted"),
            ),
        ));
    }
    record.judgements = out;
    let revert_failed = !record.left_behind.is_empty()
        || record
            .faults
            .iter()
            .any(|f| f.applied_at_s.is_some() && !f.reverted)
        || record
            .recovery
            .as_ref()
            .is_some_and(|r| r.back_after_ms.is_none());
    if revert_failed {
        ChaosVerdict::RevertFailed
    } else if record.abort.is_some() {
        ChaosVerdict::Aborted
    } else if record.skipped_faults.is_some() {
        ChaosVerdict::Unchecked
    } else {
        match Verdict::combine(record.judgements.iter().map(|(_, j)| j.verdict)) {
            Verdict::Holds => ChaosVerdict::Holds,
            Verdict::Broken => ChaosVerdict::Broken,
            Verdict::Unchecked => ChaosVerdict::Unchecked,
        }
    }
}

/// The steady state over a window: error rate and p99 below the profile's limits.
fn steady_state(x: &Experiment, w: &Window, scope: &str) -> Judgement {
    let ss = &x.profile.steady_state;
    let hyp = format!(
        "steady state ({scope}): error rate below {}%, p99 below {}",
        ss.error_rate_below.0,
        meshtest_load::duration::human(ss.p99_below.0)
    );
    let Some(rate) = w.error_rate() else {
        return Judgement::new(
            hyp,
            Verdict::Unchecked,
            "no request completed in the window",
        );
    };
    if rate >= ss.error_rate_below.fraction() {
        return Judgement::new(
            hyp,
            Verdict::Broken,
            format!("{:.2}% failed: {}", rate * 100.0, w.describe()),
        );
    }
    let p99 = expect::p99_below(&hyp, ss.p99_below.0, w);
    Judgement::new(
        hyp,
        p99.verdict,
        format!("{:.2}% failed; {}", rate * 100.0, p99.evidence),
    )
}

fn fault(
    x: &Experiment,
    traffic: &Traffic,
    routes: &Routes,
    f: &super::plan::PlannedFault,
    run: &super::run::FaultRun,
) -> Vec<Judgement> {
    let step = &x.profile.method[f.index].value;
    let mut hyps = vec!["the fault reached the data plane, and was reverted".to_string()];
    hyps.extend(step.expect.iter().map(|e| e.value.describe()));
    let unaffected: Vec<String> = routes
        .keys
        .iter()
        .filter(|k| !step.affects.contains(k))
        .cloned()
        .collect();
    if !unaffected.is_empty() {
        hyps.push(format!(
            "steady state holds on {} during the fault",
            unaffected.join(", ")
        ));
    }
    let all = |v: Verdict, why: String| {
        hyps.iter()
            .map(|h| Judgement::new(h.clone(), v, why.clone()))
            .collect::<Vec<_>>()
    };
    if run.applied_at_s.is_none() {
        return all(
            Verdict::Unchecked,
            "the fault was never applied (the run ended before its time)".into(),
        );
    }
    if !run.errors.is_empty() && run.verified_at_s.is_none() {
        return all(
            Verdict::Unchecked,
            format!("the fault could not be applied: {}", run.errors.join("; ")),
        );
    }
    let Some(verified) = run.verified_at_s else {
        return all(Verdict::Unchecked, run.verification.clone());
    };
    let reverted = run.reverted_at_s.unwrap_or(verified);
    let (from, to) = (verified.ceil() as u64, reverted.floor() as u64);
    if from >= to {
        return all(
            Verdict::Unchecked,
            format!(
                "the fault was in force for less than a whole second of load after it showed ({verified:.1} s to {reverted:.1} s)"
            ),
        );
    }
    let window = |names: &[String]| traffic.window(from, to, names);
    let mut out = vec![Judgement::new(
        "the fault reached the data plane, and was reverted",
        if run.reverted {
            Verdict::Holds
        } else {
            Verdict::Broken
        },
        format!(
            "{}; {}",
            run.verification,
            if run.reverted {
                "reverted".to_string()
            } else {
                format!("NOT reverted: {}", run.errors.join("; "))
            }
        ),
    )];
    let (mut counters_n, mut watcher_n) = (0, 0);
    for e in &step.expect {
        let j = match &e.value {
            Expect::SubsetUnaffected { .. } | Expect::ShedsLoad { .. } => {
                let n = counters_n;
                counters_n += 1;
                match (run.counters_before.get(n), run.counters_after.get(n)) {
                    (Some(b), Some(a)) => expect::judge_counters(&e.value, *b, *a),
                    _ => Judgement::new(
                        e.value.describe(),
                        Verdict::Unchecked,
                        "Envoy's counters were not read at both ends of the fault",
                    ),
                }
            }
            Expect::EjectedWithin { .. } => {
                let n = watcher_n;
                watcher_n += 1;
                run.watchers.get(n).cloned().unwrap_or_else(|| {
                    Judgement::new(
                        e.value.describe(),
                        Verdict::Unchecked,
                        "the ejection was not watched",
                    )
                })
            }
            // Failures in the second the fault first showed count too: a fast ejection can
            // end them all before the first whole second of the fault.
            Expect::NoClientErrors(_) => {
                let early = |names: &[String]| traffic.window(verified.floor() as u64, to, names);
                expect::judge(&e.value, routes, &early)
            }
            other => expect::judge(other, routes, &window),
        };
        out.push(j);
    }
    if !unaffected.is_empty() {
        let mut j = steady_state(x, &window(&unaffected), &unaffected.join(", "));
        j.hypothesis = format!(
            "steady state holds on {} during the fault",
            unaffected.join(", ")
        );
        out.push(j);
    }
    out
}
