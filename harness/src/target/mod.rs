//! The one seam between "what to test" and "where the mesh runs": steps, load, chaos and
//! reports call a `Target`; only its implementations know whether the mesh is local or in kube.

pub mod injection;
pub mod kube;
pub mod local;

use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::agent::Fault;
use crate::agent::control::AgentStats;
use crate::manifest::Manifests;
use crate::outcome::Outcome;
use crate::token::TokenSpec;

/// Where a call starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// A client outside the mesh, connecting straight to a pod's address.
    Outside(Transport),
    /// A workload of the mesh (service or pod name), through its own sidecar.
    Workload(String),
    /// A client outside the mesh, through the ingress gateway.
    Ingress { https: bool },
}

/// How an outside client speaks to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    /// TLS, presenting no client certificate.
    TlsNoCert,
    /// TLS, presenting a certificate from a CA the mesh does not trust (with the pod's own
    /// SPIFFE identity, so only the CA is wrong).
    TlsForeignCert,
    /// Mutual TLS with a certificate the mesh's CA issued (the ingress gateway's identity):
    /// how a step proves that the proxy which refused something is alive and speaking mTLS.
    MeshIdentity,
}

/// What an ingress call names as its target: the gateway routes it by path and Host, so the
/// name only labels the call.
pub const INGRESS: &str = "istio-ingressgateway";

/// A call to make: from somewhere, to a service (or a specific pod), at a path.
#[derive(Debug, Clone)]
pub struct Call {
    pub from: From,
    /// SERVICE or POD, optionally `:PORT` (else the service's first port); ignored for ingress
    /// calls, which the gateway routes.
    pub to: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Call {
    pub fn new(from: From, to: &str, path: &str) -> Call {
        Call {
            from,
            to: to.into(),
            path: path.into(),
            method: "GET".into(),
            headers: vec![],
            timeout: Duration::from_secs(10),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A pod as a target lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub service: String,
    pub version: String,
    pub service_account: String,
    pub namespace: String,
    pub ip: String,
    /// The pod's ports (its service's target ports), first one first.
    pub ports: Vec<u16>,
}

impl PodInfo {
    /// IP:PORT of the pod's first port.
    pub fn address(&self) -> String {
        self.address_at(self.ports.first().copied().unwrap_or(0))
    }

    pub fn address_at(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }
}

/// "auth-service:8081" -> ("auth-service", Some(8081)); a name without a port -> (name, None).
pub fn split_port(to: &str) -> (&str, Option<u16>) {
    match to.rsplit_once(':') {
        Some((name, port)) => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (to, None),
        },
        None => (to, None),
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// "local" or "kube".
    fn kind(&self) -> &'static str;

    fn pods(&self) -> Vec<PodInfo>;

    fn services(&self) -> Vec<String> {
        let mut s: Vec<String> = self.pods().into_iter().map(|p| p.service).collect();
        s.dedup();
        s
    }

    /// Makes a call; `Err` only when the harness cannot make it (unknown service, agent down),
    /// never for what the mesh did to it (that is the `Outcome`).
    async fn call(&self, call: &Call) -> Result<Outcome>;

    /// Sets a fault on a pod's agent (replacing any other); `Fault::default()` clears it.
    async fn set_fault(&self, pod: &str, fault: Fault) -> Result<()>;

    /// What a pod's agent has served (requests received, each proxy attempt counted).
    async fn agent_stats(&self, pod: &str) -> Result<AgentStats>;

    /// A JWT signed by the test issuer whose keys this mesh trusts (or, per `spec`, a broken one).
    async fn mint_token(&self, spec: &TokenSpec) -> Result<String>;

    /// Injects a chaos fault as `id` of `owner`; it ends by itself after `lease`, enforced by
    /// the target (not by the caller, who may die). Injecting an id again changes nothing.
    async fn inject(
        &self,
        id: &str,
        owner: &str,
        injection: &injection::Injection,
        lease: Duration,
    ) -> Result<()>;

    /// Reverts fault `id` (`injection` says where it lives); false when nothing of it was left
    /// (reverted already, or expired): reverting twice is harmless.
    async fn revert_injection(
        &self,
        id: &str,
        owner: &str,
        injection: &injection::Injection,
    ) -> Result<bool>;

    /// The chaos faults the target holds now, with how often traffic has met each.
    async fn injections(&self) -> Result<Vec<injection::ActiveInjection>>;

    /// Lets the target end expired faults and replace killed pods (a target whose faults live
    /// in another process does nothing).
    async fn tick(&self) -> Result<()> {
        Ok(())
    }

    /// Calls a proxy's Envoy admin API (`GET /stats`, `GET /clusters`, `POST /runtime_modify?k=v`):
    /// `proxy` is a pod name, or "istio-ingressgateway".
    async fn proxy_admin(&self, proxy: &str, method: &str, path: &str) -> Result<String>;

    /// The ingress gateway's base URL (http://HOST:PORT or https://...), for load generation.
    fn ingress_url(&self, https: bool) -> Option<String>;

    /// The Prometheus that scrapes this mesh (http://HOST:PORT), if there is one.
    fn prometheus_url(&self) -> Option<String> {
        None
    }

    /// The Zipkin-compatible API that holds this mesh's spans (http://HOST:PORT), if any.
    fn tracing_url(&self) -> Option<String> {
        None
    }

    /// A proxy's container log (Envoy's stdout and stderr, so its access log lines): `proxy`
    /// is a pod name, or "istio-ingressgateway".
    async fn proxy_log(&self, proxy: &str) -> Result<String>;

    /// The manifests the mesh was deployed from.
    fn manifests(&self) -> Manifests;

    /// Applies changed manifests live (same workloads); apply `manifests()` again to revert.
    async fn apply(&self, manifests: Manifests) -> Result<()>;
}

/// A counter or gauge from a proxy's stats, 0 when Envoy has not created it yet.
pub async fn stat(target: &dyn Target, proxy: &str, name: &str) -> Result<u64> {
    let filter = format!("^{}$", crate::regex_literal::escape(name));
    let body = stats_matching(target, proxy, &filter).await?;
    Ok(crate::envoy::stats::parse_stat(&body, name).unwrap_or(0))
}

/// A proxy's stats whose names match the regular expression `filter` (Envoy's text format).
pub async fn stats_matching(target: &dyn Target, proxy: &str, filter: &str) -> Result<String> {
    let encoded: String = filter
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    target
        .proxy_admin(proxy, "GET", &format!("/stats?filter={encoded}"))
        .await
}
