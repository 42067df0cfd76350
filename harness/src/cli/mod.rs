//! Command-line interface: raw flags here, validated and handed to the library.

mod call;
mod chaos;
mod derive;
mod kube;
mod load;
mod mesh;
mod run;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{exit, exit_code_for};

#[derive(Parser)]
#[command(
    name = "meshtest",
    version,
    about = "Prove a service mesh keeps its promises: conformance, load and chaos against a live mesh."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the embedded mesh (real Envoy) and keep it running until Ctrl-C or `meshtest down`.
    Up(mesh::UpArgs),
    /// Show whether a mesh started by `meshtest up` is running and healthy.
    Status(mesh::StateArgs),
    /// Stop the mesh started by `meshtest up` (from another shell).
    Down(mesh::StateArgs),
    /// Print a JWT the mesh accepts (or, with --expired/--issuer/..., one it must refuse).
    Token(token::TokenArgs),
    /// Run the conformance features against the mesh; exit 1 names each broken promise.
    Run(run::RunArgs),
    /// Generate HTTP load (open loop at --rate, or closed loop over --connections) with HDR reports.
    Load(Box<meshtest_load::LoadArgs>),
    /// Work with reports: `meshtest report compare BASE CUR`.
    #[command(subcommand)]
    Report(load::ReportCommand),
    /// Make one HTTP call from a workload, from outside the mesh, or through the ingress.
    Call(call::CallArgs),
    /// Run a chaos profile against the mesh under load (or: revert, list, note).
    Chaos(Box<chaos::ChaosArgs>),
    /// Write Gherkin features derived from a mesh's own policies (mTLS, authorization, ingress).
    Derive(derive::DeriveArgs),
    /// Run the test workload (echo + control API) that every pod of the mesh runs.
    Agent(crate::agent::AgentArgs),
    /// Work with a Kubernetes cluster: `meshtest kube deploy`, `meshtest kube clean`.
    #[command(subcommand)]
    Kube(kube::KubeCommand),
}

/// Where `meshtest up` keeps its state: $MESHTEST_STATE_DIR or ./.meshtest/local.
pub(crate) fn state_dir() -> PathBuf {
    std::env::var_os("MESHTEST_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".meshtest/local"))
}

pub fn main() -> ExitCode {
    crate::tls::install_crypto_provider();
    let cli = Cli::parse();
    // Commands that only print die quietly on a closed pipe (`meshtest status | head`), like
    // other Unix tools. The others keep Rust's ignored SIGPIPE: they write to sockets whose
    // peers may close (a fault proxy relaying to an Envoy that timed the request out, a load
    // against a server that hangs up), and SIGPIPE's default would kill the whole run there.
    if matches!(
        cli.command,
        Command::Status(_) | Command::Token(_) | Command::Report(_) | Command::Derive(_)
    ) {
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshtest: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNCHECKED);
        }
    };
    // A panic is a meshtest bug, never a verdict: report it as "could not check" (3), not 101.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Up(a) => mesh::up(a).await,
                Command::Status(a) => mesh::status(a).await,
                Command::Down(a) => mesh::down(a).await,
                Command::Token(a) => token::run(a),
                Command::Call(a) => call::run(a).await,
                Command::Run(a) => run::run(a).await,
                Command::Chaos(a) => chaos::chaos(*a).await,
                Command::Load(a) => load::load(*a).await,
                Command::Report(c) => load::report(c),
                Command::Derive(a) => derive::run(a),
                Command::Kube(c) => kube::run(c).await,
                Command::Agent(a) => {
                    let agent = crate::agent::Agent::start(a.into_config()?).await?;
                    let listen: Vec<String> = agent
                        .config()
                        .listen
                        .iter()
                        .map(|(_, l)| l.to_string())
                        .collect();
                    eprintln!(
                        "meshtest agent: {} {} serving on {}, control on {}",
                        agent.config().service,
                        agent.config().version,
                        listen.join(", "),
                        agent.config().control
                    );
                    agent.wait().await;
                    Ok(exit::OK)
                }
            }
        })
    }));
    let result = match result {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "meshtest: internal error (a bug in meshtest; the panic is above): nothing was judged"
            );
            return ExitCode::from(exit::UNCHECKED);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("meshtest: error: {err:#}");
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// `--target`: local runs; kube is checked as far as it is built (the kubeconfig, and the
/// context the run may touch) and then refused, all before anything starts.
fn check_target(
    target: &str,
    kube: &crate::target::kube::KubeFlags,
) -> Result<(), crate::error::InputError> {
    use crate::error::InputError;
    match target {
        "local" => Ok(()),
        "kube" => {
            let c = crate::target::kube::choose(kube)?;
            Err(InputError::new(
                "--target",
                format!(
                    "context `{}` ({}) would be used, but the kube target's deploy, calls and faults are not built yet; use --target local",
                    c.context, c.server
                ),
            ))
        }
        other => Err(InputError::new(
            "--target",
            format!("unknown target `{other}` (local or kube)"),
        )),
    }
}
