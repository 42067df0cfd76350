//! `meshtest chaos`: run a profile (or plan it with --dry-run), revert what a killed run left,
//! list the profiles, and add an observer's note to the running experiment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::chaos::journal::{Replay, journals};
use crate::chaos::plan::{self, Candidate};
use crate::chaos::profile;
use crate::chaos::run::{Experiment, run as run_experiment};
use crate::error::{InputError, exit};
use crate::local::{LocalMesh, LocalOptions};
use crate::model::MeshModel;
use crate::target::Target;
use crate::target::local::LocalTarget;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ChaosArgs {
    #[command(subcommand)]
    command: Option<ChaosCommand>,
    /// A profile: NAME (scenarios/NAME.yaml) or a file.
    #[arg(long)]
    profile: Option<String>,
    /// Directory of Kubernetes + Istio manifests (an embedded mesh is started from it).
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Act on the mesh `meshtest up` runs (its state.json) instead of starting one.
    #[arg(long, conflicts_with = "mesh")]
    attach: bool,
    /// Which mesh: local (embedded) or kube.
    #[arg(long, env = "MESHTEST_TARGET", default_value = "local")]
    target: String,
    #[command(flatten)]
    kube: crate::target::kube::KubeFlags,
    /// Seed for the random choice of pods (printed by every run; the same seed picks the same).
    #[arg(long)]
    seed: Option<u64>,
    /// Every fault's lease (default: its duration plus 15 s): when it ends, the fault ends even
    /// if nobody reverts it.
    #[arg(long)]
    lease: Option<String>,
    /// Print the plan (targets, faults and inverses, probes, abort rules, preflight) and change
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    /// Confirm destructive faults on a kube target.
    #[arg(long)]
    yes: bool,
    /// Where the report goes (default: reports/RUN/chaos).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// No live view (one line a second on stderr).
    #[arg(long)]
    no_progress: bool,
    /// Serve the live view (load, errors, p99, faults in force, failing probes) in Prometheus'
    /// text format at http://ADDR/metrics while the experiment runs.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Test hook: stop at a point of the run until killed.
    #[arg(long, hide = true)]
    pause_at: Option<String>,
}

