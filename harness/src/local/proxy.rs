//! One local Envoy: its bootstrap and filesystem-xDS files, its process (which a chaos fault may
//! kill, freeze or replace), and the watch that notices when a proxy of a running mesh dies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::admin::ADMIN_SOCKET;
use super::layout::write_atomic;
use super::process::Supervised;
use super::runtime::MeshThread;
use crate::translate::EnvoyConfig;
use crate::translate::bootstrap::{CDS_FILE, LDS_FILE, XdsSource, bootstrap};

/// A proxy's process and whether its exit is expected (a chaos kill, not a crash).
pub(crate) struct Process {
    child: Mutex<Supervised>,
    expected_exit: AtomicBool,
}

/// Who a proxy is and where it keeps its files.
#[derive(Clone, Copy)]
pub(crate) struct ProxyId<'a> {
    pub name: &'a str,
    /// Envoy's node id and cluster (Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local` form).
    pub node: &'a str,
    pub cluster: &'a str,
    /// Its private directory: bootstrap, xDS files, admin socket, log.
    pub dir: &'a Path,
    /// Where its metrics listener binds (the pod address, Istio's port 15090).
    pub stats: std::net::SocketAddr,
    /// The span collector, when the mesh traces.
    pub collector: Option<std::net::SocketAddr>,
}

/// One running proxy.
pub(crate) struct Proxy {
    pub name: String,
    /// The admin API's Unix socket.
    pub admin: PathBuf,
    pub dir: PathBuf,
    envoy: PathBuf,
    process: Arc<Process>,
    /// Last config written, to skip proxies a change does not touch.
    pub written: Mutex<EnvoyConfig>,
}

impl Proxy {
    /// Writes the bootstrap and the first xDS files, then starts Envoy (from the mesh thread,
    /// so it dies with the mesh).
    pub async fn spawn(
        thread: &MeshThread,
        envoy: &Path,
        id: &ProxyId<'_>,
        config: EnvoyConfig,
    ) -> Result<Proxy> {
        let ProxyId {
            name,
            node,
            cluster,
            dir,
            stats,
            collector,
        } = *id;
        write_xds(dir, &config, 1)?;
        let admin = dir.join(ADMIN_SOCKET);
        let socket = dir
            .parent()
            .context("a proxy directory inside the run directory")?
            .join(super::xds::XDS_SOCKET);
        let xds = XdsSource {
            socket: &socket,
            dir,
        };
        std::fs::write(
            dir.join("bootstrap.json"),
            serde_json::to_vec_pretty(&bootstrap(node, cluster, &admin, &xds, stats, collector))?,
        )
        .context("writing bootstrap")?;
        let child = start(thread, envoy, name, dir).await?;
        Ok(Proxy {
            name: name.to_string(),
            admin,
            dir: dir.to_path_buf(),
            envoy: envoy.to_path_buf(),
            process: Arc::new(Process {
                child: Mutex::new(child),
                expected_exit: AtomicBool::new(false),
            }),
            written: Mutex::new(config),
        })
    }

    /// Starts the proxy again from its bootstrap and the xDS files it last had (a replacement
    /// pod with the same identity and address).
    pub async fn respawn(&self, thread: &MeshThread) -> Result<()> {
        let child = start(thread, &self.envoy, &self.name, &self.dir).await?;
        let mut old = self.process.child.lock().expect("process lock");
        old.kill();
        *old = child;
        self.process.expected_exit.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// The exit status, once the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.process.child.lock().expect("process lock").exited()
    }

    pub fn kill(&self) {
        self.process.child.lock().expect("process lock").kill();
    }

    /// Kills it as a fault would: the watch does not report it as a crash.
    pub fn kill_expected(&self) {
        self.process.expected_exit.store(true, Ordering::SeqCst);
        self.kill();
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) the proxy's process group.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: our own child's process group.
        unsafe { libc::kill(-(pid as i32), signal) };
    }

    pub fn pid(&self) -> u32 {
        self.process.child.lock().expect("process lock").pid()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        tail_log(&self.dir)
    }

    pub fn write_config(&self, config: &EnvoyConfig, version: u64) -> Result<()> {
        write_xds(&self.dir, config, version)
    }

    /// Writes a listener update Envoy must reject (an address that is not one): how a control
    /// plane's bad push looks to the proxy.
    pub fn write_rejected(&self, version: u64) -> Result<()> {
        let bad = serde_json::json!({
            "version_info": version.to_string(),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "meshtest-rejected-push",
                "address": {"socket_address": {"address": "not-an-address", "port_value": 1}},
                "filter_chains": [{"filters": []}],
            }],
        });
        write_atomic(&self.dir.join(LDS_FILE), &serde_json::to_vec(&bad)?)?;
        super::xds::changed(&self.dir, LDS_FILE, &version.to_string());
        Ok(())
    }

    pub(crate) fn watched(&self) -> (String, Arc<Process>) {
        (self.name.clone(), self.process.clone())
    }
}

async fn start(thread: &MeshThread, envoy: &Path, name: &str, dir: &Path) -> Result<Supervised> {
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(dir.join("bootstrap.json"))
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--drain-time-s",
            "1",
            // Access logs reach the log file within a second (Envoy's default is 10 s).
            "--file-flush-interval-msec",
            "1000",
        ])
        .args(["--service-node", name]);
    let (label, log) = (format!("envoy ({name})"), dir.join("envoy.log"));
    thread
        .run(async move { Supervised::spawn(&label, cmd, &log) })
        .await?
}

fn write_xds(dir: &Path, config: &EnvoyConfig, version: u64) -> Result<()> {
    // Clusters first: a listener may route to a cluster that is new in this version.
    let v = version.to_string();
    write_atomic(
        &dir.join(CDS_FILE),
        &serde_json::to_vec(&config.cds(version))?,
    )?;
    super::xds::changed(dir, CDS_FILE, &v);
    write_atomic(
        &dir.join(LDS_FILE),
        &serde_json::to_vec(&config.lds(version))?,
    )?;
    super::xds::changed(dir, LDS_FILE, &v);
    Ok(())
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

/// Watches every proxy of a mesh and reports (stderr, and `deaths`) each one that exits when
/// nobody meant it to, until `stopping` is set (the mesh's own shutdown kills them all). A
/// replaced process is watched again.
pub(crate) fn watch(
    thread: &MeshThread,
    proxies: Vec<(String, Arc<Process>)>,
    stopping: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<Death>>> {
    let deaths: Arc<Mutex<Vec<Death>>> = Arc::default();
    let seen = deaths.clone();
    thread.spawn(async move {
        let mut reported: Vec<Option<u32>> = vec![None; proxies.len()];
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (i, (name, process)) in proxies.iter().enumerate() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let (pid, status) = {
                    let mut child = process.child.lock().expect("process lock");
                    (child.pid(), child.exited())
                };
                let Some(status) = status else { continue };
                if reported[i] == Some(pid) || process.expected_exit.load(Ordering::SeqCst) {
                    continue;
                }
                reported[i] = Some(pid);
                eprintln!(
                    "meshtest: the Envoy sidecar of {name} exited while the mesh runs ({status}); calls to it are refused, and steps that need it are UNCHECKED"
                );
                seen.lock().expect("deaths lock").push(Death {
                    proxy: name.clone(),
                    status: status.to_string(),
                });
            }
        }
    });
    deaths
}
