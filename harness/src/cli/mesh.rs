//! `meshtest up`, `status` and `down`: the embedded mesh as a foreground process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::{InputError, exit};
use crate::local::{LocalMesh, LocalOptions, Recorded, State, admin};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory of Kubernetes + Istio manifests.
    #[arg(long, default_value = "mesh/pyairtable")]
    mesh: PathBuf,
    /// Envoy binary to use (default: $MESHTEST_ENVOY, `envoy` on PATH if it is the pinned version, or the cache).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Also run Prometheus (pinned, installed into the cache on first use; $MESHTEST_PROMETHEUS
    /// to use another binary), scraping every proxy each second and evaluating the mesh's
    /// PrometheusRules; `status` prints its URL.
    #[arg(long)]
    observe: bool,
}

#[derive(clap::Args)]
pub struct StateArgs {}

pub(crate) fn state_file() -> PathBuf {
    super::state_dir().join("state.json")
}

/// The state of a running `meshtest up`, or an error (exit 2) saying how to start one.
pub fn read_running_state() -> Result<State> {
    let path = state_file();
    match State::read(&path)? {
        Recorded::Running(s) => Ok(s),
        Recorded::Stale(s) => Err(InputError::new(
            &path,
            format!(
                "the mesh recorded here (pid {}) is not running; start one with `meshtest up`",
                s.owner.pid
            ),
        )
        .into()),
        Recorded::Nothing => Err(InputError::new(
            &path,
            "no mesh is running here (no state file); start one with `meshtest up`",
        )
        .into()),
    }
}