#[derive(clap::Subcommand)]
enum ChaosCommand {
    /// Restore everything killed runs left, from their journals; a second run finds nothing.
    Revert {
        /// One journal (default: every journal in the state directory's chaos/).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// The profiles in scenarios/, one line each.
    List,
    /// Add an observer's note to the running experiment's timeline.
    Note { text: String },
}

fn journal_dir() -> PathBuf {
    super::state_dir().join("chaos")
}

pub async fn chaos(a: ChaosArgs) -> Result<u8> {
    match &a.command {
        Some(ChaosCommand::List) => return list(),
        Some(ChaosCommand::Note { text }) => return note(text),
        Some(ChaosCommand::Revert { journal }) => return revert(journal.as_deref()).await,
        None => {}
    }
    let Some(name) = a.profile.clone() else {
        return Err(InputError::new(
            "--profile",
            "name a profile (see `meshtest chaos list`), or use revert, list or note",
        )
        .into());
    };
    super::check_target(&a.target, &a.kube)?;
    let lease = match &a.lease {
        Some(text) => {
            Some(meshtest_load::duration::parse(text).map_err(|e| InputError::new("--lease", e))?)
        }
        None => None,
    };
    if lease.is_some_and(|l| l.is_zero() || l > crate::chaos::validate::MAX_SPAN) {
        return Err(InputError::new("--lease", "must be above 0 and at most 1h").into());
    }
    // Everything is checked before anything starts: profile, mesh, plan.
    let attached = if a.attach {
        Some(super::mesh::read_running_state()?)
    } else {
        None
    };
    let mesh_dir = match &attached {
        Some(s) => s.mesh_dir.clone(),
        None if a.mesh.is_dir() => a.mesh.canonicalize()?,
        None => {
            return Err(
                InputError::new(&a.mesh, "mesh directory not found (use --mesh DIR)").into(),
            );
        }
    };
    let model = MeshModel::build(crate::manifest::Manifests::load_dir(&mesh_dir)?)?;
    crate::translate::proxy::check(&model)?;
    let file = profile::find(&name, Path::new("scenarios"))?;
    let profile = profile::load(&file, &model)?;
    for w in crate::chaos::validate::warnings(&profile, &model) {
        eprintln!("meshtest: warning: {w}");
    }
    let seed = a.seed.or(profile.seed).unwrap_or_else(plan::fresh_seed);
    let candidates: Vec<Candidate> = model
        .pods
        .iter()
        .map(|p| Candidate {
            name: p.name.clone(),
            service: p.service.clone(),
            version: p.version.clone(),
        })
        .collect();
    let plan = plan::resolve(&profile, &candidates, seed, plan::run_id(seed), lease)?;
    if let Some(max) = profile.abort.max_pods
        && plan.max_pods_at_once() > max
    {
        return Err(InputError::new(
            &file,
            format!(
                "this plan faults {} pods at once, more than abort.max_pods ({max})",
                plan.max_pods_at_once()
            ),
        )
        .field("abort.max_pods")
        .into());
    }
    if !profile.alerts.is_empty()
        && let Some(state) = &attached
        && state.prometheus.is_none()
    {
        return Err(InputError::new(
            &file,
            "the profile judges alerts, and the attached mesh runs without Prometheus: start it with `meshtest up --observe`",
        )
        .field("alerts")
        .into());
    }
    if a.dry_run {
        print!("{}", plan::describe(&plan, &profile));
        println!("preflight:");
        match &attached {
            Some(state) => {
                let target = LocalTarget::attach(state.clone())?;
                let (ok, lines) = preflight(&target, &plan).await;
                for l in lines {
                    println!("  {l}");
                }
                println!("dry run: nothing was changed");
                return Ok(if ok { exit::OK } else { exit::UNCHECKED });
            }
            None => {
                println!(
                    "  an embedded mesh would be started from {} (nothing is started by a dry run)",
                    mesh_dir.display()
                );
                println!("dry run: nothing was changed");
                return Ok(exit::OK);
            }
        }
    }
    let mut signals = super::mesh::StopSignals::install()?;
    let (target, keeps_leases, attached_state): (Arc<dyn Target>, bool, Option<PathBuf>) =
        match attached {
            Some(state) => (
                Arc::new(LocalTarget::attach(state)?),
                false,
                Some(super::mesh::state_file().canonicalize()?),
            ),
            None => {
                let mesh = LocalMesh::start(&LocalOptions {
                    mesh_dir: mesh_dir.clone(),
                    envoy: None,
                    // Prometheus only when the profile judges the mesh's alerts.
                    observe: !profile.alerts.is_empty(),
                })
                .await?;
                (Arc::new(LocalTarget::owning(mesh, &mesh_dir)?), true, None)
            }
        };
    let (ok, lines) = preflight(target.as_ref(), &plan).await;
    if !ok {
        bail!(
            "preflight failed, nothing was injected:\n  {}",
            lines.join("\n  ")
        );
    }
    let report_dir = match &a.report_dir {
        Some(d) => d.clone(),
        None => crate::conformance::runner::report_dir(None).join("chaos"),
    };
    eprintln!(
        "meshtest: chaos {} run {} (seed {seed}); report in {}",
        profile.name,
        plan.run_id,
        report_dir.display()
    );
    let x = Experiment {
        profile,
        plan,
        target,
        model,
        journal_dir: journal_dir(),
        report_dir,
        attached_state,
        keeps_leases,
        progress: !a.no_progress,
        metrics_listen: a.metrics_listen,
        pause_at: a.pause_at.clone(),
    };
    let outcome = run_experiment(x, async move {
        signals.wait().await;
        "a stop signal (SIGINT/SIGTERM/SIGHUP)".to_string()
    })
    .await?;
    print_outcome(&outcome.summary)?;
    Ok(outcome.verdict.exit_code())
}

fn print_outcome(summary: &Path) -> Result<()> {
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(summary)?)?;
    for h in s["hypotheses"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {} | {}: {}",
            h["verdict"].as_str().unwrap_or(""),
            h["phase"].as_str().unwrap_or(""),
            h["hypothesis"].as_str().unwrap_or(""),
            h["evidence"].as_str().unwrap_or("")
        );
    }
    for f in s["faults"].as_array().into_iter().flatten() {
        println!(
            "fault {} {}: verified {}, reverted {}, apply {} ms, apply-to-verified {} ms, revert {} ms",
            f["id"].as_str().unwrap_or(""),
            f["name"].as_str().unwrap_or(""),
            f["verified"],
            f["reverted"],
            f["apply_ms"],
            f["verify_ms"],
            f["revert_ms"]
        );
    }
    if let Some(a) = s["abort"].as_object() {
        println!(
            "ABORTED: {} (everything reverted {} ms after the trip)",
            a["rule"].as_str().unwrap_or(""),
            a["trip_to_reverted_ms"]
        );
    }
    println!(
        "verdict: {} (exit {})",
        s["verdict"].as_str().unwrap_or(""),
        s["exit_code"]
    );
    println!(
        "report: {}",
        summary
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}

