//! `meshtest kube`: put a mesh's manifests on a cluster in a run's own namespace, and sweep
//! what runs left there. The context guard applies first (kind-* or --allow-context).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::target::kube::objects::Run;
use crate::target::kube::{KubeFlags, choose, cluster, objects};

#[derive(clap::Subcommand)]
pub enum KubeCommand {
    /// Apply a mesh's manifests into a run namespace (server-side apply, field manager
    /// meshtest), wait until every Deployment is complete and every pod Ready, then delete it
    /// again unless --keep.
    Deploy(DeployArgs),
    /// Delete the namespaces meshtest runs created (all, or one run's): what a crashed run left.
    Clean(CleanArgs),
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// Directory of Kubernetes + Istio manifests.
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Namespace to deploy into (default: meshtest-RUN).
    #[arg(long)]
    namespace: Option<String>,
    /// Leave the namespace in place (`meshtest kube clean --run RUN` removes it later).
    #[arg(long)]
    keep: bool,
    /// How long Deployments and pods may take to become ready.
    #[arg(long, default_value = "300s")]
    ready_timeout: String,
    #[command(flatten)]
    kube: KubeFlags,
}

#[derive(clap::Args)]
pub struct CleanArgs {
    /// Only this run's namespace.
    #[arg(long)]
    run: Option<String>,
    #[command(flatten)]
    kube: KubeFlags,
}

pub async fn run(c: KubeCommand) -> Result<u8> {
    match c {
        KubeCommand::Deploy(a) => deploy(a).await,
        KubeCommand::Clean(a) => clean(a).await,
    }
}

async fn deploy(a: DeployArgs) -> Result<u8> {
    // Bad input first: the deadline, the manifests (as the CRDs validate them), the context.
    let ready_timeout = meshtest_load::duration::parse(&a.ready_timeout)
        .map_err(|e| crate::error::InputError::new("--ready-timeout", e))?;
    crate::manifest::Manifests::load_dir(&a.mesh)?;
    let docs = crate::manifest::raw_documents(&a.mesh)?;
    let choice = choose(&a.kube)?;
    let id = run_id();
    let run = Run::new(&id, a.namespace.as_deref());
    let objects = objects::prepare(&run, &docs)?;
    let client = cluster::connect(&choice).await?;
    eprintln!(
        "meshtest: run {id}: applying {} objects into namespace {} of {}",
        objects.len(),
        run.namespace,
        choice.context
    );
    let outcome = async {
        for note in cluster::deploy(&client, &run, &objects).await? {
            eprintln!("meshtest: skipped {note}");
        }
        cluster::wait_ready(&client, &run.namespace, ready_timeout).await
    }
    .await;
    if !a.keep
        && let Err(e) = cluster::delete_run(&client, &run).await
    {
        eprintln!("meshtest: {e:#}; `meshtest kube clean --run {id}` retries");
    }
    let took = outcome?;
    println!(
        "meshtest: namespace {} ready in {:.1} s{}",
        run.namespace,
        took.as_secs_f64(),
        if a.keep {
            format!(" (kept: `meshtest kube clean --run {id}` removes it)")
        } else {
            " (deleted again)".into()
        }
    );
    Ok(0)
}

async fn clean(a: CleanArgs) -> Result<u8> {
    let choice = choose(&a.kube)?;
    let client = cluster::connect(&choice).await?;
    let deleted = cluster::clean(&client, a.run.as_deref()).await?;
    if deleted.is_empty() {
        println!("meshtest: nothing of meshtest's in {}", choice.context);
    }
    for ns in deleted {
        println!("meshtest: deleted namespace {ns}");
    }
    Ok(0)
}

/// A run id: short, unique enough per cluster, valid in a namespace name.
fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    format!("{:x}{:x}", secs & 0xffffff, std::process::id() & 0xfff)
}
