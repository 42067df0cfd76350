//! meshtest: prove a service mesh keeps its promises: conformance, load and chaos against a live mesh.

pub mod agent;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod conformance;
pub mod declared;
pub mod derive;
pub mod envoy;
pub mod error;
pub mod local;
pub mod manifest;
pub mod model;
pub mod outcome;
pub mod pki;
pub mod prometheus;
pub mod regex_literal;
pub mod target;
pub mod tls;
pub mod token;
pub mod translate;
pub mod zipkin;
