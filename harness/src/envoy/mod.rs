//! Envoy itself: the pinned binary (found or installed), and reading what a running proxy
//! reports through its admin API (stats, /clusters, /config_dump). The readers work on the
//! admin API's text whichever target fetched it, so the seam does not depend on `local`.

pub mod clusters;
pub mod config_dump;
pub mod install;
pub mod stats;

pub use install::{ENVOY_VERSION, cache_dir, ensure, install, install_once, version_of};
