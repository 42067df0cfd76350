//! Istio's telemetry on the local Envoys: its standard request metrics, made by Envoy's stats
//! access logger, and the access logs Telemetry resources turn on.
//!
//! Upstream Envoy has no Istio stats filter. Each HTTP connection manager instead gets a stats
//! access logger that counts every finished request (local replies included: RBAC 403s, rate
//! limit 429s, overflow 503s) as `istio.requests_total` and times it into
//! `istio.request_duration_milliseconds`, tagged with what the proxy knows statically (its own
//! workload) and per request (response code and flags, the peer's principal, the upstream
//! cluster and host). Prometheus' scrape config (crate::prometheus::config) renames them to
//! `istio_*` and derives Istio's remaining labels from those tags.

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::Resource;
use crate::manifest::observability::{ExtensionProvider, LogFormat, TelemetrySpec};
use crate::translate::bootstrap::ZIPKIN_CLUSTER;

type Telemetry = Resource<TelemetrySpec>;
use crate::model::{
    INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT, MeshModel, Pod, Workload, spiffe_id,
};

/// Istio's built-in access log provider (`envoy`: text to the proxy's stdout).
pub const ENVOY_PROVIDER: &str = "envoy";

/// Istio's default text access log format (the `envoy` provider's).
const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Which side of a request a proxy reports (Istio's `reporter` label).
pub enum Reporter<'a> {
    /// A sidecar's inbound listener: the pod is the destination.
    Destination { pod: &'a Pod },
    /// A sidecar's outbound listener (`Some(pod)`, the source) or the ingress gateway (`None`).
    Source { pod: Option<&'a Pod> },
}

/// Who a proxy is, as Istio's labels name it.
struct Peer {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    principal: String,
}

impl Peer {
    fn of(pod: Option<&Pod>) -> Peer {
        match pod {
            Some(p) => Peer {
                workload: p.workload_name().to_string(),
                namespace: p.namespace.clone(),
                app: p
                    .labels
                    .get("app")
                    .cloned()
                    .unwrap_or_else(|| p.service.clone()),
                version: p.version.clone(),
                principal: p.spiffe_id(),
            },
            None => Peer {
                workload: "istio-ingressgateway".into(),
                namespace: INGRESS_NAMESPACE.into(),
                app: "istio-ingressgateway".into(),
                version: "unknown".into(),
                principal: spiffe_id(INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT),
            },
        }
    }

    fn tags(&self, side: &str) -> Vec<(String, String)> {
        [
            ("workload", &self.workload),
            ("workload_namespace", &self.namespace),
            ("app", &self.app),
            ("version", &self.version),
            ("principal", &self.principal),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{side}_{k}"), v.clone()))
        .collect()
    }
}

/// The tags of one request's metrics: the reporter's own side fixed, the other side from
/// the request (the scrape config turns `upstream_cluster`/`upstream_host` into destination
/// labels and the peer principal into `connection_security_policy`).
fn metric_tags(model: &MeshModel, reporter: &Reporter) -> Vec<(String, String)> {
    let mut tags = vec![
        ("response_code".to_string(), "%RESPONSE_CODE%".to_string()),
        ("response_flags".into(), "%RESPONSE_FLAGS%".into()),
        ("request_protocol".into(), "http".into()),
    ];
    match reporter {
        Reporter::Destination { pod } => {
            tags.push(("reporter".into(), "destination".into()));
            tags.extend(Peer::of(Some(pod)).tags("destination"));
            if let Some(svc) = model.service(&pod.service) {
                tags.push(("destination_service".into(), svc.fqdn()));
                tags.push(("destination_service_name".into(), svc.name.clone()));
                tags.push((
                    "destination_service_namespace".into(),
                    svc.namespace.clone(),
                ));
            }
            tags.push((
                "source_principal".into(),
                "%DOWNSTREAM_PEER_URI_SAN%".into(),
            ));
        }
        Reporter::Source { pod } => {
            tags.push(("reporter".into(), "source".into()));
            tags.extend(Peer::of(*pod).tags("source"));
            tags.push(("upstream_cluster".into(), "%UPSTREAM_CLUSTER%".into()));
            tags.push(("upstream_host".into(), "%UPSTREAM_HOST%".into()));
        }
    }
    tags
}

fn stats_logger(model: &MeshModel, reporter: &Reporter) -> Value {
    let tags: Vec<Value> = metric_tags(model, reporter)
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value_format": value}))
        .collect();
    json!({
        "name": "envoy.access_loggers.stats",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config",
            "stats_scope": {"prefix": "istio"},
            "counters": [{"stat": {"name": "requests_total", "tags": tags}, "value_fixed": 1}],
            "histograms": [{
                "stat": {"name": "request_duration_milliseconds", "tags": tags},
                "unit": "Milliseconds",
                "value_format": "%DURATION%",
            }],
        },
    })
}

/// The most specific Telemetry for `workload` that `declares` something (workload selector,
/// then its namespace, then the root namespace), as istiod picks one per feature.
fn most_specific<'a>(
    model: &'a MeshModel,
    workload: &Workload,
    declares: &dyn Fn(&TelemetrySpec) -> bool,
) -> Option<&'a Telemetry> {
    let m = &model.manifests;
    let applicable = |specific: bool| {
        m.telemetries.iter().filter(move |t| {
            let selected = t.spec.selector.as_ref().map(|s| &s.match_labels);
            workload.selected_by(t.namespace(), selected)
                && (t.spec.selector.is_some() == specific)
                && declares(&t.spec)
        })
    };
    applicable(true).next().or_else(|| {
        applicable(false)
            .find(|t| t.namespace() == workload.namespace)
            .or_else(|| applicable(false).next())
    })
}

