//! The local target: the embedded mesh, owned in-process or reached through `state.json`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;

use super::{Call, From, PodInfo, Target, Transport, split_port};
use crate::agent::Fault;
use crate::agent::control::{AgentStats, CallOrder};
use crate::client::{self, Dial, Request};
use crate::local::control::{ControlClient, InjectOrder};
use crate::local::{LocalMesh, PodState, State, admin};
use crate::manifest::Manifests;
use crate::outcome::Outcome;
use crate::target::injection::{ActiveInjection, Injection};
use crate::tls;
use crate::token::{Issuer, TokenSpec};

/// ALPN a sidecar offers on mesh mTLS (Istio's, so PERMISSIVE ports pick the mTLS chain).
const MESH_ALPN: [&str; 3] = ["istio-http/1.1", "istio", "http/1.1"];

pub struct LocalTarget {
    state: State,
    ca_pem: String,
    issuer: Issuer,
    /// Present when this process owns the mesh (tests, `meshtest run`); otherwise changes go
    /// to the owner through its control socket.
    mesh: Option<LocalMesh>,
    control: ControlClient,
    /// The model of the manifests the mesh was started from.
    model: crate::model::MeshModel,
}

impl LocalTarget {
    pub fn owning(mesh: LocalMesh, mesh_dir: &std::path::Path) -> Result<LocalTarget> {
        let state = mesh.state(mesh_dir);
        let model = mesh.model();
        LocalTarget::new(state, Some(mesh), model)
    }

    /// Attaches to a mesh another process runs (`meshtest up`).
    pub fn attach(state: State) -> Result<LocalTarget> {
        let model = crate::model::MeshModel::build(Manifests::load_dir(&state.mesh_dir)?)?;
        LocalTarget::new(state, None, model)
    }

