//! One local Envoy: its bootstrap and filesystem-xDS files, its process, and the watch that
//! notices when a proxy of a running mesh dies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::admin::ADMIN_SOCKET;
use super::layout::write_atomic;
use super::process::Supervised;
use super::runtime::MeshThread;
use crate::translate::EnvoyConfig;
use crate::translate::bootstrap::{CDS_FILE, LDS_FILE, bootstrap};

/// One running proxy.
pub(crate) struct Proxy {
    pub name: String,
    /// The admin API's Unix socket.
    pub admin: PathBuf,
    pub dir: PathBuf,
    process: Arc<Mutex<Supervised>>,
    /// Last config written, to skip proxies a change does not touch.
    pub written: Mutex<EnvoyConfig>,
}

impl Proxy {
    /// Writes the bootstrap and the first xDS files, then starts Envoy (from the mesh thread,
    /// so it dies with the mesh).
    pub async fn spawn(
        thread: &MeshThread,
        envoy: &Path,
        name: &str,
        node: &str,
        cluster: &str,
        dir: &Path,
        config: EnvoyConfig,
    ) -> Result<Proxy> {
        write_xds(dir, &config, 1)?;
        let admin = dir.join(ADMIN_SOCKET);
        let boot = dir.join("bootstrap.json");
        std::fs::write(
            &boot,
            serde_json::to_vec_pretty(&bootstrap(node, cluster, &admin, dir))?,
        )
        .context("writing bootstrap")?;
        let mut cmd = Command::new(envoy);
        cmd.arg("-c")
            .arg(&boot)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--drain-time-s",
                "1",
            ])
            .args(["--service-node", name]);
        let (label, log) = (format!("envoy ({name})"), dir.join("envoy.log"));
        let process = thread
            .run(async move { Supervised::spawn(&label, cmd, &log) })
            .await??;
        Ok(Proxy {
            name: name.to_string(),
            admin,
            dir: dir.to_path_buf(),
            process: Arc::new(Mutex::new(process)),
            written: Mutex::new(config),
        })
    }

    /// The exit status, once the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.process.lock().expect("process lock").exited()
    }

    pub fn kill(&self) {
        self.process.lock().expect("process lock").kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.lock().expect("process lock").pid()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        tail_log(&self.dir)
    }

    pub fn write_config(&self, config: &EnvoyConfig, version: u64) -> Result<()> {
        write_xds(&self.dir, config, version)
    }
}

fn write_xds(dir: &Path, config: &EnvoyConfig, version: u64) -> Result<()> {
    // Clusters first: a listener may route to a cluster that is new in this version.
    write_atomic(
        &dir.join(CDS_FILE),
        &serde_json::to_vec_pretty(&config.cds(version))?,
    )?;
    write_atomic(
        &dir.join(LDS_FILE),
        &serde_json::to_vec_pretty(&config.lds(version))?,
    )
}

fn tail_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A proxy that exited while its mesh ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    pub proxy: String,
    pub status: String,
}

/// Watches every proxy of a mesh and reports (stderr, and `deaths`) each one that exits, until
/// `stopping` is set (the mesh's own shutdown kills them all).
pub(crate) fn watch(
    thread: &MeshThread,
    proxies: Vec<(String, Arc<Mutex<Supervised>>)>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) -> Arc<Mutex<Vec<Death>>> {
    let deaths: Arc<Mutex<Vec<Death>>> = Arc::default();
    let seen = deaths.clone();
    thread.spawn(async move {
        let mut reported = vec![false; proxies.len()];
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (i, (name, process)) in proxies.iter().enumerate() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if reported[i] {
                    continue;
                }
                let status = process.lock().expect("process lock").exited();
                if let Some(status) = status {
                    reported[i] = true;
                    eprintln!(
                        "meshtest: the Envoy sidecar of {name} exited while the mesh runs ({status}); calls to it are refused, and steps that need it are UNCHECKED"
                    );
                    seen.lock().expect("deaths lock").push(Death {
                        proxy: name.clone(),
                        status: status.to_string(),
                    });
                }
            }
        }
    });
    deaths
}

impl Proxy {
    pub(crate) fn watched(&self) -> (String, Arc<Mutex<Supervised>>) {
        (self.name.clone(), self.process.clone())
    }
}
