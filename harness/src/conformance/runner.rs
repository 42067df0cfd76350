//! Runs features against a target with cucumber and collects each scenario's verdict (HOLDS,
//! BROKEN, UNCHECKED) with its evidence; `report` writes them out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cucumber::event::{ScenarioFinished, StepError};
use cucumber::gherkin::tagexpr::TagOperation;
use cucumber::tag::Ext as _;
use cucumber::{World as _, WriterExt as _, writer};

use super::report::{RunSummary, ScenarioResult};
use super::validate;
use super::verdict::{Verdict, classify};
use super::world::{MeshWorld, set_target};
use crate::error::InputError;
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Feature files or directories.
    pub features: Vec<PathBuf>,
    /// A cucumber tag expression, e.g. "@mtls and not @slow".
    pub tags: Option<String>,
    /// Only scenarios whose name this regular expression matches.
    pub name: Option<String>,
    /// Where junit.xml, cucumber.json, summary.txt and summary.json go.
    pub report_dir: PathBuf,
    /// Scenarios run at once (those tagged @serial always run alone).
    pub concurrency: usize,
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

/// The tag filter of a run: the user's, else everything but the @slow scenarios (unless
/// `slow`, which keeps them).
pub fn default_tags(tags: Option<String>, slow: bool) -> Option<String> {
    match (tags, slow) {
        (Some(t), _) => Some(t),
        (None, true) => None,
        (None, false) => Some("not @slow".into()),
    }
}

/// A scenario's name, or for an outline each example's name with its placeholders filled in
/// (and the outline's own).
pub fn expanded_names(scenario: &cucumber::gherkin::Scenario) -> Vec<String> {
    let mut names = vec![scenario.name.clone()];
    for examples in &scenario.examples {
        let Some(table) = &examples.table else {
            continue;
        };
        let Some((header, rows)) = table.rows.split_first() else {
            continue;
        };
        for row in rows {
            let mut name = scenario.name.clone();
            for (k, v) in header.iter().zip(row) {
                name = name.replace(&format!("<{k}>"), v);
            }
            names.push(name);
        }
    }
    names
}

/// Which scenarios of the features run: a tag expression and a name pattern, both optional.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    tags: Option<(TagOperation, String)>,
    name: Option<(regex::Regex, String)>,
}

impl Selection {
    /// Parses `--tags` and `--name`; a bad expression is an input error naming the flag.
    pub fn parse(tags: Option<&str>, name: Option<&str>) -> Result<Selection, InputError> {
        let tags = tags
            .map(|t| {
                t.parse::<TagOperation>()
                    .map(|op| (op, t.to_string()))
                    .map_err(|e| {
                        InputError::new("--tags", format!("`{t}` is not a tag expression: {e}"))
                    })
            })
            .transpose()?;
        let name = name
            .map(|n| {
                regex::Regex::new(n)
                    .map(|re| (re, n.to_string()))
                    .map_err(|e| {
                        InputError::new("--name", format!("`{n}` is not a regular expression: {e}"))
                    })
            })
            .transpose()?;
        Ok(Selection { tags, name })
    }

    pub fn selects(
        &self,
        feature: &cucumber::gherkin::Feature,
        scenario: &cucumber::gherkin::Scenario,
    ) -> bool {
        let tags_ok = self
            .tags
            .as_ref()
            .is_none_or(|(t, _)| t.eval(feature.tags.iter().chain(scenario.tags.iter())));
        let name_ok = self
            .name
            .as_ref()
            .is_none_or(|(re, _)| expanded_names(scenario).iter().any(|n| re.is_match(n)));
        tags_ok && name_ok
    }

    /// "--tags `not @slow`, --name `pool`" for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((_, t)) = &self.tags {
            parts.push(format!("--tags `{t}`"));
        }
        if let Some((_, n)) = &self.name {
            parts.push(format!("--name `{n}`"));
        }
        parts.join(", ")
    }
}