/// Checks before any fault: each planned pod exists and its proxy is live, and no other chaos
/// run holds a fault on it.
async fn preflight(target: &dyn Target, plan: &plan::Plan) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    let pods = target.pods();
    let wanted: std::collections::BTreeSet<&String> =
        plan.faults.iter().flat_map(|f| f.pods.iter()).collect();
    for p in &wanted {
        let exists = pods.iter().any(|x| &&x.name == p);
        let live = exists
            && matches!(tokio::time::timeout(Duration::from_secs(2), target.proxy_admin(p, "GET", "/ready")).await, Ok(Ok(b)) if b.trim() == "LIVE");
        ok &= live;
        lines.push(format!(
            "{} {p}: {}",
            if live { "ok  " } else { "FAIL" },
            if !exists {
                "no such pod"
            } else if live {
                "its proxy is LIVE"
            } else {
                "its proxy is not LIVE"
            }
        ));
    }
    match target.injections().await {
        Ok(held) => {
            let foreign: Vec<String> = held
                .iter()
                .map(|a| format!("{} ({} of {})", a.injection.describe(), a.id, a.owner))
                .collect();
            if foreign.is_empty() {
                lines.push("ok   no chaos fault is held on the mesh".into());
            } else {
                ok = false;
                lines.push(format!("FAIL faults from other runs are in force: {} (`meshtest chaos revert` ends them)", foreign.join("; ")));
            }
        }
        Err(e) => {
            ok = false;
            lines.push(format!("FAIL cannot list the mesh's faults: {e:#}"));
        }
    }
    (ok, lines)
}

fn list() -> Result<u8> {
    let dir = Path::new("scenarios");
    let profiles = profile::list(dir);
    if profiles.is_empty() {
        return Err(InputError::new(dir, "no profiles (*.yaml) here").into());
    }
    let width = profiles.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, line) in profiles {
        println!("{name:<width$}  {line}");
    }
    Ok(exit::OK)
}

fn note(text: &str) -> Result<u8> {
    let running: Vec<Replay> = journals(&journal_dir())
        .iter()
        .filter_map(|j| Replay::read(j).ok())
        .filter(|r| r.owner_alive() && !r.finished)
        .collect();
    let Some(run) = running.last() else {
        return Err(InputError::new(
            journal_dir(),
            "no chaos experiment is running (notes go to a running one)",
        )
        .into());
    };
    let id = run.run_id().unwrap_or("?");
    crate::chaos::timeline::append_note(&journal_dir().join(format!("{id}.notes.jsonl")), text)?;
    println!("noted in {id}");
    Ok(exit::OK)
}

async fn revert(journal: Option<&Path>) -> Result<u8> {
    if let Some(j) = journal
        && !j.is_file()
    {
        return Err(InputError::new(j, "no such journal")
            .field("--journal")
            .into());
    }
    let report =
        crate::chaos::revert::revert(journal, &journal_dir(), &super::mesh::state_file()).await?;
    for l in &report.lines {
        println!("{l}");
    }
    if report.failed > 0 {
        eprintln!(
            "meshtest: REVERT FAILED for {} fault(s): they are still in force until their lease ends",
            report.failed
        );
        return Ok(exit::FAILED);
    }
    let skipped = report
        .lines
        .iter()
        .filter(|l| l.contains("still running"))
        .count();
    if report.reverted == 0 && skipped == 0 && report.lines.iter().all(|l| !l.contains("gone with"))
    {
        println!("nothing left to revert");
    } else {
        println!("reverted {} fault(s)", report.reverted);
    }
    if skipped > 0 {
        println!(
            "{skipped} run(s) still running were left alone: they revert their own faults when they end (Ctrl-C reverts at once)"
        );
    }
    Ok(exit::OK)
}
