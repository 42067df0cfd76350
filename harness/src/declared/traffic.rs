//! DestinationRule values in force for a service's cluster: the connection pool and outlier
//! detection, with Istio's and Envoy's defaults for what is unset.

use std::time::Duration;

use crate::manifest::istio::TrafficPolicy;
use crate::model::{MeshModel, Service};
use crate::translate::destination_rule::{effective_policy, rule_for};
use crate::translate::duration;

use super::{Declared, where_};

/// The traffic policy for `service` (its subset `subset`, if given) and where it is declared.
pub fn policy(
    model: &MeshModel,
    service: &Service,
    subset: Option<&str>,
) -> (Option<TrafficPolicy>, String) {
    let rule = match rule_for(model, service) {
        Ok(r) => r,
        Err(e) => crate::unchecked!("reading the DestinationRule of {}: {e}", service.name),
    };
    let Some(rule) = rule else {
        return (None, "no DestinationRule".into());
    };
    let top = rule.spec.traffic_policy.as_ref();
    let sub = subset.and_then(|s| rule.spec.subsets.iter().find(|x| x.name == s));
    (effective_policy(top, sub), where_(Some(&rule.origin)))
}

/// The labels of `subset` of `service` as a DestinationRule declares them; None when none does
/// (a route to it then gets 503 under Istio).
pub fn subset(
    model: &MeshModel,
    service: &str,
    subset: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let service = model.service(service)?;
    model
        .manifests
        .destination_rules
        .iter()
        .filter(|r| model.resolve_host(&r.spec.host, r.namespace()) == Some(service))
        .flat_map(|r| r.spec.subsets.iter())
        .find(|s| s.name == subset)
        .map(|s| s.labels.clone())
}

/// A connection pool as the cluster's circuit breakers will enforce it (None: unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub max_connections: Option<u32>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
}

pub fn pool(model: &MeshModel, service: &Service) -> Declared<Pool> {
    let (policy, at) = policy(model, service, None);
    let cp = policy.and_then(|p| p.connection_pool);
    let tcp = cp.as_ref().and_then(|c| c.tcp.as_ref());
    let http = cp.as_ref().and_then(|c| c.http.as_ref());
    // Istio applies a threshold only from a value > 0.
    let positive = |v: Option<u32>| v.filter(|n| *n > 0);
    Declared {
        value: Pool {
            max_connections: positive(tcp.and_then(|t| t.max_connections)),
            http1_max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            http2_max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
            max_retries: positive(http.and_then(|h| h.max_retries)),
        },
        at,
    }
}