/// The access log providers in force for `workload`: its most specific Telemetry that
/// declares access logging, else the mesh config's default providers.
fn access_log_providers(model: &MeshModel, workload: &Workload) -> Vec<String> {
    let Some(t) = most_specific(model, workload, &|s| !s.access_logging.is_empty()) else {
        return default_providers(model);
    };
    let mut names = Vec::new();
    for a in t
        .spec
        .access_logging
        .iter()
        .filter(|a| a.disabled != Some(true))
    {
        if a.providers.is_empty() {
            // An entry without providers turns on the mesh's default ones.
            names.extend(default_providers(model));
        } else {
            names.extend(a.providers.iter().map(|p| p.name.clone()));
        }
    }
    names
}

/// Istio's sampling when neither Telemetry nor the proxy config sets one: 1% of requests.
const DEFAULT_SAMPLING: f64 = 1.0;

fn default_tracing_providers(model: &MeshModel) -> Vec<String> {
    model
        .manifests
        .istio_operators
        .iter()
        .filter_map(|o| o.spec.mesh_config.default_providers.as_ref())
        .flat_map(|d| d.tracing.clone())
        .collect()
}

/// The HTTP connection manager's `tracing` for `workload`: the provider and the sampling its
/// most specific Telemetry (or the mesh's default tracing providers) choose; None when nothing
/// traces it. Envoy has one tracer per connection manager, so one provider is translated.
pub fn tracing(model: &MeshModel, workload: &Workload) -> Result<Option<Value>, InputError> {
    let chosen = most_specific(model, workload, &|s| !s.tracing.is_empty());
    let (names, sampling) = match chosen {
        Some(t) => {
            let entry = &t.spec.tracing[0];
            let names = if entry.providers.is_empty() {
                default_tracing_providers(model)
            } else {
                entry.providers.iter().map(|p| p.name.clone()).collect()
            };
            (names, entry.random_sampling_percentage)
        }
        None => (default_tracing_providers(model), None),
    };
    let refuse = |field: &str, message: String| match chosen {
        Some(t) => t.origin.error(field, message),
        None => InputError::new(&model.manifests.dir, message),
    };
    let Some(name) = names.first() else {
        return Ok(None);
    };
    if names.len() > 1 {
        return Err(refuse(
            "spec.tracing.providers",
            format!(
                "{} tracing providers for one workload: Envoy reports spans to one",
                names.len()
            ),
        ));
    }
    let sampling = sampling.unwrap_or(DEFAULT_SAMPLING);
    if !(0.0..=100.0).contains(&sampling) {
        return Err(refuse(
            "spec.tracing.randomSamplingPercentage",
            format!("{sampling} is not a percentage (0-100)"),
        ));
    }
    let Some((p, origin)) = provider(model, name) else {
        return Err(refuse(
            "spec.tracing.providers",
            format!(
                "tracing provider `{name}` is not declared in an IstioOperator's meshConfig.extensionProviders"
            ),
        ));
    };
    let Some(zipkin) = &p.zipkin else {
        return Err(origin.error(
            "spec.meshConfig.extensionProviders",
            format!("provider `{name}`: only zipkin tracing providers are translated"),
        ));
    };
    Ok(Some(json!({
        "random_sampling": {"value": sampling},
        "max_path_tag_length": zipkin.max_tag_length.unwrap_or(256),
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": ZIPKIN_CLUSTER,
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "collector_hostname": format!("{}:{}", zipkin.service, zipkin.port),
                "trace_id_128bit": true,
                "shared_span_context": false,
            },
        },
    })))
}

