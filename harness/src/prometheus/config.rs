//! Prometheus' configuration for a mesh: one scrape job over every proxy's metrics listener,
//! the compatibility layer that makes the embedded mesh's series Istio's, and the rule files
//! of the mesh's PrometheusRules.
//!
//! The compatibility layer is `metric_relabel_configs`, applied as each sample is scraped, so
//! the PrometheusRule's expressions run unchanged on `istio_requests_total` and
//! `istio_request_duration_milliseconds_*` with Istio's labels (see crate::translate::telemetry
//! for what each proxy tags). What differs from Istio: reporter="source" series also carry
//! `upstream_cluster` and `upstream_host` (Istio aggregates them away in the proxy; a relabel
//! cannot sum); on reporter="destination" the source
//! workload is known only from the caller's principal (its service account; `unknown` when
//! several workloads share it), and there are no TCP, request/response size or gRPC metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::manifest::Resource;
use crate::manifest::observability::PrometheusRuleSpec;
use crate::model::{INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT, MeshModel, spiffe_id};
use crate::translate::bootstrap::STATS_PORT;

/// Scrape and rule evaluation interval: short, so a step sees a change within seconds.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One proxy to scrape.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    /// The proxy's pod address (its metrics listener is at [`STATS_PORT`]).
    pub ip: std::net::IpAddr,
    pub pod: String,
    pub namespace: String,
}

/// The proxies of a mesh, with the address each pod has.
pub fn targets(
    model: &MeshModel,
    ip_of: &dyn Fn(&crate::model::Pod) -> std::net::IpAddr,
    ingress: std::net::IpAddr,
) -> Vec<ScrapeTarget> {
    let mut t: Vec<ScrapeTarget> = model
        .pods
        .iter()
        .map(|p| ScrapeTarget {
            ip: ip_of(p),
            pod: p.name.clone(),
            namespace: p.namespace.clone(),
        })
        .collect();
    t.push(ScrapeTarget {
        ip: ingress,
        pod: "istio-ingressgateway".into(),
        namespace: INGRESS_NAMESPACE.into(),
    });
    t
}

fn relabel(sources: &[&str], regex: &str, target: &str, replacement: &str) -> Value {
    json!({
        "source_labels": sources,
        "separator": ";",
        "regex": regex,
        "target_label": target,
        "replacement": replacement,
        "action": "replace",
    })
}

/// Escapes a literal for a relabel regex (RE2).
fn literal(s: &str) -> String {
    regex_syntax_escape(s)
}