/// Runs the features against `target`. Returns Err(InputError) for bad features or tags.
pub async fn run(target: Arc<dyn Target>, opts: &RunOptions) -> Result<RunSummary> {
    let started = std::time::Instant::now();
    let files = validate::feature_files(&opts.features)?;
    let features =
        validate::validate_with(&files, Some(&validate::Names::of_target(target.as_ref())))?;
    let selection = Selection::parse(opts.tags.as_deref(), opts.name.as_deref())?;
    validate::selects_something(&features, &selection)?;
    std::fs::create_dir_all(&opts.report_dir)
        .with_context(|| format!("creating {}", opts.report_dir.display()))?;
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
                    let (mut verdict, mut message) = match finished {
                        ScenarioFinished::StepFailed(_, _, err) => {
                            let (v, m) = classify(&panic_message(err));
                            (v, Some(m))
                        }
                        ScenarioFinished::BeforeHookFailed(info) => (
                            Verdict::Unchecked,
                            Some(format!("before hook failed: {info:?}")),
                        ),
                        ScenarioFinished::StepSkipped => (
                            Verdict::Unchecked,
                            Some("a step did not match any step definition".into()),
                        ),
                        ScenarioFinished::StepPassed => (Verdict::Holds, None),
                    };
                    let mut evidence = vec![];
                    let mut alphas = vec![];
                    let mut duration = std::time::Duration::ZERO;
                    if let Some(world) = world {
                        evidence = std::mem::take(&mut world.evidence);
                        alphas = std::mem::take(&mut world.alphas);
                        duration = world.started.elapsed();
                        if let Err(e) = write_loads(feature, scenario, world) {
                            message.get_or_insert(e);
                            verdict = verdict.max(Verdict::Unchecked);
                        }
                        let problems = world.revert().await;
                        if !problems.is_empty() {
                            // The verdict stands, but later scenarios may see a changed mesh.
                            let msg = format!("could not revert: {}", problems.join("; "));
                            message = Some(message.map_or(msg.clone(), |m| format!("{m}\n{msg}")));
                            verdict = verdict.max(Verdict::Unchecked);
                        }
                    }
                    RESULTS.lock().expect("results lock").push(ScenarioResult {
                        feature: feature.name.clone(),
                        file: feature.path.as_deref().map(display_path),
                        scenario: scenario.name.clone(),
                        line: scenario.position.line,
                        tags: feature
                            .tags
                            .iter()
                            .chain(scenario.tags.iter())
                            .cloned()
                            .collect(),
                        verdict,
                        message,
                        evidence,
                        alphas,
                        duration,
                    });
                })
            })
            .with_writer(
                writer::Basic::raw(std::io::stdout(), writer::Coloring::Auto, 0)
                    .summarized()
                    .tee::<MeshWorld, _>(writer::Json::for_tee(json.try_clone()?))
                    .normalized(),
            )
            .fail_on_skipped()
            // Last: with_writer resets the CLI, and cucumber must not parse meshtest's argv.
            .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default());
        let selection = selection.clone();
        let selected = selected.clone();
        cucumber
            .filter_run(&root, move |feature, _rule, scenario| {
                let path_ok = feature.path.as_ref().is_none_or(|p| {
                    selected.contains(&p.canonicalize().unwrap_or_else(|_| p.clone()))
                });
                path_ok && selection.selects(feature, scenario)
            })
            .await;
    }
    set_target(None, None);
    let mut results = std::mem::take(&mut *RESULTS.lock().expect("results lock"));
    results.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let summary = RunSummary {
        results,
        report_dir: opts.report_dir.clone(),
        duration: started.elapsed(),
    };
    print!("{}", summary.render());
    let _ = std::io::stdout().flush();
    summary.write()?;
    Ok(summary)
}

/// A feature's path relative to the working directory when it is under it.
fn display_path(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Writes the scenario's load runs into the report's load/ directory.
fn write_loads(
    feature: &cucumber::gherkin::Feature,
    scenario: &cucumber::gherkin::Scenario,
    world: &mut MeshWorld,
) -> Result<(), String> {
    let Some(dir) = super::world::report_dir() else {
        return Ok(());
    };
    for (i, result) in std::mem::take(&mut world.loads).iter().enumerate() {
        let name = format!(
            "{}--{}-{}",
            slug(&feature.name),
            slug(&scenario.name),
            i + 1
        );
        meshtest_load::write_report(&dir.join("load").join(&name), &name, result)
            .map_err(|e| format!("writing the load report {name}: {e}"))?;
    }
    Ok(())
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
