//! Conformance: the mesh's promises as Gherkin features, run by cucumber against a Target.

pub mod runner;
pub mod stats;
mod steps;
pub mod validate;
pub mod world;

pub use runner::{RunOptions, RunSummary, run};
