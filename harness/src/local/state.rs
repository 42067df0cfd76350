//! state.json: what another `meshtest` process needs to reach a running `meshtest up` (its
//! owner, addresses, sockets and keys), and the checks before trusting it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::owner::Owner;

/// The part of a running mesh another `meshtest` process needs (state.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The `meshtest up` process that wrote this file.
    pub owner: Owner,
    pub mesh_dir: PathBuf,
    pub run_dir: PathBuf,
    pub ca: PathBuf,
    /// The test issuer's private key (in the 0700 run directory): `meshtest token` signs with it.
    pub issuer_key: PathBuf,
    /// The mesh's control socket (live changes and chaos faults from other processes).
    pub control: PathBuf,
    /// Prometheus' URL when the mesh runs with it (`up --observe`).
    #[serde(default)]
    pub prometheus: Option<String>,
    /// The span collector's Zipkin API (when the mesh traces).
    #[serde(default)]
    pub tracing: Option<String>,
    pub ingress: IngressState,
    pub pods: Vec<PodState>,
}

fn localhost() -> String {
    "localhost".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IngressState {
    pub http: Option<String>,
    pub https: Option<String>,
    /// The Host header ingress calls send unless they name one (from the Gateways' hosts).
    #[serde(default = "localhost")]
    pub host: String,
    /// The gateway's Envoy admin socket.
    pub admin: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub sa: String,
    pub ip: String,
    /// The pod's ports (its service's target ports).
    pub ports: Vec<u16>,
    /// A stand-in agent serves the pod (its container is not `meshtest agent`).
    #[serde(default)]
    pub stand_in: bool,
    /// The sidecar's Envoy admin socket.
    pub admin: PathBuf,
    /// The agent's control socket.
    pub control: PathBuf,
}

impl PodState {
    /// IP:PORT of the pod's first port.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.ports.first().copied().unwrap_or(0))
    }
}

/// What is recorded at a state path.
pub enum Recorded {
    Nothing,
    /// A state file whose owner is gone (or a reused PID): not to be trusted or signalled.
    Stale(State),
    Running(State),
}

impl State {
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        super::layout::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Reads the state at `path` and says whether the process that wrote it still runs.
    pub fn read(path: &Path) -> Result<Recorded> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::Nothing),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a state file of this meshtest version; remove it",
                path.display()
            )
        })?;
        Ok(if state.owner.is_alive() {
            Recorded::Running(state)
        } else {
            Recorded::Stale(state)
        })
    }
}