    fn new(
        state: State,
        mesh: Option<LocalMesh>,
        model: crate::model::MeshModel,
    ) -> Result<LocalTarget> {
        let ca_pem = std::fs::read_to_string(&state.ca)
            .with_context(|| format!("reading the mesh CA {}", state.ca.display()))?;
        let issuer =
            Issuer::load(&state.issuer_key)?.named(crate::token::mesh_issuer(&model.manifests));
        let control = ControlClient {
            socket: state.control.clone(),
        };
        Ok(LocalTarget {
            state,
            ca_pem,
            issuer,
            mesh,
            control,
            model,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn mesh(&self) -> Option<&LocalMesh> {
        self.mesh.as_ref()
    }

    /// The pod of that name, or a service's first pod.
    fn pod(&self, name: &str) -> Result<&PodState> {
        self.state
            .pods
            .iter()
            .find(|p| p.name == name)
            .or_else(|| self.state.pods.iter().find(|p| p.service == name))
            .ok_or_else(|| {
                let mut services: Vec<&str> =
                    self.state.pods.iter().map(|p| p.service.as_str()).collect();
                services.dedup();
                anyhow!(
                    "no service or pod named `{name}` (services: {})",
                    services.join(", ")
                )
            })
    }

    /// A pod's address at `port` (its first port when `None`); the port must be one it serves.
    fn pod_address(&self, pod: &PodState, port: Option<u16>) -> Result<SocketAddr> {
        let port = match port {
            Some(p) if pod.ports.contains(&p) => p,
            Some(p) => bail!(
                "pod {} does not serve port {p} (its ports: {:?})",
                pod.name,
                pod.ports
            ),
            None => *pod.ports.first().context("a pod without ports")?,
        };
        format!("{}:{port}", pod.ip)
            .parse()
            .context("pod address in state")
    }

    fn admin(&self, proxy: &str) -> Result<PathBuf> {
        if proxy == "istio-ingressgateway" {
            return Ok(self.state.ingress.admin.clone());
        }
        Ok(self.pod(proxy)?.admin.clone())
    }

    /// A client identity from the mesh's own CA: the ingress gateway's certificate.
    fn mesh_identity(&self) -> Result<(String, String)> {
        let dir = self.state.run_dir.join("certs");
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .with_context(|| format!("reading {}", dir.join(f).display()))
        };
        Ok((
            read("istio-ingressgateway.crt")?,
            read("istio-ingressgateway.key")?,
        ))
    }

    async fn control_call(
        &self,
        pod: &str,
        method: &str,
        path: &str,
        body: String,
    ) -> Result<Outcome> {
        let mut req = Request::get("agent", path);
        req.method = method.into();
        req.body = body.into_bytes();
        req.headers
            .push(("content-type".into(), "application/json".into()));
        req.timeout = std::time::Duration::from_secs(620);
        let outcome = client::send(&Dial::Unix(self.pod(pod)?.control.clone()), &req).await;
        match outcome {
            Outcome::Response { status: 200, .. } => Ok(outcome),
            other => bail!(
                "agent of {pod}: control {method} {path}: {}",
                other.summary()
            ),
        }
    }

    fn outside_dial(&self, transport: Transport, pod: &PodState, addr: SocketAddr) -> Result<Dial> {
        let tls = |identity: Option<(String, String)>, alpn: &[&str]| -> Result<Dial> {
            let id = identity.as_ref().map(|(cert, key)| tls::ClientIdentity {
                cert_pem: cert,
                key_pem: key,
            });
            Ok(Dial::Tls {
                addr,
                config: tls::client_config(&self.ca_pem, id, alpn)?,
                server_name: pod.service.clone(),
            })
        };
        match transport {
            Transport::Plaintext => Ok(Dial::Tcp(addr)),
            Transport::TlsNoCert => tls(None, &["http/1.1"]),
            Transport::TlsForeignCert => {
                let foreign = crate::pki::MeshCa::generate("impostor root")?;
                let leaf =
                    foreign.issue_workload(&crate::model::spiffe_id(&pod.namespace, &pod.sa))?;
                tls(Some((leaf.cert_pem, leaf.key_pem)), &["http/1.1"])
            }
            Transport::MeshIdentity => tls(Some(self.mesh_identity()?), &MESH_ALPN),
        }
    }
}

#[async_trait]
impl Target for LocalTarget {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn pods(&self) -> Vec<PodInfo> {
        self.state
            .pods
            .iter()
            .map(|p| PodInfo {
                name: p.name.clone(),
                service: p.service.clone(),
                version: p.version.clone(),
                service_account: p.sa.clone(),
                namespace: p.namespace.clone(),
                ip: p.ip.clone(),
                ports: p.ports.clone(),
            })
            .collect()
    }

    async fn call(&self, call: &Call) -> Result<Outcome> {
        let (name, port) = split_port(&call.to);
        let mut req = Request::get(name, &call.path);
        req.method = call.method.clone();
        req.headers = call.headers.clone();
        req.timeout = call.timeout;
        match &call.from {
            From::Workload(from) => {
                // Validate the caller and the callee before asking the agent.
                self.pod(from)?;
                // A Service by its name (it may select pods another Service places), else the
                // service of the pod named.
                let service = if self
                    .model
                    .manifests
                    .services
                    .iter()
                    .any(|s| s.name() == name)
                {
                    name.to_string()
                } else {
                    self.pod(name)?.service.clone()
                };
                let order = CallOrder {
                    to: match port {
                        Some(p) => format!("{service}:{p}"),
                        None => service,
                    },
                    path: call.path.clone(),
                    method: call.method.clone(),
                    headers: call.headers.clone(),
                    body: String::new(),
                    timeout_ms: call.timeout.as_millis() as u64,
                };
                let resp = self
                    .control_call(from, "POST", "/call", serde_json::to_string(&order)?)
                    .await?;
                serde_json::from_str(resp.body().unwrap_or_default())
                    .context("agent's call outcome")
            }
            From::Outside(transport) => {
                let pod = self.pod(name)?;
                // SERVICE:PORT names the service's port; the pod serves its target port.
                let port = match (port, self.model.service(name)) {
                    (Some(p), Some(service)) => Some(
                        service
                            .port(p)
                            .map(|sp| sp.target_port)
                            .with_context(|| format!("service {name} has no port {p}"))?,
                    ),
                    (port, _) => port,
                };
                let addr = self.pod_address(pod, port)?;
                req.host = format!("{}:{}", pod.service, addr.port());
                let dial = self.outside_dial(*transport, pod, addr)?;
                Ok(client::send(&dial, &req).await)
            }
            From::Ingress { https } => {
                let (addr, scheme) = if *https {
                    (&self.state.ingress.https, "https")
                } else {
                    (&self.state.ingress.http, "http")
                };
                let addr: SocketAddr = addr
                    .as_deref()
                    .ok_or_else(|| anyhow!("the mesh's Gateway serves no {scheme} port"))?
                    .parse()?;
                req.host = self.state.ingress.host.clone();
                let dial = if *https {
                    Dial::Tls {
                        addr,
                        config: tls::client_config(&self.ca_pem, None, &["http/1.1"])?,
                        server_name: self.state.ingress.host.clone(),
                    }
                } else {
                    Dial::Tcp(addr)
                };
                Ok(client::send(&dial, &req).await)
            }
        }
    }

    async fn set_fault(&self, pod: &str, fault: Fault) -> Result<()> {
        self.control_call(pod, "PUT", "/fault", serde_json::to_string(&fault)?)
            .await
            .map(|_| ())
    }

    async fn agent_stats(&self, pod: &str) -> Result<AgentStats> {
        let resp = self
            .control_call(pod, "GET", "/stats", String::new())
            .await?;
        serde_json::from_str(resp.body().unwrap_or_default())
            .with_context(|| format!("agent of {pod}: /stats"))
    }

    async fn mint_token(&self, spec: &TokenSpec) -> Result<String> {
        self.issuer.mint(spec)
    }

    async fn proxy_admin(&self, proxy: &str, method: &str, path: &str) -> Result<String> {
        match method {
            "GET" | "POST" => admin::request(&self.admin(proxy)?, method, path).await,
            other => bail!("admin method {other} is not supported"),
        }
    }

    fn prometheus_url(&self) -> Option<String> {
        self.state.prometheus.clone()
    }

    fn tracing_url(&self) -> Option<String> {
        self.state.tracing.clone()
    }

    async fn proxy_log(&self, proxy: &str) -> Result<String> {
        // The proxy's log sits beside its admin socket in its private directory.
        let admin = self.admin(proxy)?;
        let log = admin.with_file_name("envoy.log");
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))
    }

