//! `meshtest chaos revert`: restores what killed runs left, from their journals (newest fault
//! first), then sweeps the running mesh for faults named by a chaos run that is gone (so even a
//! lost journal leaves nothing behind). Idempotent: a second revert finds nothing and says so.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::journal::{Entry, Journal, Replay, journals, now_ms};
use crate::local::state::{Recorded, State};
use crate::target::Target;
use crate::target::local::LocalTarget;

/// What a revert did, line by line.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub reverted: usize,
    pub failed: usize,
}

/// Reverts from `journal` (or every journal in `dir`), then sweeps the mesh `state_file`
/// records if it runs.
pub async fn revert(journal: Option<&Path>, dir: &Path, state_file: &Path) -> Result<Report> {
    let mut report = Report::default();
    let files: Vec<PathBuf> = match journal {
        Some(j) => vec![j.to_path_buf()],
        None => journals(dir),
    };
    let running = match State::read(state_file)? {
        Recorded::Running(s) => Some(s),
        _ => None,
    };
    let target = match &running {
        Some(s) => Some(LocalTarget::attach(s.clone())?),
        None => None,
    };
    let mut live_runs = Vec::new();
    for file in &files {
        let replay = Replay::read(file)?;
        let run = replay.run_id().unwrap_or("?").to_string();
        if replay.owner_alive() && !replay.finished {
            report.lines.push(format!(
                "{run}: still running; it reverts its own faults (stop it with Ctrl-C), skipped"
            ));
            live_runs.push(run);
            continue;
        }
        let outstanding = replay.outstanding();
        if outstanding.is_empty() {
            continue;
        }
        let on_running_mesh = matches!(&replay.start, Some(Entry::Start { state: Some(p), .. }) if running.is_some() && same_file(p, state_file));
        let mut j = Journal::append(file)?;
        for e in outstanding {
            let Entry::Intent {
                id,
                injection,
                owner,
                ..
            } = e
            else {
                continue;
            };
            let found = match (&target, on_running_mesh) {
                (Some(t), true) => match t.revert_injection(id, owner, injection).await {
                    Ok(found) => found,
                    Err(err) => {
                        report.failed += 1;
                        report.lines.push(format!(
                            "{run} {id}: REVERT FAILED: {}: {err:#}",
                            injection.describe()
                        ));
                        continue;
                    }
                },
                // The run owned its mesh, or the mesh it attached to is gone: the fault went
                // with the processes that held it.
                _ => false,
            };
            j.write(&Entry::Reverted {
                id: id.clone(),
                found,
                at_unix_ms: now_ms(),
            })?;
            report.reverted += usize::from(found);
            report.lines.push(format!(
                "{run} {id}: {} ({})",
                injection.describe(),
                if found {
                    "reverted"
                } else if on_running_mesh {
                    "already gone: expired or reverted"
                } else {
                    "gone with the mesh that held it"
                }
            ));
        }
        j.write(&Entry::Finished {
            verdict: "REVERTED".into(),
            at_unix_ms: now_ms(),
        })?;
    }
    if let Some(t) = &target {
        sweep(t, &live_runs, &mut report).await?;
    }
    Ok(report)
}

/// Reverts faults on the running mesh whose owner is a chaos run not in `live_runs`.
async fn sweep(t: &LocalTarget, live_runs: &[String], report: &mut Report) -> Result<()> {
    for a in t.injections().await? {
        if !a.owner.starts_with("chaos-") || live_runs.contains(&a.owner) {
            continue;
        }
        match t.revert_injection(&a.id, &a.owner, &a.injection).await {
            Ok(found) => {
                report.reverted += usize::from(found);
                report.lines.push(format!(
                    "{} {}: {} (found on the mesh by its owner's name; reverted)",
                    a.owner,
                    a.id,
                    a.injection.describe()
                ));
            }
            Err(e) => {
                report.failed += 1;
                report
                    .lines
                    .push(format!("{} {}: REVERT FAILED: {e:#}", a.owner, a.id));
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
