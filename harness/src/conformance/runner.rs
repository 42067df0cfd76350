//! Runs features against a target with cucumber, writes junit.xml, cucumber.json and a console
//! summary that names each failed promise with its evidence.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cucumber::event::{ScenarioFinished, StepError};
use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::tag::Ext as _;
use cucumber::{World as _, WriterExt as _, writer};

use super::validate;
use super::world::{MeshWorld, set_target};
use crate::error::InputError;
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Feature files or directories.
    pub features: Vec<PathBuf>,
    /// A cucumber tag expression, e.g. "@mtls and not @slow".
    pub tags: Option<String>,
    /// Where junit.xml, cucumber.json and summary.txt go.
    pub report_dir: PathBuf,
    /// Scenarios run at once (those tagged @serial always run alone).
    pub concurrency: usize,
}

/// One scenario's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioResult {
    pub feature: String,
    pub scenario: String,
    pub line: usize,
    /// The evidence, when the scenario failed.
    pub failure: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub results: Vec<ScenarioResult>,
    pub report_dir: PathBuf,
}

impl RunSummary {
    pub fn failed(&self) -> impl Iterator<Item = &ScenarioResult> {
        self.results.iter().filter(|r| r.failure.is_some())
    }

    pub fn passed(&self) -> bool {
        !self.results.is_empty() && self.failed().next().is_none()
    }

    /// The promises (features) that failed, in order.
    pub fn failed_promises(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in self.failed() {
            if !names.contains(&r.feature) {
                names.push(r.feature.clone());
            }
        }
        names
    }

    /// The console summary: each promise with its verdict, then each failure with evidence.
    pub fn render(&self) -> String {
        let mut features: Vec<&str> = Vec::new();
        for r in &self.results {
            if !features.contains(&r.feature.as_str()) {
                features.push(&r.feature);
            }
        }
        let mut out = String::from("\nmeshtest conformance summary\n");
        for f in &features {
            let of: Vec<_> = self.results.iter().filter(|r| r.feature == *f).collect();
            let failed = of.iter().filter(|r| r.failure.is_some()).count();
            let verdict = if failed == 0 { "HOLDS " } else { "BROKEN" };
            out.push_str(&format!(
                "  {verdict} {f} ({}/{} scenarios passed)\n",
                of.len() - failed,
                of.len()
            ));
        }
        for r in self.failed() {
            out.push_str(&format!(
                "\nFAILED promise \"{}\", scenario \"{}\" (line {}):\n  {}\n",
                r.feature,
                r.scenario,
                r.line,
                r.failure.as_deref().unwrap_or("").replace('\n', "\n  ")
            ));
        }
        let failed = self.failed().count();
        out.push_str(&format!(
            "\n{} passed, {} failed\n",
            self.results.len() - failed,
            failed
        ));
        out.push_str(&format!("reports: {}\n", self.report_dir.display()));
        out
    }
}

static RESULTS: Mutex<Vec<ScenarioResult>> = Mutex::new(Vec::new());

/// A fresh report directory name: the UTC start time.
pub fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn panic_message(err: &StepError) -> String {
    match err {
        StepError::Panic(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "step panicked".into()),
        other => other.to_string(),
    }
}

