//! meshtest: prove a service mesh keeps its promises: conformance, load and chaos against a live mesh.

pub mod error;
pub mod manifest;
pub mod model;
pub mod translate;
