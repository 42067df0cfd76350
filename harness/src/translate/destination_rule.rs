//! DestinationRule -> outbound clusters: one per service and per subset, carrying the connection
//! pool (circuit_breakers), outlier detection, load balancing and ISTIO_MUTUAL client TLS.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::istio::{
    ClientTlsMode, DestinationRuleSpec, LbPolicy, LoadBalancer, OutboundMode, TrafficPolicy,
};
use crate::manifest::{Origin, Resource};
use crate::model::{MeshModel, Service, ServicePort, labels_match};

use super::sidecar_scope::{self, SidecarScope};
use super::{CertFiles, Endpoints, duration};

/// Istio's cluster name: outbound|PORT|SUBSET|FQDN.
pub fn cluster_name(service: &Service, port: u16, subset: Option<&str>) -> String {
    format!(
        "outbound|{port}|{}|{}",
        subset.unwrap_or(""),
        service.fqdn()
    )
}

/// Every outbound cluster a proxy with `certs` needs to reach the services in its `scope`
/// (and, for the others, the PassthroughCluster's stand-ins when it lets calls out).
pub fn outbound_clusters(
    model: &MeshModel,
    certs: &CertFiles,
    endpoints: &Endpoints<'_>,
    scope: &SidecarScope,
) -> Result<Vec<Value>, InputError> {
    let mut clusters = Vec::new();
    let mut passthrough = false;
    for service in &model.services {
        let (seen, unseen): (Vec<&ServicePort>, Vec<&ServicePort>) = service
            .ports
            .iter()
            .partition(|p| scope.sees(service, p.port));
        if scope.mode == OutboundMode::AllowAny {
            for port in unseen {
                if port.protocol.is_http() {
                    passthrough = true;
                } else {
                    clusters.push(sidecar_scope::passthrough_tcp_cluster(
                        model, service, port, endpoints,
                    ));
                }
            }
        }
        if seen.is_empty() {
            continue;
        }
        let rule = rule_for(model, service)?;
        let top = rule.and_then(|r| r.spec.traffic_policy.as_ref());
        for port in seen {
            let at = Placement {
                service,
                port,
                certs,
                endpoints,
                origin: rule.map(|r| &r.origin),
            };
            clusters.push(cluster(model, &at, None, &Default::default(), top)?);
            for subset in rule.iter().flat_map(|r| r.spec.subsets.iter()) {
                let policy = effective_policy(top, Some(subset));
                clusters.push(cluster(
                    model,
                    &at,
                    Some(&subset.name),
                    &subset.labels,
                    policy.as_ref(),
                )?);
            }
        }
    }
    if passthrough {
        clusters.push(sidecar_scope::passthrough_http_cluster());
    }
    Ok(clusters)
}

/// Which cluster is being built, and where its settings were declared.
struct Placement<'a> {
    service: &'a Service,
    port: &'a ServicePort,
    certs: &'a CertFiles,
    endpoints: &'a Endpoints<'a>,
    origin: Option<&'a Origin>,
}

/// The traffic policy in force for a subset (or the service, with `None`): a subset's own policy
/// replaces the top-level one field by field.
pub fn effective_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&crate::manifest::istio::Subset>,
) -> Option<TrafficPolicy> {
    match subset.and_then(|s| s.traffic_policy.as_ref()) {
        Some(p) => Some(merge(top, p)),
        None => top.cloned(),
    }
}

/// The DestinationRule for a service (at most one, as Istio merges only across namespaces).
pub fn rule_for<'a>(
    model: &'a MeshModel,
    service: &Service,
) -> Result<Option<&'a Resource<DestinationRuleSpec>>, InputError> {
    let mut rules = model.manifests.destination_rules.iter().filter(|r| {
        model
            .resolve_host(&r.spec.host, r.namespace())
            .is_some_and(|s| s == service)
    });
    let first = rules.next();
    if let Some(second) = rules.next() {
        return Err(second.origin.error(
            "spec.host",
            format!("a second DestinationRule for {}", service.fqdn()),
        ));
    }
    Ok(first)
}

