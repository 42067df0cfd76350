//! The test workload behind every sidecar (`meshtest agent`): echoes each request as JSON,
//! forwards api-gateway's routes to their backends, and takes faults and call orders on a
//! separate control listener (like Istio's echo app and its ForwardEcho).

pub mod control;
mod echo;
mod fault;
mod grpc;
mod tcp;

pub use fault::{Fault, FaultStatus, HANG_LIMIT};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::Dial;

/// Where a listener binds: TCP (in a cluster) or a Unix socket (behind a local sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(path.into())),
            Some(_) => Err("unix: needs a path".into()),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("`{s}` is neither HOST:PORT nor unix:PATH ({e})")),
        }
    }
}

/// How the agent reaches other services: through its sidecar's outbound socket (local), or by
/// their DNS names (in a cluster, where iptables sends it to the sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Sidecar(PathBuf),
    Dns,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub service: String,
    pub version: String,
    pub pod: String,
    pub namespace: String,
    /// The app's listeners, each with the pod port it serves (echoed back as `port`).
    pub listen: Vec<(u16, Listen)>,
    pub control: Listen,
    /// Path prefix -> service (SERVICE or SERVICE:PORT) to forward to (api-gateway's routes).
    pub forwards: Vec<(String, String)>,
    pub outbound: Outbound,
    /// The port to call a service on when a call names none: the mesh's own map, else
    /// `default_port`.
    pub service_ports: BTreeMap<String, u16>,
    pub default_port: u16,
    /// The test issuer's JSON Web Key Set, served at /.well-known/jwks.json (the mesh's
    /// RequestAuthentication jwksUri points at it).
    pub jwks: Option<String>,
    /// Own ports that are TCP: served as raw bytes (echoed), or as HTTP when the peer speaks it.
    pub tcp_ports: Vec<u16>,
    /// SERVICE:PORT (and SERVICE, when its first port is TCP) -> the sidecar socket for it.
    pub tcp_outbound: BTreeMap<String, PathBuf>,
}

pub(crate) struct Shared {
    pub config: AgentConfig,
    pub fault: Mutex<fault::FaultState>,
    /// Requests the app ports received (not control requests), for steps that count attempts.
    pub requests: std::sync::atomic::AtomicU64,
    /// Of those, the ones a fault changed (how chaos sees that a fault reached traffic).
    pub faulted: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The fault in force now.
    pub fn fault(&self) -> Fault {
        self.fault.lock().expect("fault lock").current()
    }

    /// The fault for a request about to be served (counted when it changes it).
    pub fn fault_for_request(&self) -> Fault {
        self.fault.lock().expect("fault lock").hit()
    }
}

impl Shared {
    /// The dial and Host header for calling `target` (SERVICE or SERVICE:PORT) from this
    /// workload.
    pub fn route_to(&self, target: &str) -> (Dial, String) {
        let (service, port) = match target.rsplit_once(':') {
            Some((s, p)) if p.parse::<u16>().is_ok() => (s, p.parse().expect("checked")),
            _ => (
                target,
                self.config
                    .service_ports
                    .get(target)
                    .copied()
                    .unwrap_or(self.config.default_port),
            ),
        };
        if let (Outbound::Sidecar(_), Some(socket)) = (
            &self.config.outbound,
            self.config.tcp_outbound.get(&format!("{service}:{port}")),
        ) {
            // A TCP port: the bytes go through tcp_proxy; the peer's stand-in speaks HTTP back.
            return (Dial::Unix(socket.clone()), format!("{service}:{port}"));
        }
        match &self.config.outbound {
            Outbound::Sidecar(path) => (Dial::Unix(path.clone()), format!("{service}:{port}")),
            Outbound::Dns => {
                let host = format!("{service}.{}.svc.cluster.local", self.config.namespace);
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                    .ok()
                    .and_then(|mut a| a.next())
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
                (Dial::Tcp(addr), format!("{host}:{port}"))
            }
        }
    }
}

/// A running agent; dropping it stops its listeners.
pub struct Agent {
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent> {
        let shared = Arc::new(Shared {
            config: config.clone(),
            fault: Mutex::new(fault::FaultState::default()),
            requests: Default::default(),
            faulted: Default::default(),
        });
        let mut tasks = JoinSet::new();
        for (port, listen) in &config.listen {
            let (app, port) = (shared.clone(), *port);
            let handler = move |req| echo::handle(app.clone(), port, req);
            if config.tcp_ports.contains(&port) {
                tcp::serve(&mut tasks, listen, handler).await?;
            } else {
                serve(&mut tasks, listen, handler).await?;
            }
        }
        let ctl = shared.clone();
        serve(&mut tasks, &config.control, move |req| {
            control::handle(ctl.clone(), req)
        })
        .await?;
        Ok(Agent { tasks, shared })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.shared.config
    }

    /// Runs until the listeners fail (standalone `meshtest agent`).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Answers are boxed so a slow body and a whole one have one type.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
pub(crate) type Response = hyper::Response<Body>;

/// A whole body at once.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::BodyExt::boxed(Full::new(bytes.into()))
}

/// Marks a response whose connection must be dropped without an answer (fault `close`).
#[derive(Debug)]
pub(crate) struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: close connection")
    }
}

impl std::error::Error for CloseConnection {}

/// A connection's stream, TCP or Unix.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Conn = Box<dyn Io>;
pub(crate) type OnConn =
    Arc<dyn Fn(Conn) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Accepts connections on `listen` and hands each to `on_conn`, until the task set is dropped.