    fn ingress_url(&self, https: bool) -> Option<String> {
        let ingress = &self.state.ingress;
        if https {
            ingress.https.as_ref().map(|a| format!("https://{a}"))
        } else {
            ingress.http.as_ref().map(|a| format!("http://{a}"))
        }
    }

    fn manifests(&self) -> Manifests {
        self.model.manifests.clone()
    }

    async fn apply(&self, manifests: Manifests) -> Result<()> {
        match &self.mesh {
            Some(mesh) => mesh.apply(manifests).await,
            None => self.control.apply(&manifests).await,
        }
    }

    async fn inject(
        &self,
        id: &str,
        owner: &str,
        injection: &Injection,
        lease: std::time::Duration,
    ) -> Result<()> {
        if let Injection::Workload { pod, fault } = injection {
            // The agent keeps the lease: the fault ends even if this process dies.
            let fault = fault.clone().owned(&format!("{owner}/{id}"), lease);
            return self.set_fault(pod, fault).await;
        }
        match &self.mesh {
            Some(mesh) => mesh.inject(id, owner, injection, lease).await,
            None => {
                let order = InjectOrder {
                    id: id.into(),
                    owner: owner.into(),
                    injection: injection.clone(),
                    lease_ms: lease.as_millis() as u64,
                };
                self.control.inject(&order).await
            }
        }
    }

    async fn revert_injection(&self, id: &str, owner: &str, injection: &Injection) -> Result<bool> {
        if let Injection::Workload { pod, .. } = injection {
            let path = format!("/fault?owner={owner}/{id}");
            let o = self
                .control_call(pod, "DELETE", &path, String::new())
                .await?;
            let v: serde_json::Value =
                serde_json::from_str(o.body().unwrap_or_default()).context("the agent's answer")?;
            return Ok(v["cleared"].as_bool().unwrap_or(false));
        }
        match &self.mesh {
            Some(mesh) => mesh.revert(id).await,
            None => self.control.revert(id).await,
        }
    }

    async fn injections(&self) -> Result<Vec<ActiveInjection>> {
        let mut out = match &self.mesh {
            Some(mesh) => mesh.injections().await,
            None => self.control.injections().await?,
        };
        for pod in &self.state.pods {
            let Ok(o) = self
                .control_call(&pod.name, "GET", "/fault", String::new())
                .await
            else {
                continue; // a killed pod's agent: its fault died with it
            };
            let status: crate::agent::FaultStatus =
                serde_json::from_str(o.body().unwrap_or_default()).context("the agent's fault")?;
            if let Some((owner, id)) = status
                .fault
                .owner
                .as_deref()
                .and_then(|o| o.split_once('/'))
            {
                if !status.fault.is_active() {
                    continue;
                }
                out.push(ActiveInjection {
                    id: id.to_string(),
                    owner: owner.to_string(),
                    injection: Injection::Workload {
                        pod: pod.name.clone(),
                        fault: status.fault.clone(),
                    },
                    expires_in_ms: status.remaining_ms.unwrap_or(0),
                    observed: status.hits,
                });
            }
        }
        Ok(out)
    }

    async fn tick(&self) -> Result<()> {
        match &self.mesh {
            Some(mesh) => mesh.tick().await,
            None => Ok(()),
        }
    }
}
