//! The local target: the embedded mesh, owned in-process or reached through `state.json`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;

use super::{Call, From, PodInfo, Target, Transport};
use crate::agent::Fault;
use crate::agent::control::CallOrder;
use crate::client::{self, Dial, Request};
use crate::local::{LocalMesh, State, admin};
use crate::manifest::Manifests;
use crate::outcome::Outcome;
use crate::tls;

pub struct LocalTarget {
    state: State,
    ca_pem: String,
    /// Present when this process owns the mesh (tests, `meshtest run`).
    mesh: Option<LocalMesh>,
    /// The manifests the mesh was started from.
    declared: Manifests,
}

impl LocalTarget {
    pub fn owning(mesh: LocalMesh, mesh_dir: &std::path::Path) -> Result<LocalTarget> {
        let state = mesh.state(mesh_dir);
        let ca_pem = std::fs::read_to_string(&state.ca).context("reading the mesh CA")?;
        let declared = mesh.model().manifests;
        Ok(LocalTarget {
            state,
            ca_pem,
            mesh: Some(mesh),
            declared,
        })
    }

    /// Attaches to a mesh another process runs (`meshtest up`).
    pub fn attach(state: State) -> Result<LocalTarget> {
        let ca_pem = std::fs::read_to_string(&state.ca)
            .with_context(|| format!("reading the mesh CA {}", state.ca.display()))?;
        let declared = Manifests::load_dir(&state.mesh_dir)?;
        Ok(LocalTarget {
            state,
            ca_pem,
            mesh: None,
            declared,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn mesh(&self) -> Option<&LocalMesh> {
        self.mesh.as_ref()
    }

    /// A service's first pod, or the pod of that name.
    fn pod(&self, name: &str) -> Result<&crate::local::PodState> {
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

    fn control(&self, pod: &str) -> Result<PathBuf> {
        let p = self.pod(pod)?;
        Ok(PathBuf::from(
            p.control.strip_prefix("unix:").unwrap_or(&p.control),
        ))
    }

    fn admin(&self, proxy: &str) -> Result<SocketAddr> {
        let addr = if proxy == "istio-ingressgateway" {
            &self.state.ingress.admin
        } else {
            &self.pod(proxy)?.admin
        };
        addr.parse().context("admin address in state")
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
        let outcome = client::send(&Dial::Unix(self.control(pod)?), &req).await;
        match outcome {
            Outcome::Response { status: 200, .. } => Ok(outcome),
            other => bail!(
                "agent of {pod}: control {method} {path}: {}",
                other.summary()
            ),
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
                address: p.address.clone(),
            })
            .collect()
    }

    async fn call(&self, call: &Call) -> Result<Outcome> {
        let mut req = Request::get(&call.to, &call.path);
        req.method = call.method.clone();
        req.headers = call.headers.clone();
        req.timeout = call.timeout;
        match &call.from {
            From::Workload(from) => {
                let order = CallOrder {
                    to: self.pod(&call.to)?.service.clone(),
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
                let pod = self.pod(&call.to)?;
                let addr: SocketAddr = pod.address.parse().context("pod address")?;
                req.host = format!("{}:{}", pod.service, addr.port());
                let dial = match transport {
                    Transport::Plaintext => Dial::Tcp(addr),
                    Transport::TlsNoCert => Dial::Tls {
                        addr,
                        config: tls::client_config(&self.ca_pem, None, &["http/1.1"])?,
                        server_name: pod.service.clone(),
                    },
                    Transport::TlsForeignCert => {
                        let foreign = crate::pki::MeshCa::generate("impostor root")?;
                        let leaf = foreign.issue_workload(&format!(
                            "spiffe://cluster.local/ns/pyairtable/sa/{}",
                            pod.sa
                        ))?;
                        let id = tls::ClientIdentity {
                            cert_pem: &leaf.cert_pem,
                            key_pem: &leaf.key_pem,
                        };
                        Dial::Tls {
                            addr,
                            config: tls::client_config(&self.ca_pem, Some(id), &["http/1.1"])?,
                            server_name: pod.service.clone(),
                        }
                    }
                };
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
                req.host = "pyairtable.local".into();
                let dial = if *https {
                    Dial::Tls {
                        addr,
                        config: tls::client_config(&self.ca_pem, None, &["http/1.1"])?,
                        server_name: "localhost".into(),
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

    async fn proxy_admin(&self, proxy: &str, method: &str, path: &str) -> Result<String> {
        match method {
            "GET" => admin::get(self.admin(proxy)?, path).await,
            "POST" => admin::post(self.admin(proxy)?, path).await,
            other => bail!("admin method {other} is not supported"),
        }
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
        self.declared.clone()
    }

    async fn apply(&self, manifests: Manifests) -> Result<()> {
        match &self.mesh {
            Some(mesh) => mesh.apply(manifests).await,
            None => {
                bail!("live changes need the mesh in this process (meshtest run starts its own)")
            }
        }
    }
}
