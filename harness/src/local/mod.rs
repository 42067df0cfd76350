//! The local target's embedded mesh: one real Envoy sidecar per pod on its own loopback
//! address, an ingress gateway Envoy, a mesh CA, and the agent behind each sidecar, all
//! configured from the manifests through `translate` and updated live by filesystem xDS.

pub mod admin;
pub mod layout;
pub mod process;
pub mod runtime;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentArgs};
use crate::manifest::Manifests;
use crate::model::{INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT, MeshModel, Pod, spiffe_id};
use crate::pki::{self, MeshCa};
use crate::translate::bootstrap::{CDS_FILE, LDS_FILE, bootstrap};
use crate::translate::gateway::GatewayPlacement;
use crate::translate::proxy::{self, SidecarPlacement};
use crate::translate::{CertFiles, EnvoyConfig};

use layout::{ADMIN_PORT, Block, RunDir, write_atomic};
use process::Supervised;
use runtime::MeshThread;

/// How long a proxy may take to load its config before start-up fails.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a live config change may take to reach every proxy.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub mesh_dir: PathBuf,
    /// The Envoy binary; None finds or installs the pinned one.
    pub envoy: Option<PathBuf>,
}

/// One running proxy.
struct Proxy {
    name: String,
    admin: SocketAddr,
    dir: PathBuf,
    process: Supervised,
    /// Last config written, to skip proxies a change does not touch.
    written: Mutex<EnvoyConfig>,
}

/// A pod: its sidecar and the agent behind it.
pub struct LocalPod {
    pub pod: Pod,
    pub address: SocketAddr,
    pub control: PathBuf,
    placement: SidecarPlacement,
    proxy: Proxy,
    _agent: Agent,
}

impl LocalPod {
    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin
    }
}

/// A running embedded mesh. Dropping it kills every Envoy and agent it started.
pub struct LocalMesh {
    model: Mutex<MeshModel>,
    pub pods: Vec<LocalPod>,
    ingress: Proxy,
    ingress_certs: CertFiles,
    gateway_ports: GatewayPorts,
    ca_file: PathBuf,
    version: Mutex<u64>,
    /// Runs the agents and owns the Envoys' parent thread; dropped after them.
    _thread: MeshThread,
    // Dropped last: the processes above must be gone before their files and block are.
    run: RunDir,
    block: Block,
}

/// The ingress gateway's placement: Gateway ports on the block's ingress address.
#[derive(Clone)]
struct GatewayPorts {
    ip: std::net::Ipv4Addr,
    credentials: PathBuf,
}

impl GatewayPlacement for GatewayPorts {
    fn listen(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, layout::unprivileged(port)))
    }

    fn credential(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.credentials.join(format!("{name}.crt")),
            self.credentials.join(format!("{name}.key")),
        )
    }
}

/// The part of a running mesh another `meshtest` process needs (state.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub pid: u32,
    pub mesh_dir: PathBuf,
    pub run_dir: PathBuf,
    pub ca: PathBuf,
    pub ingress: IngressState,
    pub pods: Vec<PodState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IngressState {
    pub http: Option<String>,
    pub https: Option<String>,
    pub admin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub sa: String,
    pub address: String,
    pub admin: String,
    pub control: String,
}