/// A subset's traffic policy replaces the top-level one field by field.
fn merge(top: Option<&TrafficPolicy>, subset: &TrafficPolicy) -> TrafficPolicy {
    let top = top.cloned().unwrap_or_default();
    TrafficPolicy {
        tls: subset.tls.clone().or(top.tls),
        load_balancer: subset.load_balancer.clone().or(top.load_balancer),
        connection_pool: subset.connection_pool.clone().or(top.connection_pool),
        outlier_detection: subset.outlier_detection.clone().or(top.outlier_detection),
    }
}

const UNSET_THRESHOLD: u32 = u32::MAX;

fn threshold(declared: Option<u32>) -> u32 {
    declared.filter(|n| *n > 0).unwrap_or(UNSET_THRESHOLD)
}

fn cluster(
    model: &MeshModel,
    at: &Placement<'_>,
    subset: Option<&str>,
    subset_labels: &std::collections::BTreeMap<String, String>,
    policy: Option<&TrafficPolicy>,
) -> Result<Value, InputError> {
    let Placement {
        service,
        port,
        certs,
        endpoints,
        origin,
    } = *at;
    let field_err = |field: &str, msg: &str| match origin {
        Some(o) => o.error(field, msg),
        None => InputError::new(&model.manifests.dir, msg.to_string()).field(field),
    };
    let dur = |field: &str, text: &Option<String>| -> Result<Option<Duration>, InputError> {
        match text {
            None => Ok(None),
            Some(t) => duration::parse(t)
                .map(Some)
                .ok_or_else(|| field_err(field, &format!("`{t}` is not a duration"))),
        }
    };
    let pods: Vec<_> = model
        .pods_of(service)
        .filter(|p| labels_match(subset_labels, &p.labels))
        .collect();
    let lb_endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({"endpoint": {"address": {"socket_address": {"address": endpoints(p).to_string(), "port_value": port.target_port}}}})
        })
        .collect();
    let name = cluster_name(service, port.port, subset);
    let pool = policy.and_then(|p| p.connection_pool.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let connect_timeout = dur(
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        &tcp.and_then(|t| t.connect_timeout.clone()),
    )?
    .unwrap_or(Duration::from_secs(10));
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration::envoy(connect_timeout),
        "lb_policy": match policy.and_then(|p| p.load_balancer.as_ref()) {
            Some(LoadBalancer { consistent_hash: Some(h), .. }) if h.maglev.is_some() => "MAGLEV",
            Some(LoadBalancer { consistent_hash: Some(_), .. }) => "RING_HASH",
            Some(LoadBalancer { simple: Some(LbPolicy::LeastRequest | LbPolicy::LeastConn), .. }) => "LEAST_REQUEST",
            Some(LoadBalancer { simple: Some(LbPolicy::Random), .. }) => "RANDOM",
            _ => "ROUND_ROBIN",
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        // Istio sets a threshold only from a value > 0; 0 or unset leaves it unlimited.
        "circuit_breakers": {"thresholds": [{
            "max_connections": threshold(tcp.and_then(|t| t.max_connections)),
            "max_pending_requests": threshold(http.and_then(|h| h.http1_max_pending_requests)),
            "max_requests": threshold(http.and_then(|h| h.http2_max_requests)),
            "max_retries": threshold(http.and_then(|h| h.max_retries)),
            "track_remaining": true,
        }]},
    });
    if let Some(h) = policy
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|l| l.consistent_hash.as_ref())
    {
        let ring = h
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(h.minimum_ring_size);
        if let Some(size) = ring {
            c["ring_hash_lb_config"] = json!({"minimum_ring_size": size});
        }
        if let Some(size) = h.maglev.as_ref().and_then(|m| m.table_size) {
            c["maglev_lb_config"] = json!({"table_size": size});
        }
    }
    let mut protocol = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": if port.protocol.h2() {
            json!({"http2_protocol_options": {}})
        } else {
            json!({"http_protocol_options": {}})
        },
    });
    if let Some(h) = http {
        let mut common = serde_json::Map::new();
        if let Some(n) = h.max_requests_per_connection {
            common.insert("max_requests_per_connection".into(), json!(n));
        }
        if let Some(t) = dur(
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            &h.idle_timeout,
        )? {
            common.insert("idle_timeout".into(), json!(duration::envoy(t)));
        }
        if !common.is_empty() {
            protocol["common_http_protocol_options"] = Value::Object(common);
        }
    }
    c["typed_extension_protocol_options"] =
        json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol});
    if let Some(o) = policy.and_then(|p| p.outlier_detection.as_ref()) {
        let f = "spec.trafficPolicy.outlierDetection";
        let mut od = json!({"enforcing_success_rate": 0});
        if let Some(n) = o.consecutive_5xx_errors {
            od["consecutive_5xx"] = json!(n);
            od["enforcing_consecutive_5xx"] = json!(if n > 0 { 100 } else { 0 });
        }
        if let Some(n) = o.consecutive_gateway_errors {
            od["consecutive_gateway_failure"] = json!(n);
            od["enforcing_consecutive_gateway_failure"] = json!(if n > 0 { 100 } else { 0 });
        }
        if let Some(d) = dur(&format!("{f}.interval"), &o.interval)? {
            od["interval"] = json!(duration::envoy(d));
        }
        if let Some(d) = dur(&format!("{f}.baseEjectionTime"), &o.base_ejection_time)? {
            od["base_ejection_time"] = json!(duration::envoy(d));
        }
        if let Some(p) = o.max_ejection_percent.filter(|p| *p > 0) {
            od["max_ejection_percent"] = json!(p);
        }
        // With outlier detection Istio's minHealthPercent defaults to 0: panic mode off, so
        // all-ejected means "no healthy upstream". Without it Envoy's 50% stays.
        let panic = o.min_health_percent.unwrap_or(0);
        c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": panic as f64}});
        c["outlier_detection"] = od;
    }
    let tls_mode = policy
        .and_then(|p| p.tls.as_ref())
        .map(|t| t.mode)
        .unwrap_or_default();
    if tls_mode == ClientTlsMode::IstioMutual {
        let sans: BTreeSet<String> = model.pods_of(service).map(|p| p.spiffe_id()).collect();
        let sans: Vec<Value> = sans
            .into_iter()
            .map(|s| json!({"san_type": "URI", "matcher": {"exact": s}}))
            .collect();
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": format!("outbound_.{}_.{}_.{}", port.port, subset.unwrap_or(""), service.fqdn()),
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                    "alpn_protocols": match port.protocol {
                        p if p.h2() => json!(["istio-h2", "istio", "h2"]),
                        p if !p.is_http() => json!(["istio-peer-exchange", "istio"]),
                        _ => json!(["istio-http/1.1", "istio", "http/1.1"]),
                    },
                    "tls_certificates": [certs.tls_certificate()],
                    "validation_context": {"trusted_ca": {"filename": certs.ca}, "match_typed_subject_alt_names": sans},
                },
            },
        });
    }
    Ok(c)
}

