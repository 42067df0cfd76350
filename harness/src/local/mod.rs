//! The local target's embedded mesh: one real Envoy sidecar per pod on its own loopback
//! address, an ingress gateway Envoy, a mesh CA, a test JWT issuer, and the agent behind each
//! sidecar, all configured from the manifests through `translate` and updated live by
//! filesystem xDS.

pub mod admin;
mod agent_config;
pub mod control;
mod fault_proxy;
mod faults;
pub mod jwks;
pub mod layout;
pub mod owner;
pub mod process;
mod proxy;
pub mod runtime;
pub mod state;
pub(crate) mod xds;
use agent_config::agent_config;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::agent::Agent;
use crate::manifest::Manifests;
use crate::model::{INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT, MeshModel, Pod, spiffe_id};
use crate::pki::{self, MeshCa};
use crate::token::Issuer;
use crate::translate::CertFiles;
use crate::translate::bootstrap::STATS_PORT;
use crate::translate::gateway::GatewayPlacement;
use crate::translate::proxy::{self as envoy_config, SidecarPlacement};

use layout::{Block, RunDir};
use owner::Owner;
pub use proxy::Death;
use proxy::{Proxy, ProxyId};
use runtime::MeshThread;
pub use state::{IngressState, PodState, Recorded, State};

/// The service account of the certificates a chaos "other identity" fault swaps in.
pub const IMPOSTOR_SERVICE_ACCOUNT: &str = "meshtest-impostor";

/// How long a proxy may take to load its config before start-up fails.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a live config change may take to reach every proxy.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub mesh_dir: PathBuf,
    /// The Envoy binary; None finds or installs the pinned one.
    pub envoy: Option<PathBuf>,
    /// Run Prometheus beside the mesh, scraping every proxy and evaluating the mesh's
    /// PrometheusRules.
    pub observe: bool,
}

/// A pod: its sidecar and the agent behind it (gone while a chaos fault has killed the pod).
pub struct LocalPod {
    pub pod: Pod,
    pub ip: IpAddr,
    pub control: PathBuf,
    placement: SidecarPlacement,
    proxy: Proxy,
    agent: Mutex<Option<Agent>>,
    agent_config: crate::agent::AgentConfig,
}

impl LocalPod {
    /// The sidecar's admin socket.
    pub fn admin(&self) -> &Path {
        &self.proxy.admin
    }

    /// The sidecar's Envoy process.
    pub fn proxy_pid(&self) -> u32 {
        self.proxy.pid()
    }
}

/// A running embedded mesh. Dropping it kills every Envoy and agent it started.
pub struct LocalMesh {
    /// Prometheus beside the mesh (`observe`).
    prometheus: Option<crate::prometheus::Prometheus>,
    /// The span collector, when the mesh's Telemetry turns tracing on.
    collector: Option<crate::zipkin::Collector>,
    /// The manifests last applied (chaos faults are overlaid on them, never written into them).
    declared: Mutex<Manifests>,
    /// The model of what the proxies run now (declared + faults).
    model: Mutex<MeshModel>,
    board: Mutex<faults::Board>,
    pub pods: Vec<LocalPod>,
    ingress: Proxy,
    ingress_certs: CertFiles,
    gateway_ports: GatewayPorts,
    ca_file: PathBuf,
    issuer_key: PathBuf,
    version: Mutex<u64>,
    /// One push at a time: two interleaved pushes could leave a proxy the older config.
    pushing: tokio::sync::Mutex<()>,
    deaths: Arc<Mutex<Vec<Death>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    owner: Owner,
    /// Runs the agents and owns the Envoys' parent thread; dropped after them.
    thread: MeshThread,
    // Dropped last: the processes above must be gone before their files and block are.
    run: RunDir,
    block: Block,
}