pub async fn up(a: UpArgs) -> Result<u8> {
    let mut signals = StopSignals::install()?;
    if !a.mesh.is_dir() {
        return Err(InputError::new(&a.mesh, "mesh directory not found (use --mesh DIR)").into());
    }
    if let Recorded::Running(s) = State::read(&state_file())? {
        return Err(InputError::new(
            state_file(),
            format!(
                "a mesh is already running here (pid {}); stop it with `meshtest down`",
                s.owner.pid
            ),
        )
        .into());
    }
    // Find (or first install) Envoy before the clock starts: readiness is the mesh's own time.
    let envoy = match a.envoy {
        Some(path) if path.is_file() => path,
        Some(path) => {
            return Err(
                InputError::new("--envoy", format!("{} is not a file", path.display())).into(),
            );
        }
        None => crate::envoy::ensure()?,
    };
    let started = Instant::now();
    let mesh_dir = a.mesh.canonicalize().unwrap_or_else(|_| a.mesh.clone());
    let opts = LocalOptions {
        mesh_dir: mesh_dir.clone(),
        envoy: Some(envoy),
        observe: a.observe,
    };
    // A signal during start-up stops it: dropping the half-started mesh kills what it spawned.
    let mesh = tokio::select! {
        mesh = LocalMesh::start(&opts) => std::sync::Arc::new(mesh?),
        _ = signals.wait() => {
            println!("meshtest: stopped while starting");
            return Ok(exit::UNCHECKED);
        }
    };
    let elapsed = started.elapsed();
    let state = mesh.state(&mesh_dir);
    // Other processes (chaos --attach, run --attach, chaos revert) change the mesh through
    // this process; it also keeps the chaos faults' leases.
    let control = crate::local::control::serve(mesh.clone(), &state.control)?;
    let keeper = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Err(e) = mesh.tick().await {
                    eprintln!("meshtest: ending an expired chaos fault: {e:#}");
                }
            }
        })
    };
    state.write(&state_file())?;
    let http = state.ingress.http.clone().unwrap_or_else(|| "-".into());
    let https = state.ingress.https.clone().unwrap_or_else(|| "-".into());
    println!(
        "meshtest: mesh ready in {:.2}s: {} pods behind {} Envoy sidecars + ingress gateway; ingress http://{http} https://{https}",
        elapsed.as_secs_f64(),
        state.pods.len(),
        state.pods.len()
    );
    if let Some(url) = &state.prometheus {
        println!(
            "meshtest: Prometheus {url} (every proxy scraped each second, the mesh's PrometheusRules loaded)"
        );
    }
    if let Some(url) = &state.tracing {
        println!("meshtest: spans collected at {url} (Zipkin v2 API: GET /api/v2/trace/ID)");
    }
    let stand_ins: Vec<&str> = state
        .pods
        .iter()
        .filter(|p| p.stand_in)
        .map(|p| p.name.as_str())
        .collect();
    if !stand_ins.is_empty() {
        let shown = stand_ins.len().min(8);
        let more = match stand_ins.len() - shown {
            0 => String::new(),
            n => format!(" and {n} more (`meshtest status` lists them)"),
        };
        println!(
            "meshtest: {} of {} pods run a stand-in agent on their ports (their containers are not `meshtest agent`): {}{more}",
            stand_ins.len(),
            state.pods.len(),
            stand_ins[..shown].join(", ")
        );
    }
    for i in &mesh.model().manifests.ignored {
        println!(
            "meshtest: ignored {} {} ({}:{}): {}",
            i.kind,
            i.name,
            i.origin.file.display(),
            i.origin.line,
            i.why
        );
    }
    println!("meshtest: state in {}", state_file().display());
    if let (Some(a), Some(b)) = (state.pods.first(), state.pods.last()) {
        let host = match state.ingress.host.as_str() {
            "localhost" => String::new(),
            h => format!("-H 'Host: {h}' "),
        };
        println!(
            "meshtest: try `meshtest call --from {} --to {} /health`, `meshtest status`, or `curl {host}http://{http}/`",
            a.service, b.service
        );
    }
    println!("meshtest: Ctrl-C or `meshtest down` stops it");
    signals.wait().await;
    control.abort();
    keeper.abort();
    let _ = control.await;
    let _ = keeper.await;
    // Every clone is gone with its task: dropping the last stops every proxy and agent.
    mesh.stop();
    drop(mesh);
    let _ = std::fs::remove_file(state_file());
    println!("meshtest: mesh stopped");
    Ok(exit::OK)
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before the mesh starts so that a Ctrl-C at
/// any moment (even right after "ready") stops it cleanly instead of killing meshtest outright.
pub(crate) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    pub(crate) async fn wait(&mut self) {
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
        state.owner.pid,
        state.ingress.http.as_deref().unwrap_or("-"),
        state.ingress.https.as_deref().unwrap_or("-")
    );
    if let Some(url) = &state.prometheus {
        println!("prometheus {url}");
    }
    if let Some(url) = &state.tracing {
        println!("tracing {url}");
    }
    let mut healthy = true;
    let mut rows = vec![(
        "istio-ingressgateway".to_string(),
        "-".to_string(),
        "-".to_string(),
        state.ingress.admin.clone(),
        None,
        false,
    )];
    rows.extend(state.pods.iter().map(|p| {
        let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
        (
            p.name.clone(),
            p.version.clone(),
            format!("{}:{}", p.ip, ports.join(",")),
            p.admin.clone(),
            Some(p.control.clone()),
            p.stand_in,
        )
    }));
    println!(
        "{:<28} {:<8} {:<24} {:<10} AGENT",
        "POD", "VERSION", "ADDRESS", "ENVOY"
    );
    for (name, version, address, admin_socket, control, stand_in) in rows {
        let live = admin::is_live(&admin_socket).await;
        let agent = match &control {
            None => "-",
            Some(c) if agent_alive(c).await => "ok",
            Some(_) => "DOWN",
        };
        healthy &= live && agent != "DOWN";
        println!(
            "{name:<28} {version:<8} {address:<24} {:<10} {agent}{}",
            if live { "LIVE" } else { "DOWN" },
            if stand_in { " (stand-in)" } else { "" }
        );
    }
    // What chaos has in force: a fault left by a killed run shows here until its lease ends.
    use crate::target::Target;
    match crate::target::local::LocalTarget::attach(state.clone()) {
        Ok(t) => match t.injections().await {
            Ok(list) if list.is_empty() => println!("chaos faults in force: none"),
            Ok(list) => {
                println!("chaos faults in force: {}", list.len());
                for a in list {
                    println!(
                        "  {} {} ({}): {} left, met traffic {} times",
                        a.owner,
                        a.id,
                        a.injection.describe(),
                        meshtest_load::duration::human(Duration::from_millis(a.expires_in_ms)),
                        a.observed
                    );
                }
            }
            Err(e) => println!("chaos faults in force: unknown ({e:#})"),
        },
        Err(e) => println!("chaos faults in force: unknown ({e:#})"),
    }
    if !healthy {
        println!("meshtest: some proxies or agents are down: steps that need them are UNCHECKED");
    }
    Ok(if healthy { exit::OK } else { exit::UNCHECKED })
}

async fn agent_alive(control: &std::path::Path) -> bool {
    let mut req = crate::client::Request::get("agent", "/health");
    req.timeout = Duration::from_secs(2);
    crate::client::send(&crate::client::Dial::Unix(control.to_path_buf()), &req)
        .await
        .status()
        == Some(200)
}

pub async fn down(_: StateArgs) -> Result<u8> {
    let state = match State::read(&state_file())? {
        Recorded::Nothing => {
            println!("meshtest: no mesh is running here");
            return Ok(exit::OK);
        }
        Recorded::Stale(s) => {
            // Never signal a PID we cannot prove is the meshtest that wrote the file.
            let _ = std::fs::remove_file(state_file());
            println!(
                "meshtest: the recorded mesh (pid {}) is not running (or its PID now belongs to another process); removed its stale state",
                s.owner.pid
            );
            return Ok(exit::OK);
        }
        Recorded::Running(s) => s,
    };
    let pid = state.owner.pid;
    // SAFETY: signalling the process State::read proved (PID + start time) is our `up`.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.owner.is_alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if state.owner.is_alive() {
        // Its children die with it (PR_SET_PDEATHSIG).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = std::fs::remove_file(state_file());
        println!("meshtest: mesh (pid {pid}) did not stop within 10s; killed it");
    } else {
        println!("meshtest: mesh (pid {pid}) stopped");
    }
    Ok(exit::OK)
}
