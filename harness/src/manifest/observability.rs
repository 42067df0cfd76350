//! Observability resources: the Prometheus Operator's PrometheusRule, Istio's Telemetry, and
//! the part of an IstioOperator's mesh config that shapes telemetry (access log providers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::istio::WorkloadSelector;

// ---- monitoring.coreos.com ----

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    /// Evaluation interval ("15s"); the Prometheus global one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

/// A recording rule (`record`) or an alerting rule (`alert`), as Prometheus reads them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The line of the rule named `name` (`alert: NAME` or `record: NAME`) in the resource's file,
/// at or after the resource's first line; the resource's own line when the file does not show it.
pub fn rule_line(r: &super::Resource<PrometheusRuleSpec>, name: &str) -> u64 {
    let found = std::fs::read_to_string(&r.origin.file)
        .ok()
        .and_then(|text| {
            text.lines()
                .enumerate()
                .skip(r.origin.line.saturating_sub(1) as usize)
                .find(|(_, l)| {
                    let l = l.trim_start().trim_start_matches("- ");
                    (l.starts_with("alert:") || l.starts_with("record:"))
                        && l.split_once(':')
                            .is_some_and(|(_, v)| v.trim().trim_matches('"') == name)
                })
                .map(|(i, _)| i as u64 + 1)
        });
    found.unwrap_or(r.origin.line)
}

// ---- telemetry.istio.io ----

/// Istio's Telemetry: access logging and tracing are translated; metrics overrides are not yet
/// (they are refused as unknown fields rather than silently dropped).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
    #[serde(default)]
    pub tracing: Vec<Tracing>,
}

/// A tracing entry: which provider reports spans, and the share of requests sampled.
/// (`disableSpanReporting`, `customTags` and `match` are refused as unknown fields.)
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
}

// ---- install.istio.io ----

/// An IstioOperator: only `spec.meshConfig` changes what the proxies do; the installation
/// settings (profile, components, values, hub, tag, revision) do not and are not read.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioOperatorSpec {
    #[serde(default)]
    pub mesh_config: MeshConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(default)]
    pub default_providers: Option<DefaultProviders>,
    /// What a sidecar does with a call outside the registry (or its Sidecar's egress).
    #[serde(default)]
    pub outbound_traffic_policy: Option<super::istio::OutboundTrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultProviders {
    #[serde(default)]
    pub access_logging: Vec<String>,
    #[serde(default)]
    pub tracing: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub envoy_file_access_log: Option<FileAccessLog>,
    #[serde(default)]
    pub zipkin: Option<ZipkinProvider>,
}

/// A Zipkin collector (`service` a cluster hostname, as istiod resolves it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZipkinProvider {
    pub service: String,
    pub port: u16,
    #[serde(default)]
    pub max_tag_length: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLog {
    pub path: String,
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// `text` (a format string) or `labels` (JSON keys to Envoy command operators).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormat {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