impl LocalMesh {
    /// Loads the manifests, mints identities, starts every proxy and agent, and returns once
    /// every proxy reports LIVE.
    pub async fn start(opts: &LocalOptions) -> Result<LocalMesh> {
        let manifests = Manifests::load_dir(&opts.mesh_dir)?;
        let model = MeshModel::build(manifests)?;
        let envoy = match &opts.envoy {
            Some(p) => p.clone(),
            None => crate::envoy::ensure()?,
        };
        let thread = MeshThread::start()?;
        let block = Block::claim()?;
        let run = RunDir::create(&block)?;
        let certs_dir = run.path.join("certs");
        let ca = MeshCa::generate("meshtest mesh root")?;

        let ingress_leaf =
            ca.issue_workload(&spiffe_id(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT))?;
        let ingress_certs =
            pki::write_leaf(&certs_dir, "istio-ingressgateway", &ingress_leaf, &ca)?;
        let ca_file = ingress_certs.ca.clone();
        let gateway_ports = GatewayPorts {
            ip: block.ingress_ip(),
            credentials: certs_dir.join("credentials"),
        };
        for gw in &model.manifests.gateways {
            for server in &gw.spec.servers {
                if let Some(name) = server
                    .tls
                    .as_ref()
                    .and_then(|t| t.credential_name.as_deref())
                {
                    let leaf = ca.issue_server(
                        &["localhost"],
                        &[std::net::IpAddr::V4(block.ingress_ip())],
                    )?;
                    pki::write_leaf(&gateway_ports.credentials, name, &leaf, &ca)?;
                }
            }
        }

        // Agents first, so sidecars find their apps listening.
        let mut prepared = Vec::new();
        for (i, pod) in model.pods.iter().enumerate() {
            let dir = run.path.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            let leaf = ca.issue_workload(&pod.spiffe_id())?;
            let certs = pki::write_leaf(&certs_dir, &pod.name, &leaf, &ca)?;
            let address = SocketAddr::from((
                block.pod_ip(&model, pod),
                model.service(&pod.service).expect("service").target_port,
            ));
            let placement = SidecarPlacement {
                inbound: address,
                outbound: dir.join("o.sock"),
                app: dir.join("a.sock"),
                certs,
            };
            let control = dir.join("c.sock");
            let agent = {
                let (pod, placement, control) = (pod.clone(), placement.clone(), control.clone());
                thread
                    .run(async move { start_agent(&pod, &placement, &control).await })
                    .await??
            };
            prepared.push((pod.clone(), dir, placement, control, agent));
        }

        let endpoints = |p: &Pod| {
            SocketAddr::from((
                block.pod_ip(&model, p),
                model.service(&p.service).expect("service").target_port,
            ))
        };
        let mut pods = Vec::new();
        for (pod, dir, placement, control, agent) in prepared {
            let config = proxy::sidecar(&model, &pod, &placement, &endpoints)?;
            let admin = SocketAddr::new(placement.inbound.ip(), ADMIN_PORT);
            let node = format!(
                "sidecar~{}~{}.{}~{}.svc.cluster.local",
                placement.inbound.ip(),
                pod.name,
                pod.namespace,
                pod.namespace
            );
            let proxy = spawn_proxy(
                &thread,
                &envoy,
                &pod.name,
                &node,
                &format!("{}.{}", pod.service, pod.namespace),
                admin,
                &dir,
                config,
            )
            .await?;
            pods.push(LocalPod {
                address: placement.inbound,
                control,
                placement,
                proxy,
                pod,
                _agent: agent,
            });
        }
        let ingress_dir = run.path.join("ingress");
        std::fs::create_dir_all(&ingress_dir)?;
        let ingress_config =
            proxy::ingress_gateway(&model, &ingress_certs, &gateway_ports, &endpoints)?;
        let ingress_admin = SocketAddr::from((block.ingress_ip(), ADMIN_PORT));
        let ingress = spawn_proxy(
            &thread,
            &envoy,
            "istio-ingressgateway",
            &format!(
                "router~{}~istio-ingressgateway.{INGRESS_NAMESPACE}~{INGRESS_NAMESPACE}.svc.cluster.local",
                block.ingress_ip()
            ),
            "istio-ingressgateway.istio-system",
            ingress_admin,
            &ingress_dir,
            ingress_config,
        )
        .await?;
        let mut mesh = LocalMesh {
            model: Mutex::new(model),
            pods,
            ingress,
            ingress_certs,
            gateway_ports,
            ca_file,
            version: Mutex::new(1),
            _thread: thread,
            run,
            block,
        };
        mesh.wait_ready().await?;
        Ok(mesh)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let proxies: Vec<&mut Proxy> = self
            .pods
            .iter_mut()
            .map(|p| &mut p.proxy)
            .chain(std::iter::once(&mut self.ingress))
            .collect();
        for proxy in proxies {
            loop {
                if let Some(status) = proxy.process.exited() {
                    bail!(
                        "Envoy for {} exited during start-up ({status}); its log:\n{}",
                        proxy.name,
                        tail_log(&proxy.dir)
                    );
                }
                if admin::is_live(proxy.admin).await {
                    break;
                }
                if started.elapsed() > READY_DEADLINE {
                    bail!(
                        "Envoy for {} was not LIVE within {READY_DEADLINE:?}; its log:\n{}",
                        proxy.name,
                        tail_log(&proxy.dir)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Re-translates `manifests` and hands every changed proxy its new config without a restart.
    /// Workloads must be the same as at start (pods are processes; adding one needs a restart).
    pub async fn apply(&self, manifests: Manifests) -> Result<()> {
        let model = MeshModel::build(manifests)?;
        {
            let current = self.model.lock().expect("model lock");
            if model.pods != current.pods || model.services != current.services {
                bail!("workloads (Deployments/Services) changed: restart the mesh to apply them");
            }
        }
        let version = {
            let mut v = self.version.lock().expect("version lock");
            *v += 1;
            *v
        };
        let block = &self.block;
        let endpoints = |p: &Pod| {
            SocketAddr::from((
                block.pod_ip(&model, p),
                model.service(&p.service).expect("service").target_port,
            ))
        };
        let mut changed = Vec::new();
        for lp in &self.pods {
            let config = proxy::sidecar(&model, &lp.pod, &lp.placement, &endpoints)?;
            if config != *lp.proxy.written.lock().expect("written lock") {
                changed.push((&lp.proxy, config));
            }
        }
        let ingress =
            proxy::ingress_gateway(&model, &self.ingress_certs, &self.gateway_ports, &endpoints)?;
        if ingress != *self.ingress.written.lock().expect("written lock") {
            changed.push((&self.ingress, ingress));
        }
        for (proxy, config) in &changed {
            write_xds(&proxy.dir, config, version)?;
        }
        for (proxy, config) in &changed {
            // Applied when Envoy reports the new version for both LDS and CDS.
            let want = Some(version.to_string());
            let applied = admin::wait_until(APPLY_DEADLINE, || async {
                admin::xds_versions(proxy.admin)
                    .await
                    .is_ok_and(|(lds, cds)| lds == want && cds == want)
            })
            .await;
            if !applied {
                bail!(
                    "Envoy for {} did not take config version {version} within {APPLY_DEADLINE:?}; its log:\n{}",
                    proxy.name,
                    tail_log(&proxy.dir)
                );
            }
            *proxy.written.lock().expect("written lock") = config.clone();
        }
        *self.model.lock().expect("model lock") = model;
        Ok(())
    }

    pub fn model(&self) -> MeshModel {
        self.model.lock().expect("model lock").clone()
    }

    pub fn pod(&self, name: &str) -> Option<&LocalPod> {
        self.pods.iter().find(|p| p.pod.name == name)
    }

    pub fn pods_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a LocalPod> + 'a {
        self.pods.iter().filter(move |p| p.pod.service == service)
    }

    pub fn state(&self, mesh_dir: &Path) -> State {
        let model = self.model.lock().expect("model lock");
        let port_of = |protocol: &str| {
            model
                .manifests
                .gateways
                .iter()
                .flat_map(|g| g.spec.servers.iter())
                .find(|s| s.port.protocol == protocol)
                .map(|s| self.block.gateway_listen(s.port.number).to_string())
        };
        State {
            pid: std::process::id(),
            mesh_dir: mesh_dir.to_path_buf(),
            run_dir: self.run.path.clone(),
            ca: self.ca_file.clone(),
            ingress: IngressState {
                http: port_of("HTTP"),
                https: port_of("HTTPS"),
                admin: self.ingress.admin.to_string(),
            },
            pods: self
                .pods
                .iter()
                .map(|p| PodState {
                    name: p.pod.name.clone(),
                    namespace: p.pod.namespace.clone(),
                    service: p.pod.service.clone(),
                    version: p.pod.version.clone(),
                    sa: p.pod.service_account.clone(),
                    address: p.address.to_string(),
                    admin: p.proxy.admin.to_string(),
                    control: format!("unix:{}", p.control.display()),
                })
                .collect(),
        }
    }

    /// Kills every proxy now (also done on drop).
    pub fn stop(&mut self) {
        for p in &mut self.pods {
            p.proxy.process.kill();
        }
        self.ingress.process.kill();
    }

    /// PIDs of the Envoy processes (for leak checks).
    pub fn envoy_pids(&self) -> Vec<u32> {
        self.pods
            .iter()
            .map(|p| p.proxy.process.pid())
            .chain(std::iter::once(self.ingress.process.pid()))
            .collect()
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_agent(pod: &Pod, placement: &SidecarPlacement, control: &Path) -> Result<Agent> {
    let (first, rest) = pod.args.split_first().ok_or_else(|| {
        anyhow!(
            "pod {}: the container has no args; expected `agent ...`",
            pod.name
        )
    })?;
    if first != "agent" {
        bail!(
            "pod {}: the container runs `{first}`; the local target runs only the meshtest agent (args: [agent, ...])",
            pod.name
        );
    }
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: AgentArgs,
    }
    let mut args =
        Wrapper::try_parse_from(std::iter::once("agent".to_string()).chain(rest.iter().cloned()))
            .map_err(|e| anyhow!("pod {}: bad agent args: {e}", pod.name))?
            .args;
    // Locally the agent sits behind its sidecar's Unix sockets instead of the pod's ports.
    args.listen = crate::agent::Listen::Unix(placement.app.clone());
    args.control = crate::agent::Listen::Unix(control.to_path_buf());
    args.outbound = Some(placement.outbound.clone());
    args.service = pod.service.clone();
    args.version = pod.version.clone();
    args.pod = pod.name.clone();
    args.namespace = pod.namespace.clone();
    Agent::start(args.into_config()).await
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

#[allow(clippy::too_many_arguments)]
async fn spawn_proxy(
    thread: &MeshThread,
    envoy: &Path,
    name: &str,
    node: &str,
    cluster: &str,
    admin: SocketAddr,
    dir: &Path,
    config: EnvoyConfig,
) -> Result<Proxy> {
    write_xds(dir, &config, 1)?;
    let boot = dir.join("bootstrap.json");
    std::fs::write(
        &boot,
        serde_json::to_vec_pretty(&bootstrap(node, cluster, admin, dir))?,
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
        process,
        written: Mutex::new(config),
    })
}

fn tail_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