/// Runs the features against `target`. Returns Err(InputError) for bad features or tags.
pub async fn run(target: Arc<dyn Target>, opts: &RunOptions) -> Result<RunSummary> {
    let files = validate::feature_files(&opts.features)?;
    validate::validate(&files)?;
    let tags: Option<TagOperation> = match &opts.tags {
        Some(t) => Some(t.parse().map_err(|e| {
            InputError::new("--tags", format!("`{t}` is not a tag expression: {e}"))
        })?),
        None => None,
    };
    std::fs::create_dir_all(&opts.report_dir)
        .with_context(|| format!("creating {}", opts.report_dir.display()))?;
    let junit =
        std::fs::File::create(opts.report_dir.join("junit.xml")).context("creating junit.xml")?;
    let json = std::fs::File::create(opts.report_dir.join("cucumber.json"))
        .context("creating cucumber.json")?;

    RESULTS.lock().expect("results lock").clear();
    set_target(Some(target), Some(opts.report_dir.clone()));
    let selected: Vec<PathBuf> = files
        .iter()
        .map(|f| f.canonicalize().unwrap_or_else(|_| f.clone()))
        .collect();
    // One cucumber run over one directory (one junit.xml document): the features' shared
    // directory, or a temp directory of links to them.
    let links;
    let root: PathBuf = match common_parent(&selected) {
        Some(dir) => dir,
        None => {
            links = tempfile_dir()?;
            for (i, f) in selected.iter().enumerate() {
                std::os::unix::fs::symlink(
                    f,
                    links.join(format!(
                        "{i:03}-{}",
                        f.file_name().unwrap_or_default().to_string_lossy()
                    )),
                )?;
            }
            links.clone()
        }
    };
    let selected: Vec<PathBuf> = if root
        == *selected
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new(""))
    {
        selected
    } else {
        std::fs::read_dir(&root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect()
    };
    {
        let cucumber = MeshWorld::cucumber()
            .max_concurrent_scenarios(opts.concurrency.max(1))
            .after(|feature, _rule, scenario, finished, world| {
                Box::pin(async move {
                    let mut failure = match finished {
                        ScenarioFinished::StepFailed(_, _, err) => Some(panic_message(err)),
                        ScenarioFinished::BeforeHookFailed(info) => {
                            Some(format!("before hook failed: {info:?}"))
                        }
                        ScenarioFinished::StepSkipped => {
                            Some("a step did not match any step definition".into())
                        }
                        ScenarioFinished::StepPassed => None,
                    };
                    if let Some(world) = world {
                        for (i, result) in std::mem::take(&mut world.loads).iter().enumerate() {
                            let name = format!(
                                "{}--{}-{}",
                                slug(&feature.name),
                                slug(&scenario.name),
                                i + 1
                            );
                            if let Some(dir) = super::world::report_dir()
                                && let Err(e) = meshtest_load::write_report(
                                    &dir.join("load").join(&name),
                                    &name,
                                    result,
                                )
                            {
                                failure.get_or_insert_with(|| {
                                    format!("writing the load report {name}: {e}")
                                });
                            }
                        }
                        let problems = world.revert().await;
                        if !problems.is_empty() {
                            let msg = format!("could not revert: {}", problems.join("; "));
                            failure = Some(failure.map_or(msg.clone(), |f| format!("{f}\n{msg}")));
                        }
                    }
                    RESULTS.lock().expect("results lock").push(ScenarioResult {
                        feature: feature.name.clone(),
                        scenario: scenario.name.clone(),
                        line: scenario.position.line,
                        failure,
                    });
                })
            })
            .with_writer(
                writer::Basic::raw(std::io::stdout(), writer::Coloring::Auto, 0)
                    .summarized()
                    .tee::<MeshWorld, _>(writer::JUnit::for_tee(junit.try_clone()?, 0))
                    .tee::<MeshWorld, _>(writer::Json::for_tee(json.try_clone()?))
                    .normalized(),
            )
            .fail_on_skipped()
            // Last: with_writer resets the CLI, and cucumber must not parse meshtest's argv.
            .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default());
        let tags = tags.clone();
        let selected = selected.clone();
        cucumber
            .filter_run(&root, move |feature, _rule, scenario| {
                let path_ok = feature.path.as_ref().is_none_or(|p| {
                    selected.contains(&p.canonicalize().unwrap_or_else(|_| p.clone()))
                });
                let tags_ok = tags
                    .as_ref()
                    .is_none_or(|t| t.eval(feature.tags.iter().chain(scenario.tags.iter())));
                path_ok && tags_ok
            })
            .await;
    }
    set_target(None, None);
    let results = std::mem::take(&mut *RESULTS.lock().expect("results lock"));
    let summary = RunSummary {
        results,
        report_dir: opts.report_dir.clone(),
    };
    let rendered = summary.render();
    print!("{rendered}");
    let _ = std::io::stdout().flush();
    std::fs::write(opts.report_dir.join("summary.txt"), &rendered)
        .context("writing summary.txt")?;
    Ok(summary)
}

/// "Edge latency stays within the SLO" -> "edge-latency-stays-within-the-slo".
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(60).collect()
}

fn common_parent(files: &[PathBuf]) -> Option<PathBuf> {
    let parent = files.first()?.parent()?.to_path_buf();
    files
        .iter()
        .all(|f| f.parent() == Some(parent.as_path()))
        .then_some(parent)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meshtest-features-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// reports/RUN under `base` (or `base` itself when the user chose it with --report-dir).
pub fn report_dir(base: Option<&Path>) -> PathBuf {
    match base {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("reports").join(run_id()),
    }
}