/// The ingress gateway's placement: Gateway ports on the block's ingress address.
#[derive(Clone)]
struct GatewayPorts {
    ip: Ipv4Addr,
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

impl LocalMesh {
    /// Loads the manifests, mints identities and the test issuer, starts every proxy and
    /// agent, resolves jwksUris as istiod would, and returns once every proxy reports LIVE with
    /// the resolved config.
    pub async fn start(opts: &LocalOptions) -> Result<LocalMesh> {
        let manifests = Manifests::load_dir(&opts.mesh_dir)?;
        let model = MeshModel::build(manifests)?;
        envoy_config::check(&model)?;
        for w in crate::translate::virtual_service::dangling_references(&model)
            .into_iter()
            .chain(crate::translate::sidecar_scope::unmatched_hosts(&model))
        {
            eprintln!("meshtest: warning: {w}");
        }
        let envoy = match &opts.envoy {
            Some(p) => p.clone(),
            None => crate::envoy::ensure()?,
        };
        let prometheus_binaries = if opts.observe {
            let binaries = crate::prometheus::install::ensure()?;
            if let Some(promtool) = &binaries.promtool {
                crate::prometheus::server::check_rules(
                    promtool,
                    &model.manifests.prometheus_rules,
                )?;
            }
            Some(binaries)
        } else {
            None
        };
        let thread = MeshThread::start()?;
        let block = Block::claim()?;
        let run = RunDir::create(&block)?;
        xds::serve(&thread, &run.path).await?;
        let collector_addr = crate::translate::telemetry::traces(&model.manifests)
            .then(|| SocketAddr::new(IpAddr::V4(block.ingress_ip()), crate::zipkin::ZIPKIN_PORT));
        let collector = match collector_addr {
            Some(at) => Some(crate::zipkin::Collector::start(&thread, at).await?),
            None => None,
        };
        let certs_dir = run.path.join("certs");
        let ca = MeshCa::generate("meshtest mesh root")?;
        let issuer = Issuer::generate()?;
        let issuer_key = run.path.join("issuer.key");
        issuer.save(&issuer_key)?;

        let ingress_leaf =
            ca.issue_workload(&spiffe_id(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT))?;
        let ingress_certs =
            pki::write_leaf(&certs_dir, "istio-ingressgateway", &ingress_leaf, &ca)?;
        let ca_file = ingress_certs.ca.clone();
        let gateway_ports = GatewayPorts {
            ip: block.ingress_ip(),
            credentials: certs_dir.join("credentials"),
        };
        issue_gateway_credentials(&model, &ca, &gateway_ports)?;

        // Agents first, so sidecars find their apps listening.
        let mut prepared = Vec::new();
        for (i, pod) in model.pods.iter().enumerate() {
            let dir = run.path.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            let leaf = ca.issue_workload(&pod.spiffe_id())?;
            let certs = pki::write_leaf(&certs_dir, &pod.name, &leaf, &ca)?;
            // Chaos certificate faults swap these in: signed by the mesh CA, but expired or
            // for another identity. Issued now, so the CA key never outlives start-up.
            let expired = ca.issue_expired_workload(&pod.spiffe_id())?;
            pki::write_leaf(&certs_dir, &format!("{}.expired", pod.name), &expired, &ca)?;
            let impostor =
                ca.issue_workload(&spiffe_id(&pod.namespace, IMPOSTOR_SERVICE_ACCOUNT))?;
            pki::write_leaf(
                &certs_dir,
                &format!("{}.impostor", pod.name),
                &impostor,
                &ca,
            )?;
            let placement = SidecarPlacement {
                ip: IpAddr::V4(block.pod_ip(&model, pod)),
                outbound: dir.join("o.sock"),
                app_dir: dir.clone(),
                certs,
            };
            let control = dir.join("c.sock");
            let config = agent_config(&model, pod, &placement, &control, issuer.jwks())?;
            let agent = thread.run(Agent::start(config.clone())).await??;
            prepared.push((pod.clone(), dir, placement, control, agent, config));
        }

        let endpoints = |p: &Pod| IpAddr::V4(block.pod_ip(&model, p));
        let mut pods = Vec::new();
        for (pod, dir, placement, control, agent, agent_config) in prepared {
            let config = envoy_config::sidecar(&model, &pod, &placement, &endpoints)?;
            let node = format!(
                "sidecar~{}~{}.{}~{}.svc.cluster.local",
                placement.ip, pod.name, pod.namespace, pod.namespace
            );
            let cluster = format!("{}.{}", pod.service, pod.namespace);
            let id = ProxyId {
                name: &pod.name,
                node: &node,
                cluster: &cluster,
                dir: &dir,
                stats: SocketAddr::new(placement.ip, STATS_PORT),
                collector: collector_addr,
            };
            let proxy = Proxy::spawn(&thread, &envoy, &id, config).await?;
            pods.push(LocalPod {
                ip: placement.ip,
                control,
                placement,
                proxy,
                pod,
                agent: Mutex::new(Some(agent)),
                agent_config,
            });
        }
        let ingress_dir = run.path.join("ingress");
        std::fs::create_dir_all(&ingress_dir)?;
        let ingress_config =
            envoy_config::ingress_gateway(&model, &ingress_certs, &gateway_ports, &endpoints)?;
        let node = format!(
            "router~{}~istio-ingressgateway.{INGRESS_NAMESPACE}~{INGRESS_NAMESPACE}.svc.cluster.local",
            block.ingress_ip()
        );
        let id = ProxyId {
            name: "istio-ingressgateway",
            node: &node,
            cluster: "istio-ingressgateway.istio-system",
            dir: &ingress_dir,
            stats: SocketAddr::new(IpAddr::V4(block.ingress_ip()), STATS_PORT),
            collector: collector_addr,
        };
        let ingress = Proxy::spawn(&thread, &envoy, &id, ingress_config).await?;
        let watched = pods
            .iter()
            .map(|p| p.proxy.watched())
            .chain(std::iter::once(ingress.watched()))
            .collect();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deaths = proxy::watch(&thread, watched, stopping.clone());
        let prometheus = match &prometheus_binaries {
            Some(binaries) => {
                let pod_ip = |p: &Pod| IpAddr::V4(block.pod_ip(&model, p));
                let ingress_ip = IpAddr::V4(block.ingress_ip());
                let targets = crate::prometheus::config::targets(&model, &pod_ip, ingress_ip);
                let relabels = crate::prometheus::config::compat_relabels(&model, &pod_ip);
                let scrape = crate::prometheus::config::prometheus_yml(&targets, relabels, &[]);
                Some(
                    crate::prometheus::Prometheus::start(
                        &thread,
                        binaries,
                        &run.path.join("prometheus"),
                        SocketAddr::new(ingress_ip, crate::prometheus::server::PROMETHEUS_PORT),
                        scrape,
                        &model.manifests.prometheus_rules,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mesh = LocalMesh {
            prometheus,
            collector,
            declared: Mutex::new(model.manifests.clone()),
            model: Mutex::new(model),
            board: Mutex::new(faults::Board::default()),
            pods,
            ingress,
            ingress_certs,
            gateway_ports,
            ca_file,
            issuer_key,
            version: Mutex::new(1),
            pushing: tokio::sync::Mutex::new(()),
            deaths,
            stopping,
            owner: Owner::current(),
            thread,
            run,
            block,
        };
        mesh.wait_ready().await?;
        // istiod pushes config first and fetches key sets in the background; so do we.
        let manifests = mesh.model().manifests;
        mesh.apply(manifests).await?;
        Ok(mesh)
    }

    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let proxies = self
            .pods
            .iter()
            .map(|p| &p.proxy)
            .chain(std::iter::once(&self.ingress));
        for proxy in proxies {
            loop {
                if let Some(status) = proxy.exited() {
                    bail!(
                        "Envoy for {} exited during start-up ({status}); its log:\n{}",
                        proxy.name,
                        proxy.log_tail()
                    );
                }
                // LIVE with its first config accepted (a rejected one leaves Envoy LIVE with
                // no listeners, which would look ready and refuse every call).
                if admin::is_live(&proxy.admin).await
                    && admin::xds_versions(&proxy.admin)
                        .await
                        .is_ok_and(|(lds, cds)| {
                            lds.is_some_and(|v| !v.is_empty()) && cds.is_some_and(|v| !v.is_empty())
                        })
                {
                    break;
                }
                if started.elapsed() > READY_DEADLINE {
                    bail!(
                        "Envoy for {} was not LIVE with its config accepted within {READY_DEADLINE:?}; its log:\n{}",
                        proxy.name,
                        proxy.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Makes `manifests` what the mesh declares and pushes it (with any chaos faults still
    /// overlaid) to every proxy it changes, without a restart. Workloads must be the same as at
    /// start (pods are processes; adding one needs a restart).
    pub async fn apply(&self, manifests: Manifests) -> Result<()> {
        let model = MeshModel::build(manifests.clone())?;
        {
            let current = self.model.lock().expect("model lock");
            if model.pods != current.pods || model.services != current.services {
                bail!("workloads (Deployments/Services) changed: restart the mesh to apply them");
            }
        }
        *self.declared.lock().expect("declared lock") = manifests;
        self.push().await
    }

    /// Translates what the mesh declares, with the active faults overlaid (fetching any
    /// jwksUri not fetched before), and hands every changed proxy its new config.
    async fn push(&self) -> Result<()> {
        let _one_at_a_time = self.pushing.lock().await;
        let declared = self.declared.lock().expect("declared lock").clone();
        let (manifests, overlay) = self.overlay(&declared);
        let mut model = MeshModel::build(manifests)?;
        {
            let current = self.model.lock().expect("model lock");
            let uris = model.jwks_uris();
            model.jwks = current.jwks.clone();
            model.jwks.retain(|uri, _| uris.contains(uri));
        }
        let block = &self.block;
        let missing = model
            .jwks_uris()
            .into_iter()
            .any(|u| !model.jwks.contains_key(&u));
        if missing {
            let pod_ip = |p: &Pod| IpAddr::V4(block.pod_ip(&model, p));
            let (fetched, warnings) = jwks::resolve(&model, &pod_ip).await;
            for w in warnings {
                eprintln!("meshtest: warning: {w}");
            }
            model.jwks.extend(fetched);
        }
        let version = {
            let mut v = self.version.lock().expect("version lock");
            *v += 1;
            *v
        };
        // Each caller reaches each pod directly, or through a fault proxy spliced in between.
        let endpoints_for = |caller: &str| {
            let overlay = &overlay;
            let model = &model;
            let caller = caller.to_string();
            move |p: &Pod| {
                overlay
                    .endpoints
                    .get(&(caller.clone(), p.name.clone()))
                    .copied()
                    .unwrap_or(IpAddr::V4(block.pod_ip(model, p)))
            }
        };
        let mut changed = Vec::new();
        for lp in &self.pods {
            let mut placement = lp.placement.clone();
            if let Some(certs) = overlay.certs.get(&lp.pod.name) {
                placement.certs = certs.clone();
            }
            let endpoints = endpoints_for(&lp.pod.name);
            let config = envoy_config::sidecar(&model, &lp.pod, &placement, &endpoints)?;
            if config != *lp.proxy.written.lock().expect("written lock") {
                changed.push((&lp.proxy, config));
            }
        }
        let endpoints = endpoints_for("istio-ingressgateway");
        let ingress = envoy_config::ingress_gateway(
            &model,
            &self.ingress_certs,
            &self.gateway_ports,
            &endpoints,
        )?;
        if ingress != *self.ingress.written.lock().expect("written lock") {
            changed.push((&self.ingress, ingress));
        }
        // Proxies under a delayed-push fault get their config last, after the delay.
        let (late, on_time): (Vec<_>, Vec<_>) = changed
            .iter()
            .partition(|(proxy, _)| overlay.delayed.contains_key(&proxy.name));
        for (proxy, config) in &on_time {
            proxy.write_config(config, version)?;
        }
        if let Some(delay) = late.iter().map(|(p, _)| overlay.delayed[&p.name].0).max() {
            for (proxy, _) in &late {
                overlay.delayed[&proxy.name]
                    .1
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(delay).await;
            for (proxy, config) in &late {
                proxy.write_config(config, version)?;
            }
        }
        for proxy in self
            .all_proxies()
            .filter(|p| overlay.rejected.contains(&p.name))
        {
            proxy.write_rejected(version)?;
        }
        for (proxy, config) in &changed {
            if overlay.rejected.contains(&proxy.name)
                || proxy.exited().is_some()
                || faults::is_stopped(proxy.pid())
            {
                // Rejected on purpose, a killed pod (it boots with these files), or a paused
                // one (it reads them when it resumes): nothing to wait for now.
                continue;
            }
            wait_applied(proxy, version).await?;
            *proxy.written.lock().expect("written lock") = config.clone();
        }
        *self.model.lock().expect("model lock") = model;
        Ok(())
    }

    fn all_proxies(&self) -> impl Iterator<Item = &Proxy> {
        self.pods
            .iter()
            .map(|p| &p.proxy)
            .chain(std::iter::once(&self.ingress))
    }

    /// A pod's sidecar, or the ingress gateway.
    fn proxy(&self, name: &str) -> Option<&Proxy> {
        if name == "istio-ingressgateway" {
            return Some(&self.ingress);
        }
        self.pod(name).map(|p| &p.proxy)
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

    /// Proxies that exited while the mesh ran.
    pub fn deaths(&self) -> Vec<Death> {
        self.deaths.lock().expect("deaths lock").clone()
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
            owner: self.owner.clone(),
            mesh_dir: mesh_dir.to_path_buf(),
            run_dir: self.run.path.clone(),
            ca: self.ca_file.clone(),
            issuer_key: self.issuer_key.clone(),
            control: self.run.path.join(control::CONTROL_SOCKET),
            prometheus: self.prometheus.as_ref().map(|p| p.url.clone()),
            tracing: self.collector.as_ref().map(|c| c.url.clone()),
            ingress: IngressState {
                http: port_of("HTTP"),
                https: port_of("HTTPS"),
                host: crate::declared::routes::ingress_host(&model),
                admin: self.ingress.admin.clone(),
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
                    ip: p.ip.to_string(),
                    ports: p.pod.ports.clone(),
                    stand_in: p.pod.stand_in,
                    admin: p.proxy.admin.clone(),
                    control: p.control.clone(),
                })
                .collect(),
        }
    }

    /// Kills every proxy now (also done on drop).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for p in self.all_proxies() {
            p.kill();
        }
    }

    /// PIDs of the Envoy processes (for leak checks).
    pub fn envoy_pids(&self) -> Vec<u32> {
        self.pods
            .iter()
            .map(|p| p.proxy.pid())
            .chain(std::iter::once(self.ingress.pid()))
            .collect()
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a proxy reports `version` for both LDS and CDS.
async fn wait_applied(proxy: &Proxy, version: u64) -> Result<()> {
    let want = Some(version.to_string());
    let applied = admin::wait_until(APPLY_DEADLINE, || async {
        admin::xds_versions(&proxy.admin)
            .await
            .is_ok_and(|(lds, cds)| lds == want && cds == want)
    })
    .await;
    if applied {
        return Ok(());
    }
    bail!(
        "Envoy for {} did not take config version {version} within {APPLY_DEADLINE:?}; its log:\n{}",
        proxy.name,
        proxy.log_tail()
    )
}

/// A server certificate for each Gateway server's `credentialName` (the local stand-in for the
/// Kubernetes TLS secret).
fn issue_gateway_credentials(model: &MeshModel, ca: &MeshCa, ports: &GatewayPorts) -> Result<()> {
    let ingress_host = crate::declared::routes::ingress_host(model);
    for gw in &model.manifests.gateways {
        for server in &gw.spec.servers {
            if let Some(name) = server
                .tls
                .as_ref()
                .and_then(|t| t.credential_name.as_deref())
            {
                // The server's own hosts (the TLS name clients check), the host ingress calls
                // send, and localhost.
                let mut names: Vec<&str> = server
                    .hosts
                    .iter()
                    .map(|h| h.rsplit_once('/').map_or(h.as_str(), |(_, h)| h))
                    .filter(|h| *h != "*")
                    .collect();
                names.extend([ingress_host.as_str(), "localhost"]);
                names.dedup();
                let leaf = ca.issue_server(&names, &[IpAddr::V4(ports.ip)])?;
                pki::write_leaf(&ports.credentials, name, &leaf, ca)?;
            }
        }
    }
    Ok(())
}