fn regex_syntax_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The compatibility layer: Envoy's stats-logger series renamed and relabelled as Istio's.
pub fn compat_relabels(
    model: &MeshModel,
    ip_of: &dyn Fn(&crate::model::Pod) -> std::net::IpAddr,
) -> Vec<Value> {
    let mut r = vec![relabel(
        &["__name__"],
        "envoy_istio_(.*)",
        "__name__",
        "istio_$1",
    )];
    // reporter="source": the destination service from the upstream cluster
    // (outbound|PORT|SUBSET|NAME.NAMESPACE.svc.DOMAIN); `unknown` for a local reply (or an
    // upstream this mesh does not know).
    let cluster = r"outbound\|\d+\|[^|]*\|(([^.]+)\.([^.]+)\..*)";
    for (target, group) in [
        ("destination_service", "$1"),
        ("destination_service_name", "$2"),
        ("destination_service_namespace", "$3"),
    ] {
        r.push(relabel(&["reporter"], "source", target, "unknown"));
        r.push(relabel(&["upstream_cluster"], cluster, target, group));
    }
    // reporter="source": the destination workload from the upstream host's address.
    for k in [
        "workload",
        "workload_namespace",
        "app",
        "version",
        "principal",
    ] {
        r.push(relabel(
            &["reporter"],
            "source",
            &format!("destination_{k}"),
            "unknown",
        ));
    }
    for pod in &model.pods {
        let host = format!("{}:\\d+", literal(&ip_of(pod).to_string()));
        let app = pod
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| pod.service.clone());
        for (k, v) in [
            ("workload", pod.workload_name().to_string()),
            ("workload_namespace", pod.namespace.clone()),
            ("app", app),
            ("version", pod.version.clone()),
            ("principal", pod.spiffe_id()),
        ] {
            r.push(relabel(
                &["upstream_host"],
                &host,
                &format!("destination_{k}"),
                &v,
            ));
        }
    }
    // reporter="destination": mTLS or not from the caller's certificate, and the caller's
    // workload from its principal when one workload has it.
    r.push(relabel(
        &["reporter"],
        "source",
        "connection_security_policy",
        "unknown",
    ));
    r.push(relabel(
        &["reporter", "source_principal"],
        "destination;.+",
        "connection_security_policy",
        "mutual_tls",
    ));
    r.push(relabel(
        &["reporter", "source_principal"],
        "destination;",
        "connection_security_policy",
        "none",
    ));
    for k in ["workload", "workload_namespace", "app", "version"] {
        r.push(relabel(
            &["reporter"],
            "destination",
            &format!("source_{k}"),
            "unknown",
        ));
    }
    let mut by_principal: BTreeMap<String, Vec<&crate::model::Pod>> = BTreeMap::new();
    for pod in &model.pods {
        by_principal.entry(pod.spiffe_id()).or_default().push(pod);
    }
    let ingress = spiffe_id(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT);
    let mut known: Vec<(String, [(String, String); 4])> = vec![(
        ingress,
        [
            ("workload".into(), "istio-ingressgateway".into()),
            ("workload_namespace".into(), INGRESS_NAMESPACE.into()),
            ("app".into(), "istio-ingressgateway".into()),
            ("version".into(), "unknown".into()),
        ],
    )];
    for (principal, pods) in by_principal {
        let mut workloads: Vec<&str> = pods.iter().map(|p| p.workload_name()).collect();
        workloads.dedup();
        if workloads.len() != 1 {
            continue;
        }
        let p = pods[0];
        known.push((
            principal,
            [
                ("workload".into(), p.workload_name().into()),
                ("workload_namespace".into(), p.namespace.clone()),
                (
                    "app".into(),
                    p.labels
                        .get("app")
                        .cloned()
                        .unwrap_or_else(|| p.service.clone()),
                ),
                ("version".into(), p.version.clone()),
            ],
        ));
    }
    for (principal, labels) in known {
        for (k, v) in labels {
            r.push(relabel(
                &["reporter", "source_principal"],
                &format!("destination;{}", literal(&principal)),
                &format!("source_{k}"),
                &v,
            ));
        }
    }
    // `upstream_cluster` and `upstream_host` stay: dropping them would make two of a proxy's
    // series (two replicas, or two subsets, of one workload) the same series, and Prometheus
    // keeps only one of them. Aggregations by Istio's labels are unaffected.
    r
}

/// prometheus.yml (JSON is YAML): the scrape job and the rule files.
pub fn prometheus_yml(
    targets: &[ScrapeTarget],
    relabels: Vec<Value>,
    rule_files: &[PathBuf],
) -> Value {
    let interval = format!("{}s", INTERVAL.as_secs());
    let static_configs: Vec<Value> = targets
        .iter()
        .map(|t| {
            json!({
                "targets": [SocketAddr::new(t.ip, STATS_PORT).to_string()],
                "labels": {"pod": t.pod, "namespace": t.namespace},
            })
        })
        .collect();
    json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": rule_files,
        "scrape_configs": [{
            "job_name": "envoy-stats",
            "metrics_path": "/stats/prometheus",
            "static_configs": static_configs,
            "metric_relabel_configs": relabels,
        }],
    })
}

/// Writes each PrometheusRule's groups as a rule file in `dir`; returns the files.
pub fn write_rule_files(
    rules: &[Resource<PrometheusRuleSpec>],
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let file = dir.join(format!("rules-{i}-{}.yml", r.name()));
        let text = serde_json::to_vec_pretty(&json!({"groups": r.spec.groups}))
            .map_err(std::io::Error::other)?;
        std::fs::write(&file, text)?;
        files.push(file);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_regexes_escape_addresses_and_principals() {
        assert_eq!(literal("127.0.0.1"), r"127\.0\.0\.1");
        assert_eq!(literal("spiffe://a.b/ns/x"), r"spiffe://a\.b/ns/x");
    }
}