/// Whether any proxy of the mesh may report spans (the embedded mesh then runs a collector).
pub fn traces(manifests: &crate::manifest::Manifests) -> bool {
    let defaults = manifests
        .istio_operators
        .iter()
        .filter_map(|o| o.spec.mesh_config.default_providers.as_ref())
        .any(|d| !d.tracing.is_empty());
    defaults
        || manifests
            .telemetries
            .iter()
            .any(|t| !t.spec.tracing.is_empty())
}

/// What an HTTP connection manager reports: its access logs (metrics included) and spans.
pub struct ConnectionManagerTelemetry {
    pub access_log: Vec<Value>,
    pub tracing: Option<Value>,
}

/// The telemetry of `workload`'s connection managers reporting as `reporter`.
pub fn for_connection_manager(
    model: &MeshModel,
    workload: &Workload,
    reporter: &Reporter,
) -> Result<ConnectionManagerTelemetry, InputError> {
    Ok(ConnectionManagerTelemetry {
        access_log: access_logs(model, workload, reporter)?,
        tracing: tracing(model, workload)?,
    })
}

fn default_providers(model: &MeshModel) -> Vec<String> {
    model
        .manifests
        .istio_operators
        .iter()
        .filter_map(|o| o.spec.mesh_config.default_providers.as_ref())
        .flat_map(|d| d.access_logging.clone())
        .collect()
}

fn provider<'a>(
    model: &'a MeshModel,
    name: &str,
) -> Option<(&'a ExtensionProvider, &'a crate::manifest::Origin)> {
    model.manifests.istio_operators.iter().find_map(|o| {
        o.spec
            .mesh_config
            .extension_providers
            .iter()
            .find(|p| p.name == name)
            .map(|p| (p, &o.origin))
    })
}

/// One file access logger. The proxy's stdout (`/dev/stdout`, what a sidecar container's
/// log is) is the only path: the embedded mesh keeps each proxy's stdout in its log file.
fn file_logger(format: Option<&LogFormat>) -> Value {
    let log_format = match format {
        Some(f) if !f.labels.is_empty() => json!({"json_format": f.labels}),
        Some(LogFormat { text: Some(t), .. }) => {
            json!({"text_format_source": {"inline_string": format!("{}\n", t.trim_end_matches('\n'))}})
        }
        _ => json!({"text_format_source": {"inline_string": ISTIO_TEXT_FORMAT}}),
    };
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": log_format,
        },
    })
}

