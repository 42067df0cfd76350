//! Conformance: the mesh's promises as Gherkin features, run by cucumber against a Target.

pub mod report;
pub mod runner;
pub mod stats;
mod steps;
pub mod validate;
pub mod verdict;
pub mod world;

pub use report::{RunSummary, ScenarioResult};
pub use runner::{RunOptions, run};
pub use verdict::Verdict;
