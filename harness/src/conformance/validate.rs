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

/// Parses each feature and resolves each step against the step definitions.
pub fn validate(files: &[PathBuf]) -> Result<Vec<gherkin::Feature>, InputError> {
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
            check_step(&steps, file, step, &[])?;
        }
        for scenario in scenarios {
            let rows = example_rows(scenario);
            for step in &scenario.steps {
                if rows.is_empty() {
                    check_step(&steps, file, step, &[])?;
                }
                for row in &rows {
                    check_step(&steps, file, step, row)?;
                }
            }
        }
        features.push(feature);
    }
    Ok(features)
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
) -> Result<(), InputError> {
    let mut step = step.clone();
    for (k, v) in row {
        step.value = step.value.replace(&format!("<{k}>"), v);
    }
    let line = step.position.line as u64;
    match steps.find(&step) {
        Ok(Some(_)) => Ok(()),
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