/// Every access logger of an HTTP connection manager of `workload` reporting as `reporter`:
/// the metrics logger always, then the access logs its Telemetry turns on.
pub fn access_logs(
    model: &MeshModel,
    workload: &Workload,
    reporter: &Reporter,
) -> Result<Vec<Value>, InputError> {
    let mut logs = vec![stats_logger(model, reporter)];
    for name in access_log_providers(model, workload) {
        if name == ENVOY_PROVIDER {
            logs.push(file_logger(None));
            continue;
        }
        let Some((p, origin)) = provider(model, &name) else {
            let at = model
                .manifests
                .telemetries
                .first()
                .map(|t| t.origin.clone());
            let message = format!(
                "access log provider `{name}` is not declared in an IstioOperator's meshConfig.extensionProviders (nor is it Istio's built-in `envoy`)"
            );
            return Err(match at {
                Some(o) => o.error("spec.accessLogging.providers", message),
                None => InputError::new(&model.manifests.dir, message),
            });
        };
        let Some(file) = &p.envoy_file_access_log else {
            return Err(origin.error(
                "spec.meshConfig.extensionProviders",
                format!("provider `{name}`: only envoyFileAccessLog providers are translated"),
            ));
        };
        if file.path != "/dev/stdout" {
            return Err(origin.error(
                "spec.meshConfig.extensionProviders.envoyFileAccessLog.path",
                format!("provider `{name}` logs to {}: the embedded mesh logs only to /dev/stdout (the sidecar's container log)", file.path),
            ));
        }
        logs.push(file_logger(file.log_format.as_ref()));
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::{model_of, pyairtable_model};

    const PROVIDER: &str = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: io, namespace: istio-system}\nspec:\n  profile: default\n  meshConfig:\n    extensionProviders:\n    - name: json\n      envoyFileAccessLog:\n        path: /dev/stdout\n        logFormat:\n          labels: {tenant: \"%REQ(X-TENANT-ID)%\", route: \"%ROUTE_NAME%\"}\n---\n";

    fn tags(logger: &Value) -> Vec<(String, String)> {
        logger["typed_config"]["counters"][0]["stat"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["value_format"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn every_connection_manager_counts_requests_as_istio_does() {
        let model = model_of("");
        let pod = &model.pods[0];
        let inbound =
            access_logs(&model, &Workload::of(pod), &Reporter::Destination { pod }).unwrap();
        assert_eq!(inbound.len(), 1, "no Telemetry: only the metrics logger");
        assert_eq!(inbound[0]["name"], "envoy.access_loggers.stats");
        let t = tags(&inbound[0]);
        let get = |k: &str| t.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("reporter"), Some("destination"));
        assert_eq!(get("destination_workload"), Some("svc"));
        assert_eq!(get("destination_service"), Some("svc.ns.svc.cluster.local"));
        assert_eq!(
            get("destination_principal"),
            Some("spiffe://cluster.local/ns/ns/sa/sa")
        );
        assert_eq!(get("source_principal"), Some("%DOWNSTREAM_PEER_URI_SAN%"));
        assert_eq!(get("response_code"), Some("%RESPONSE_CODE%"));

        let outbound = access_logs(
            &model,
            &Workload::of(pod),
            &Reporter::Source { pod: Some(pod) },
        )
        .unwrap();
        let t = tags(&outbound[0]);
        let get = |k: &str| t.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("reporter"), Some("source"));
        assert_eq!(get("source_workload"), Some("svc"));
        assert_eq!(get("upstream_cluster"), Some("%UPSTREAM_CLUSTER%"));
        let histogram = &outbound[0]["typed_config"]["histograms"][0];
        assert_eq!(histogram["stat"]["name"], "request_duration_milliseconds");
        assert_eq!(histogram["value_format"], "%DURATION%");
    }

    #[test]
    fn telemetry_turns_on_the_declared_json_access_log() {
        let model = model_of(&format!(
            "{PROVIDER}apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: istio-system}}\nspec:\n  accessLogging:\n  - providers: [{{name: json}}]\n"
        ));
        let pod = &model.pods[0];
        let logs = access_logs(&model, &Workload::of(pod), &Reporter::Destination { pod }).unwrap();
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[1]["name"], "envoy.access_loggers.stdout");
        assert_eq!(
            logs[1]["typed_config"]["log_format"]["json_format"],
            serde_json::json!({"tenant": "%REQ(X-TENANT-ID)%", "route": "%ROUTE_NAME%"})
        );
        // A workload-selecting Telemetry that disables logging wins over the mesh-wide one.
        let model = model_of(&format!(
            "{PROVIDER}apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: istio-system}}\nspec:\n  accessLogging:\n  - providers: [{{name: json}}]\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: off, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: svc}}}}\n  accessLogging:\n  - disabled: true\n"
        ));
        let pod = &model.pods[0];
        let logs = access_logs(&model, &Workload::of(pod), &Reporter::Destination { pod }).unwrap();
        assert_eq!(logs.len(), 1);
    }

    #[test]
    fn undeclared_providers_and_files_are_refused_with_their_line() {
        let model = model_of(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec:\n  accessLogging:\n  - providers: [{name: nowhere}]\n",
        );
        let pod = &model.pods[0];
        let e =
            access_logs(&model, &Workload::of(pod), &Reporter::Destination { pod }).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
        assert_eq!(e.field.as_deref(), Some("spec.accessLogging.providers"));

        let file = PROVIDER.replace("/dev/stdout", "/var/log/x.log");
        let model = model_of(&format!(
            "{file}apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: istio-system}}\nspec:\n  accessLogging:\n  - providers: [{{name: json}}]\n"
        ));
        let pod = &model.pods[0];
        let e =
            access_logs(&model, &Workload::of(pod), &Reporter::Destination { pod }).unwrap_err();
        assert!(e.to_string().contains("/var/log/x.log"), "{e}");
    }

    const ZIPKIN: &str = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: io, namespace: istio-system}\nspec:\n  meshConfig:\n    extensionProviders:\n    - name: jaeger\n      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n    - name: json\n      envoyFileAccessLog: {path: /dev/stdout}\n---\n";

    fn tracing_of(telemetry: &str) -> Result<Option<Value>, InputError> {
        let mut m = crate::manifest::Manifests::default();
        m.add_text(
            std::path::Path::new("t.yaml"),
            &format!("{ZIPKIN}apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: istio-system}}\nspec:\n{telemetry}"),
        )?;
        let base = model_of("");
        let mut manifests = base.manifests.clone();
        manifests.istio_operators = m.istio_operators;
        manifests.telemetries = m.telemetries;
        let model = MeshModel::build(manifests).unwrap();
        tracing(&model, &Workload::of(&model.pods[0]))
    }

    #[test]
    fn telemetry_tracing_becomes_envoys_zipkin_tracer_with_its_sampling() {
        let t = tracing_of(
            "  tracing:\n  - providers: [{name: jaeger}]\n    randomSamplingPercentage: 25\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t["random_sampling"]["value"], 25.0);
        let z = &t["provider"]["typed_config"];
        assert_eq!(z["collector_cluster"], ZIPKIN_CLUSTER);
        assert_eq!(z["collector_endpoint_version"], "HTTP_JSON");
        assert_eq!(
            z["collector_hostname"],
            "zipkin.istio-system.svc.cluster.local:9411"
        );
        assert_eq!(z["shared_span_context"], false);
        // Istio's default when no percentage is set: 1%.
        let t = tracing_of("  tracing:\n  - providers: [{name: jaeger}]\n")
            .unwrap()
            .unwrap();
        assert_eq!(t["random_sampling"]["value"], 1.0);
        assert_eq!(
            tracing_of("  accessLogging: [{providers: [{name: json}]}]\n").unwrap(),
            None
        );
    }

    #[test]
    fn tracing_to_an_unknown_or_non_zipkin_provider_or_past_100_percent_is_refused() {
        let e = tracing_of("  tracing:\n  - providers: [{name: nope}]\n").unwrap_err();
        assert!(e.message.contains("`nope` is not declared"), "{e}");
        let e = tracing_of("  tracing:\n  - providers: [{name: json}]\n").unwrap_err();
        assert!(e.message.contains("only zipkin"), "{e}");
        let e = tracing_of(
            "  tracing:\n  - providers: [{name: jaeger}]\n    randomSamplingPercentage: 150\n",
        )
        .unwrap_err();
        // The CRD's own bound (maximum 100) refuses it first, at the entry's path.
        assert_eq!(
            e.field.as_deref(),
            Some("spec.tracing[0].randomSamplingPercentage")
        );
        let e = tracing_of("  tracing:\n  - customTags: {a: {literal: {value: b}}}\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("customTags"));
    }

    #[test]
    fn the_pyairtable_mesh_logs_tenant_and_route_everywhere() {
        let model = pyairtable_model();
        for pod in &model.pods {
            let logs = access_logs(
                &model,
                &Workload::of(pod),
                &Reporter::Source { pod: Some(pod) },
            )
            .unwrap();
            let format = &logs[1]["typed_config"]["log_format"]["json_format"];
            assert_eq!(format["tenant"], "%REQ(X-TENANT-ID)%", "{}", pod.name);
            assert_eq!(format["route"], "%ROUTE_NAME%");
        }
    }
}
