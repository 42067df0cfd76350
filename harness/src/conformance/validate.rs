//! Checks features before a run: every file parses and every step matches exactly one step
//! definition, so bad input is reported as file:line (exit 2), not as a failed promise.

use std::path::{Path, PathBuf};

use cucumber::World as _;
use cucumber::gherkin::{self, GherkinEnv};

use super::world::MeshWorld;
use crate::error::InputError;

/// Expands FEATURE arguments (files or directories) into sorted `.feature` files.
pub fn feature_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| InputError::new(p, format!("cannot read: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|e| e == "feature"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(InputError::new(p, "no .feature files here"));
            }
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(InputError::new(p, "no such feature file or directory"));
        }
    }
    Ok(files)
}

/// The names steps may use for the mesh's workloads: its services and pods.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub services: Vec<String>,
    pub pods: Vec<String>,
}

impl Names {
    pub fn of_model(model: &crate::model::MeshModel) -> Names {
        Names {
            services: model.services.iter().map(|s| s.name.clone()).collect(),
            pods: model.pods.iter().map(|p| p.name.clone()).collect(),
        }
    }

    pub fn of_target(target: &dyn crate::target::Target) -> Names {
        let pods = target.pods();
        // Every Service, including those that select pods another Service places.
        let mut services: Vec<String> = pods.iter().map(|p| p.service.clone()).collect();
        services.extend(
            target
                .manifests()
                .services
                .iter()
                .map(|s| s.name().to_string()),
        );
        services.sort();
        services.dedup();
        Names {
            services,
            pods: pods.into_iter().map(|p| p.name).collect(),
        }
    }

    /// Checks that a service or pod of that name (SERVICE[:PORT] too) exists.
    pub fn check_workload(&self, value: &str) -> Result<(), String> {
        self.check("workload", value)
    }

    /// Checks a captured name by its group's kind (`service*`, `pod*`, `workload*`).
    fn check(&self, group: &str, value: &str) -> Result<(), String> {
        let (name, _) = crate::target::split_port(value);
        let service = self.services.iter().any(|s| s == name);
        let pod = self.pods.iter().any(|p| p == name);
        let ok = if group.starts_with("service") {
            service
        } else if group.starts_with("pod") {
            pod
        } else if group.starts_with("workload") {
            service || pod
        } else {
            true
        };
        if ok {
            return Ok(());
        }
        let what = if group.starts_with("pod") {
            "pod"
        } else {
            "service"
        };
        Err(format!(
            "no {what} named `{name}` in the mesh (services: {})",
            self.services.join(", ")
        ))
    }
}

/// Parses each feature and resolves each step against the step definitions.
pub fn validate(files: &[PathBuf]) -> Result<Vec<gherkin::Feature>, InputError> {
    validate_with(files, None)
}

/// `validate`, also checking that every workload a step names exists in the mesh.
pub fn validate_with(
    files: &[PathBuf],
    names: Option<&Names>,
) -> Result<Vec<gherkin::Feature>, InputError> {
    let steps = MeshWorld::collection();
    let mut features = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| InputError::new(file, format!("cannot read: {e}")))?;
        let feature = gherkin::Feature::parse(&text, GherkinEnv::default()).map_err(|e| {
            // "Error at LINE:COL: {expected tokens}"
            let msg = e.to_string();
            let line = msg
                .strip_prefix("Error at ")
                .and_then(|r| r.split(':').next())
                .and_then(|l| l.parse().ok());
            let mut err = InputError::new(file, format!("not valid Gherkin: {msg}"));
            err.line = line;
            err
        })?;
        let scenarios = feature
            .scenarios
            .iter()
            .chain(feature.rules.iter().flat_map(|r| r.scenarios.iter()));
        let backgrounds = feature
            .background
            .iter()
            .chain(feature.rules.iter().filter_map(|r| r.background.as_ref()));
        for step in backgrounds.flat_map(|b| b.steps.iter()) {
            check_step(&steps, file, step, &[], names)?;
        }
        for scenario in scenarios {
            let rows = example_rows(scenario);
            for step in &scenario.steps {
                if rows.is_empty() {
                    check_step(&steps, file, step, &[], names)?;
                }
                for row in &rows {
                    check_step(&steps, file, step, row, names)?;
                }
            }
        }
        features.push(feature);
    }
    Ok(features)
}

/// A selection that matches no scenario is a mistake in the command, not an empty pass.
pub fn selects_something(
    features: &[gherkin::Feature],
    selection: &super::runner::Selection,
) -> Result<(), InputError> {
    let any = features.iter().any(|f| {
        f.scenarios
            .iter()
            .chain(f.rules.iter().flat_map(|r| r.scenarios.iter()))
            .any(|s| selection.selects(f, s))
    });
    if any {
        Ok(())
    } else {
        Err(InputError::new(
            "--tags",
            format!(
                "{} selects no scenario of the given features",
                selection.describe()
            ),
        ))
    }
}

/// Does the selection run a scenario tagged `tag` (on the scenario or its feature)? How `run`
/// knows the mesh needs Prometheus (`@observability`).
pub fn selects_tagged(
    features: &[gherkin::Feature],
    selection: &super::runner::Selection,
    tag: &str,
) -> bool {
    features.iter().any(|f| {
        f.scenarios
            .iter()
            .chain(f.rules.iter().flat_map(|r| r.scenarios.iter()))
            .any(|s| {
                selection.selects(f, s) && f.tags.iter().chain(s.tags.iter()).any(|t| t == tag)
            })
    })
}

/// Each Examples row as (placeholder, value) pairs.
fn example_rows(scenario: &gherkin::Scenario) -> Vec<Vec<(String, String)>> {
    let mut rows = Vec::new();
    for examples in &scenario.examples {
        if let Some(table) = &examples.table {
            let mut it = table.rows.iter();
            let Some(header) = it.next() else { continue };
            for row in it {
                rows.push(header.iter().cloned().zip(row.iter().cloned()).collect());
            }
        }
    }
    rows
}

fn check_step(
    steps: &cucumber::step::Collection<MeshWorld>,
    file: &Path,
    step: &gherkin::Step,
    row: &[(String, String)],
    names: Option<&Names>,
) -> Result<(), InputError> {
    let mut step = step.clone();
    for (k, v) in row {
        step.value = step.value.replace(&format!("<{k}>"), v);
    }
    let line = step.position.line as u64;
    match steps.find(&step) {
        Ok(Some((_, _, _, ctx))) => {
            let Some(names) = names else { return Ok(()) };
            for (group, value) in &ctx.matches {
                if let Some(group) = group
                    && let Err(why) = names.check(group, value)
                {
                    return Err(InputError::new(
                        file,
                        format!("step `{} {}`: {why}", step.keyword.trim(), step.value),
                    )
                    .at_line(line)
                    .field(group.clone()));
                }
            }
            Ok(())
        }
        Ok(None) => Err(InputError::new(
            file,
            format!(
                "unknown step `{} {}`: no step definition matches it",
                step.keyword.trim(),
                step.value
            ),
        )
        .at_line(line)),
        Err(e) => Err(
            InputError::new(file, format!("ambiguous step `{}`: {e}", step.value)).at_line(line),
        ),
    }
}
