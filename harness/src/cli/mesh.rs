//! `meshtest up`, `status` and `down`: the embedded mesh as a foreground process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::error::{InputError, exit};
use crate::local::{LocalMesh, LocalOptions, State, admin};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory of Kubernetes + Istio manifests.
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Envoy binary to use (default: $MESHTEST_ENVOY, `envoy` on PATH if it is the pinned version, or the cache).
    #[arg(long)]
    envoy: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StateArgs {}

fn state_file() -> PathBuf {
    super::state_dir().join("state.json")
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn read_state() -> Result<Option<State>> {
    let path = state_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is not a meshtest state file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The state of a running `meshtest up`, or an error saying how to start one.
pub fn read_running_state() -> Result<State> {
    match read_state()? {
        Some(s) if pid_alive(s.pid) => Ok(s),
        Some(s) => bail!(
            "the mesh recorded in {} (pid {}) is not running; start it with `meshtest up`",
            state_file().display(),
            s.pid
        ),
        None => bail!(
            "no mesh is running here ({} not found); start one with `meshtest up`",
            state_file().display()
        ),
    }
}

pub async fn up(a: UpArgs) -> Result<u8> {
    let mut signals = StopSignals::install()?;
    if !a.mesh.is_dir() {
        return Err(InputError::new(&a.mesh, "mesh directory not found (use --mesh DIR)").into());
    }
    if let Some(s) = read_state()?
        && pid_alive(s.pid)
    {
        bail!(
            "a mesh is already running (pid {}, {}); stop it with `meshtest down`",
            s.pid,
            state_file().display()
        );
    }
    // Find (or first install) Envoy before the clock starts: readiness is the mesh's own time.
    let envoy = match a.envoy {
        Some(path) => path,
        None => crate::envoy::ensure()?,
    };
    let started = Instant::now();
    let mesh_dir = a.mesh.canonicalize().unwrap_or_else(|_| a.mesh.clone());
    let opts = LocalOptions {
        mesh_dir: mesh_dir.clone(),
        envoy: Some(envoy),
    };
    let mesh = LocalMesh::start(&opts).await?;
    let elapsed = started.elapsed();
    let state = mesh.state(&mesh_dir);
    std::fs::create_dir_all(super::state_dir())?;
    crate::local::layout::write_atomic(&state_file(), &serde_json::to_vec_pretty(&state)?)?;
    let http = state.ingress.http.clone().unwrap_or_else(|| "-".into());
    let https = state.ingress.https.clone().unwrap_or_else(|| "-".into());
    println!(
        "meshtest: mesh ready in {:.2}s: {} pods behind {} Envoy sidecars + ingress gateway; ingress http://{http} https://{https}",
        elapsed.as_secs_f64(),
        state.pods.len(),
        state.pods.len()
    );
    println!(
        "meshtest: state in {}; try `meshtest call --from api-gateway --to auth-service /health` or `curl http://{http}/health`",
        state_file().display()
    );
    println!("meshtest: Ctrl-C or `meshtest down` stops it");
    signals.wait().await;
    drop(mesh);
    let _ = std::fs::remove_file(state_file());
    println!("meshtest: mesh stopped");
    Ok(exit::OK)
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before the mesh starts so that a Ctrl-C at
/// any moment (even right after "ready") stops it cleanly instead of killing meshtest outright.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

pub async fn status(_: StateArgs) -> Result<u8> {
    let state = read_running_state()?;
    println!(
        "mesh {} (pid {}), ingress http://{} https://{}",
        state.mesh_dir.display(),
        state.pid,
        state.ingress.http.as_deref().unwrap_or("-"),
        state.ingress.https.as_deref().unwrap_or("-")
    );
    let mut healthy = true;
    let mut rows = vec![(
        "istio-ingressgateway".to_string(),
        "-".to_string(),
        "-".to_string(),
        state.ingress.admin.clone(),
    )];
    rows.extend(state.pods.iter().map(|p| {
        (
            p.name.clone(),
            p.version.clone(),
            p.address.clone(),
            p.admin.clone(),
        )
    }));
    println!(
        "{:<28} {:<8} {:<18} {:<18} ENVOY",
        "PROXY", "VERSION", "ADDRESS", "ADMIN"
    );
    for (name, version, address, admin_addr) in rows {
        let live = match admin_addr.parse() {
            Ok(a) => admin::is_live(a).await,
            Err(_) => false,
        };
        healthy &= live;
        println!(
            "{name:<28} {version:<8} {address:<18} {admin_addr:<18} {}",
            if live { "LIVE" } else { "NOT READY" }
        );
    }
    Ok(if healthy { exit::OK } else { exit::FAILED })
}

pub async fn down(_: StateArgs) -> Result<u8> {
    let Some(state) = read_state()? else {
        println!("meshtest: no mesh is running here");
        return Ok(exit::OK);
    };
    if !pid_alive(state.pid) {
        let _ = std::fs::remove_file(state_file());
        println!(
            "meshtest: the recorded mesh (pid {}) was not running; removed its stale state",
            state.pid
        );
        return Ok(exit::OK);
    }
    // SAFETY: signalling the pid recorded by our own `up`.
    unsafe { libc::kill(state.pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(state.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pid_alive(state.pid) {
        // Its children die with it (PR_SET_PDEATHSIG).
        unsafe { libc::kill(state.pid as i32, libc::SIGKILL) };
        let _ = std::fs::remove_file(state_file());
        println!(
            "meshtest: mesh (pid {}) did not stop within 10s; killed it",
            state.pid
        );
    } else {
        println!("meshtest: mesh (pid {}) stopped", state.pid);
    }
    Ok(exit::OK)
}