/// Outlier detection as Envoy will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive 502/503/504s that eject a host (None: gateway-error ejection is off).
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx that eject a host (Envoy's default 5 when unset; None when set to 0).
    pub consecutive_5xx_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// None when the service's DestinationRule declares no outlier detection.
pub fn outlier(model: &MeshModel, service: &Service) -> Declared<Option<Outlier>> {
    let (policy, at) = policy(model, service, None);
    let Some(o) = policy.and_then(|p| p.outlier_detection) else {
        return Declared { value: None, at };
    };
    let dur = |text: &Option<String>, default: u64| {
        text.as_deref()
            .and_then(duration::parse)
            .unwrap_or(Duration::from_secs(default))
    };
    Declared {
        value: Some(Outlier {
            consecutive_gateway_errors: o.consecutive_gateway_errors.filter(|n| *n > 0),
            consecutive_5xx_errors: match o.consecutive_5xx_errors {
                None => Some(5),
                Some(0) => None,
                Some(n) => Some(n),
            },
            interval: dur(&o.interval, 10),
            base_ejection_time: dur(&o.base_ejection_time, 30),
            max_ejection_percent: o.max_ejection_percent.filter(|p| *p > 0).unwrap_or(10),
        }),
        at,
    }
}

impl Outlier {
    /// How many of `hosts` Envoy lets be ejected at once: it ejects another only while
    /// 100 * (ejected + 1) / hosts <= max_ejection_percent.
    pub fn max_ejected(&self, hosts: u32) -> u32 {
        (0..=hosts)
            .take_while(|e| *e == 0 || 100 * e <= self.max_ejection_percent * hosts)
            .last()
            .unwrap_or(0)
            .min(hosts)
    }
}

/// The columns of a feature's DestinationRule table, after `service`.
pub const TABLE_COLUMNS: [&str; 11] = [
    "load balancer",
    "max connections",
    "pending requests",
    "HTTP/2 requests",
    "requests per connection",
    "max retries",
    "connect timeout",
    "gateway errors",
    "interval",
    "base ejection",
    "max ejection",
];

/// One traffic policy as the DestinationRule table of a feature writes it (`TABLE_COLUMNS`).
pub fn table_row(p: Option<&crate::manifest::istio::TrafficPolicy>) -> Vec<String> {
    let pool = p.and_then(|p| p.connection_pool.as_ref());
    let tcp = pool.and_then(|c| c.tcp.as_ref());
    let http = pool.and_then(|c| c.http.as_ref());
    let od = p.and_then(|p| p.outlier_detection.as_ref());
    let num = |v: Option<u32>| {
        v.filter(|n| *n > 0)
            .map_or("none".to_string(), |n| n.to_string())
    };
    let dur = |v: Option<&String>| v.cloned().unwrap_or_else(|| "none".into());
    let lb = p
        .and_then(|p| p.load_balancer.as_ref())
        .map_or("none".to_string(), |l| {
            match (&l.simple, &l.consistent_hash) {
                (Some(simple), _) => format!("{simple:?}"),
                (None, Some(_)) => "ConsistentHash".to_string(),
                (None, None) => "none".to_string(),
            }
        });
    vec![
        screaming(&lb),
        num(tcp.and_then(|t| t.max_connections)),
        num(http.and_then(|h| h.http1_max_pending_requests)),
        num(http.and_then(|h| h.http2_max_requests)),
        num(http.and_then(|h| h.max_requests_per_connection)),
        num(http.and_then(|h| h.max_retries)),
        dur(tcp.and_then(|t| t.connect_timeout.as_ref())),
        num(od.and_then(|o| o.consecutive_gateway_errors)),
        dur(od.and_then(|o| o.interval.as_ref())),
        dur(od.and_then(|o| o.base_ejection_time.as_ref())),
        od.and_then(|o| o.max_ejection_percent)
            .map_or("none".into(), |p| format!("{p}%")),
    ]
}

/// "RoundRobin" -> "ROUND_ROBIN", as manifests spell it.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::pyairtable_model;

    #[test]
    fn pyairtable_declares_the_seed_values() {
        let m = pyairtable_model();
        let svc = m.service("airtable-gateway").unwrap();
        let p = pool(&m, svc);
        assert_eq!(p.value.max_connections, Some(50));
        assert_eq!(p.value.http1_max_pending_requests, Some(50));
        assert_eq!(p.value.max_requests_per_connection, Some(5));
        assert!(p.at.starts_with("traffic.yaml:"), "{}", p.at);
        let o = outlier(&m, svc).value.unwrap();
        assert_eq!(o.consecutive_gateway_errors, Some(3));
        assert_eq!(o.consecutive_5xx_errors, Some(5));
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_percent, 50);
    }

    #[test]
    fn envoy_ejects_only_within_the_percentage() {
        let o = |pct| Outlier {
            consecutive_gateway_errors: Some(3),
            consecutive_5xx_errors: Some(5),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: pct,
        };
        // 100*(0+1)/3 = 33 <= 50: one; 100*2/3 = 66 > 50: not two.
        assert_eq!(o(50).max_ejected(3), 1);
        assert_eq!(o(10).max_ejected(3), 0);
        assert_eq!(o(50).max_ejected(1), 0);
        assert_eq!(o(100).max_ejected(3), 3);
        assert_eq!(o(50).max_ejected(2), 1);
    }
}