pub(crate) async fn accept(
    tasks: &mut JoinSet<()>,
    listen: &Listen,
    on_conn: OnConn,
) -> Result<()> {
    macro_rules! accept_loop {
        ($listener:expr) => {{
            let listener = $listener;
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    conns.spawn(on_conn(Box::new(stream)));
                    while conns.try_join_next().is_some() {}
                }
            });
        }};
    }
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("agent: binding {addr}"))?;
            accept_loop!(l);
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("agent: binding {}", path.display()))?;
            accept_loop!(l);
        }
    }
    Ok(())
}

/// Serves HTTP on `listen`: HTTP/1.1 and h2c with prior knowledge (what a sidecar sends to an
/// http2 or grpc port).
pub(crate) async fn serve<F, Fut>(
    tasks: &mut JoinSet<()>,
    listen: &Listen,
    handler: F,
) -> Result<()>
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, CloseConnection>> + Send + 'static,
{
    let on_conn: OnConn = Arc::new(move |io: Conn| Box::pin(serve_http(io, handler.clone())));
    accept(tasks, listen, on_conn).await
}

/// One connection's HTTP: HTTP/1.1, or h2c with prior knowledge.
pub(crate) async fn serve_http<S, F, Fut>(io: S, handler: F)
where
    S: Io + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let svc = hyper::service::service_fn(handler);
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

pub(crate) fn json_response(status: u16, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

/// The caller's identity from x-forwarded-client-cert: the URI of the last element (the peer
/// the sidecar itself authenticated).
pub fn caller_from_xfcc(xfcc: &str) -> Option<String> {
    let last = split_outside_quotes(xfcc, ',').into_iter().last()?;
    split_outside_quotes(&last, ';').into_iter().find_map(|kv| {
        kv.trim()
            .strip_prefix("URI=")
            .map(|u| u.trim_matches('"').to_string())
    })
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            out.push(String::new());
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

/// Headers as a map (repeated headers joined with ", ").
pub(crate) fn header_map(headers: &hyper::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v)
            })
            .or_insert(v);
    }
    out
}

pub(crate) type Handled = Result<Response, CloseConnection>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_is_the_last_xfcc_uri() {
        let xfcc = "By=spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa;Hash=abc;Subject=\"\";URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account,By=spiffe://cluster.local/ns/pyairtable/sa/auth-service-sa;Hash=def;Subject=\"O=a,CN=b\";URI=spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa";
        assert_eq!(
            caller_from_xfcc(xfcc).as_deref(),
            Some("spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa")
        );
        assert_eq!(caller_from_xfcc("By=x;Hash=y"), None);
    }

    #[test]
    fn listen_parses_both_forms() {
        assert_eq!(
            "unix:/tmp/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/tmp/a.sock".into())
        );
        assert!(matches!(
            "0.0.0.0:8080".parse::<Listen>().unwrap(),
            Listen::Tcp(_)
        ));
        assert!("nowhere".parse::<Listen>().is_err());
    }
}

/// `meshtest agent` flags (also how a Deployment's container args are read by the local target).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Where the app serves: HOST:PORT or unix:PATH (repeatable, one per pod port).
    #[arg(long, default_values_t = vec![Listen::Tcp(SocketAddr::from(([0, 0, 0, 0], 8080)))])]
    pub listen: Vec<Listen>,
    /// Where the control API listens: HOST:PORT or unix:PATH. Keep it on loopback (reach it
    /// through a port-forward): it can fault the workload and make calls as it.
    #[arg(long, default_value = "127.0.0.1:15080")]
    pub control: Listen,
    /// Forward requests whose path starts with PREFIX to SERVICE[:PORT]: PREFIX=SERVICE
    /// (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<(String, String)>,
    /// Send outbound calls to this sidecar socket instead of the service's DNS name.
    #[arg(long)]
    pub outbound: Option<PathBuf>,
    /// Port to call a service on when the call names none (SERVICE:PORT overrides it).
    #[arg(long, default_value_t = 8080)]
    pub service_port: u16,
    /// A JSON Web Key Set file to serve at /.well-known/jwks.json.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    #[arg(long, env = "MESHTEST_SERVICE", default_value = "unknown")]
    pub service: String,
    #[arg(long, env = "MESHTEST_VERSION", default_value = "v1")]
    pub version: String,
    #[arg(long, env = "MESHTEST_POD", default_value = "unknown")]
    pub pod: String,
    #[arg(long, env = "MESHTEST_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

fn parse_forward(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((prefix, service)) if prefix.starts_with('/') && !service.is_empty() => {
            Ok((prefix.into(), service.into()))
        }
        _ => Err(format!(
            "`{s}` is not PREFIX=SERVICE with PREFIX starting with /"
        )),
    }
}

impl AgentArgs {
    pub fn into_config(self) -> Result<AgentConfig> {
        let jwks = match &self.jwks {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--jwks {}", path.display()))?,
            ),
            None => None,
        };
        Ok(AgentConfig {
            service: self.service,
            version: self.version,
            pod: self.pod,
            namespace: self.namespace,
            listen: self
                .listen
                .into_iter()
                .map(|l| {
                    let port = match &l {
                        Listen::Tcp(a) => a.port(),
                        Listen::Unix(_) => 0,
                    };
                    (port, l)
                })
                .collect(),
            control: self.control,
            forwards: self.forwards,
            outbound: match self.outbound {
                Some(path) => Outbound::Sidecar(path),
                None => Outbound::Dns,
            },
            service_ports: BTreeMap::new(),
            default_port: self.service_port,
            jwks,
            tcp_ports: Vec::new(),
            tcp_outbound: BTreeMap::new(),
        })
    }
}
