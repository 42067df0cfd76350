//! The `Sidecar` resource: which services a workload's proxy can reach (its egress hosts) and
//! what it does with a call to anything else (`outboundTrafficPolicy`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Spelled `labels`, like EnvoyFilter's.
    #[serde(default)]
    pub workload_selector: Option<super::EnvoyFilterSelector>,
    #[serde(default)]
    pub egress: Vec<SidecarEgress>,
    /// Custom inbound listeners (bind addresses, default endpoints, TLS): refused.
    #[serde(default)]
    pub ingress: Vec<serde_json::Value>,
    #[serde(default)]
    pub inbound_connection_pool: Option<serde_json::Value>,
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarEgress {
    /// `namespace/dnsName`: namespace `*`, `.` (the Sidecar's own, or the workload's for the
    /// root namespace's default) or `~` (none); dnsName `*`, `*.suffix` or a FQDN.
    pub hosts: Vec<String>,
    #[serde(default)]
    pub port: Option<SidecarPort>,
    /// An IP or Unix socket for the listener: the embedded mesh has no capture to bind.
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub capture_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    pub number: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// Istio's `outboundTrafficPolicy`, on a Sidecar or in meshConfig.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: Option<OutboundMode>,
    /// Send unknown traffic to an egress gateway: not translated.
    #[serde(default)]
    pub egress_proxy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Istio's default: a call to a host outside the registry (or the Sidecar's egress) leaves
    /// the proxy as it came, in plaintext (the PassthroughCluster).
    #[default]
    AllowAny,
    /// Only the registry's (and the Sidecar's egress) hosts: anything else is a 502.
    RegistryOnly,
}

/// Labels to select by, from a `workloadSelector` (none selects the whole namespace).
pub fn selector_labels(spec: &SidecarSpec) -> Option<&BTreeMap<String, String>> {
    spec.workload_selector.as_ref().map(|s| &s.labels)
}