/// The route hash policy a consistent-hash DestinationRule needs (Envoy hashes on the route,
/// balances on the cluster), or None.
pub fn hash_policy(
    model: &MeshModel,
    service: &Service,
    subset: Option<&str>,
) -> Result<Option<Value>, InputError> {
    let Some(rule) = rule_for(model, service)? else {
        return Ok(None);
    };
    let sub = subset.and_then(|s| rule.spec.subsets.iter().find(|x| x.name == s));
    let policy = effective_policy(rule.spec.traffic_policy.as_ref(), sub);
    let Some(h) = policy
        .as_ref()
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|l| l.consistent_hash.as_ref())
    else {
        return Ok(None);
    };
    let field = "spec.trafficPolicy.loadBalancer.consistentHash";
    let one = if let Some(name) = &h.http_header_name {
        json!({"header": {"header_name": name}})
    } else if let Some(c) = &h.http_cookie {
        let mut cookie = json!({"name": c.name});
        if let Some(p) = &c.path {
            cookie["path"] = json!(p);
        }
        if let Some(t) = &c.ttl {
            let d = duration::parse(t).ok_or_else(|| {
                rule.origin.error(
                    &format!("{field}.httpCookie.ttl"),
                    format!("`{t}` is not a duration"),
                )
            })?;
            cookie["ttl"] = json!(duration::envoy(d));
        }
        json!({"cookie": cookie})
    } else if h.use_source_ip == Some(true) {
        json!({"connection_properties": {"source_ip": true}})
    } else if let Some(q) = &h.http_query_parameter_name {
        json!({"query_parameter": {"name": q}})
    } else {
        return Err(rule.origin.error(
            field,
            "say what to hash: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        ));
    };
    Ok(Some(json!([one])))
}

/// Upstream protocol options that speak HTTP/2 (h2c to an application, h2 between sidecars).
pub fn http2_options() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cluster of a proxy no Sidecar narrows.
    fn all_clusters(
        model: &MeshModel,
        endpoints: &Endpoints<'_>,
    ) -> Result<Vec<Value>, InputError> {
        outbound_clusters(model, &certs(), endpoints, &crate::translate::tests::all())
    }
    use crate::translate::tests::{certs, model_of, pyairtable_model};
    use std::net::IpAddr;

    fn endpoints() -> Box<dyn Fn(&crate::model::Pod) -> IpAddr> {
        Box::new(|p| IpAddr::from([127, 0, 1, 1 + p.ordinal as u8]))
    }

    #[test]
    fn a_consistent_hash_rings_the_cluster_and_hashes_on_the_route() {
        let model = model_of(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: ns}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpCookie: {name: session, ttl: 60s}, minimumRingSize: 1024}\n",
        );
        let endpoints = |_: &crate::model::Pod| IpAddr::from([127, 0, 0, 1]);
        let clusters = all_clusters(&model, &endpoints).unwrap();
        assert_eq!(clusters[0]["lb_policy"], "RING_HASH");
        assert_eq!(
            clusters[0]["ring_hash_lb_config"]["minimum_ring_size"],
            1024
        );
        let hosts = crate::translate::tests::all_virtual_hosts(&model);
        assert_eq!(
            hosts[0]["routes"][0]["route"]["hash_policy"],
            json!([{"cookie": {"name": "session", "ttl": "60s"}}])
        );
    }

    #[test]
    fn seed_values_become_circuit_breakers_and_outlier_detection() {
        let model = pyairtable_model();
        let clusters = all_clusters(&model, &endpoints()).unwrap();
        let c = clusters
            .iter()
            .find(|c| c["name"] == "outbound|8080||auth-service.pyairtable.svc.cluster.local")
            .unwrap();
        let t = &c["circuit_breakers"]["thresholds"][0];
        assert_eq!(t["max_connections"], 50);
        assert_eq!(t["max_pending_requests"], 50);
        assert_eq!(t["max_requests"], 100);
        assert_eq!(t["max_retries"], 3);
        assert_eq!(c["connect_timeout"], "30s");
        assert_eq!(c["outlier_detection"]["consecutive_gateway_failure"], 3);
        assert_eq!(
            c["outlier_detection"]["enforcing_consecutive_gateway_failure"],
            100
        );
        assert_eq!(c["outlier_detection"]["interval"], "30s");
        assert_eq!(c["outlier_detection"]["base_ejection_time"], "30s");
        assert_eq!(c["outlier_detection"]["enforcing_success_rate"], 0);
        assert_eq!(
            c["common_lb_config"]["healthy_panic_threshold"]["value"],
            0.0
        );
        let http = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            http["common_http_protocol_options"]["max_requests_per_connection"],
            5
        );
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(
            tls["sni"],
            "outbound_.8080_._.auth-service.pyairtable.svc.cluster.local"
        );
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
                ["exact"],
            "spiffe://cluster.local/ns/pyairtable/sa/auth-service-sa"
        );
    }

    #[test]
    fn subsets_select_pods_by_labels() {
        let model = pyairtable_model();
        let clusters = all_clusters(&model, &endpoints()).unwrap();
        let count = |name: &str| {
            clusters.iter().find(|c| c["name"] == name).unwrap()["load_assignment"]["endpoints"][0]
                ["lb_endpoints"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(
            count("outbound|8080|stable|api-gateway.pyairtable.svc.cluster.local"),
            2
        );
        assert_eq!(
            count("outbound|8080|canary|api-gateway.pyairtable.svc.cluster.local"),
            1
        );
        assert_eq!(
            count("outbound|8080||api-gateway.pyairtable.svc.cluster.local"),
            3
        );
        assert_eq!(
            count("outbound|8080||airtable-gateway.pyairtable.svc.cluster.local"),
            3
        );
    }

    #[test]
    fn bad_duration_names_the_field() {
        let model = model_of(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: x, namespace: ns}\nspec:\n  host: svc\n  trafficPolicy:\n    outlierDetection:\n      interval: often\n",
        );
        let err = all_clusters(&model, &endpoints()).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.trafficPolicy.outlierDetection.interval")
        );
    }
}
