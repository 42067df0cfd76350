//! `meshtest run`: the conformance suite against a target.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::conformance::{RunOptions, run as run_features, runner, validate};
use crate::error::InputError;
use crate::local::{LocalMesh, LocalOptions};
use crate::target::Target;
use crate::target::local::LocalTarget;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Feature files or directories (default: features/).
    features: Vec<PathBuf>,
    /// Directory of Kubernetes + Istio manifests (the local target starts it).
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Run against the mesh `meshtest up` runs (its state.json) instead of starting one.
    #[arg(long, conflicts_with = "mesh")]
    attach: bool,
    /// Only scenarios matching this tag expression, e.g. "@mtls" (default: "not @slow").
    #[arg(long)]
    tags: Option<String>,
    /// Only scenarios whose name matches this regular expression.
    #[arg(long)]
    name: Option<String>,
    /// Also run the @slow scenarios, which wait out the declared 30 s and 120 s timeouts and
    /// ejection times (the nightly run).
    #[arg(long, conflicts_with = "tags")]
    slow: bool,
    /// Where the reports go (default: reports/RUN, RUN being the start time).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Which mesh to test: local (the embedded mesh) or kube.
    #[arg(long, env = "MESHTEST_TARGET", default_value = "local")]
    target: String,
    #[command(flatten)]
    kube: crate::target::kube::KubeFlags,
    /// Scenarios run at once (@serial ones always run alone).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// Scenarios with this tag query the mesh's Prometheus: `run` starts one with the mesh.
const OBSERVABILITY_TAG: &str = "observability";

pub async fn run(a: RunArgs) -> Result<u8> {
    let features = if a.features.is_empty() {
        vec![PathBuf::from("features")]
    } else {
        a.features
    };
    // Bad input is reported before any mesh starts.
    super::check_target(&a.target, &a.kube)?;
    if a.concurrency == 0 || a.concurrency > 64 {
        return Err(InputError::new("--concurrency", "must be between 1 and 64").into());
    }
    // The features, their tags and every workload they name, checked against the manifests
    // before anything starts.
    let files = validate::feature_files(&features)?;
    validate::validate(&files)?;
    let attached = if a.attach {
        Some(super::mesh::read_running_state()?)
    } else {
        None
    };
    let mesh_dir = match &attached {
        Some(state) => state.mesh_dir.clone(),
        None if a.mesh.is_dir() => a.mesh.canonicalize()?,
        None => {
            return Err(
                InputError::new(&a.mesh, "mesh directory not found (use --mesh DIR)").into(),
            );
        }
    };
    let model = crate::model::MeshModel::build(crate::manifest::Manifests::load_dir(&mesh_dir)?)?;
    crate::translate::proxy::check(&model)?;
    let parsed = validate::validate_with(&files, Some(&validate::Names::of_model(&model)))?;
    let tag_text = runner::default_tags(a.tags, a.slow);
    let selection = runner::Selection::parse(tag_text.as_deref(), a.name.as_deref())?;
    validate::selects_something(&parsed, &selection)?;
    let observe = validate::selects_tagged(&parsed, &selection, OBSERVABILITY_TAG);
    if observe && attached.as_ref().is_some_and(|s| s.prometheus.is_none()) {
        return Err(InputError::new(
            "--attach",
            "the selected scenarios tagged @observability query Prometheus, and the attached mesh runs without it: start it with `meshtest up --observe`, or leave them out with --tags 'not @observability'",
        )
        .into());
    }
    let target: Arc<dyn Target> = match attached {
        Some(state) => Arc::new(LocalTarget::attach(state)?),
        None => {
            let mesh = LocalMesh::start(&LocalOptions {
                mesh_dir: mesh_dir.clone(),
                envoy: None,
                observe,
            })
            .await?;
            Arc::new(LocalTarget::owning(mesh, &mesh_dir)?)
        }
    };
    let opts = RunOptions {
        features,
        tags: tag_text,
        name: a.name,
        report_dir: runner::report_dir(a.report_dir.as_deref()),
        concurrency: a.concurrency,
    };
    let summary = run_features(target, &opts).await?;
    Ok(summary.exit_code())
}
