//! The faults a target injects for chaos: one vocabulary for every target (the local mesh
//! applies them itself, a cluster through its API), each with an id, an owner and a lease.

use serde::{Deserialize, Serialize};

use crate::agent::Fault;

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Injection {
    /// The app of `pod` misbehaves (status, delay, hang, close, slow body), through its agent.
    Workload { pod: String, fault: Fault },
    /// The pod's sidecar and app are killed; a replacement with the same identity and address
    /// comes up after `backoff_ms`, as a Deployment's would.
    PodKill { pod: String, backoff_ms: u64 },
    /// The pod's sidecar is frozen (SIGSTOP) until the fault ends.
    PodPause { pod: String },
    /// A VirtualService route injects a delay and/or an abort, by live config.
    RouteFault {
        virtual_service: String,
        route: String,
        #[serde(default)]
        delay_ms: Option<u64>,
        #[serde(default)]
        delay_percent: f64,
        #[serde(default)]
        abort_status: Option<u16>,
        #[serde(default)]
        abort_percent: f64,
    },
    /// TCP from the `from` pods to the `to` pods goes through a fault proxy.
    Network {
        from: Vec<String>,
        to: Vec<String>,
        fault: NetworkFault,
    },
    /// The pod's certificate is replaced; its peers must reject it.
    Certificate { pod: String, cert: CertFault },
    /// A config push to `proxy` that Envoy must reject (it keeps serving its last good config).
    RejectedPush { proxy: String },
    /// Every config push to `proxy` arrives `delay_ms` late (a slow or overloaded control
    /// plane); shown by a push actually held back while the fault is in force.
    DelayedPush { proxy: String, delay_ms: u64 },
}

/// What a fault proxy does to the bytes between two pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NetworkFault {
    /// Every chunk waits `ms` (± `jitter_ms`) each way.
    Latency {
        ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    /// At most this many bytes per second each way.
    Bandwidth { bytes_per_second: u64 },
    /// Connections are accepted and reset at once.
    Reset,
    /// Connections are accepted and nothing ever comes back (a partition).
    Blackhole,
    /// Connections close this long after either side closes.
    SlowClose { ms: u64 },
}

/// How a workload's certificate is broken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertFault {
    /// Issued by the mesh CA, but expired.
    Expired,
    /// Issued by the mesh CA for another identity (`spiffe://.../sa/meshtest-impostor`).
    OtherIdentity,
}

impl Injection {
    /// One line for plans, timelines and evidence.
    pub fn describe(&self) -> String {
        match self {
            Injection::Workload { pod, fault } => format!("{pod}: {}", fault.describe()),
            Injection::PodKill { pod, backoff_ms } => {
                format!("kill {pod} (replacement after {backoff_ms} ms)")
            }
            Injection::PodPause { pod } => format!("pause {pod}"),
            Injection::RouteFault {
                virtual_service,
                route,
                delay_ms,
                delay_percent,
                abort_status,
                abort_percent,
            } => {
                let mut parts = Vec::new();
                if let Some(ms) = delay_ms {
                    parts.push(format!("delay {ms} ms for {delay_percent}%"));
                }
                if let Some(s) = abort_status {
                    parts.push(format!("abort {s} for {abort_percent}%"));
                }
                format!("route {virtual_service}/{route}: {}", parts.join(", "))
            }
            Injection::Network { from, to, fault } => {
                format!("{} -> {}: {fault:?}", from.join(","), to.join(","))
            }
            Injection::Certificate { pod, cert } => format!("{pod}: certificate {cert:?}"),
            Injection::RejectedPush { proxy } => format!("{proxy}: a config push Envoy rejects"),
            Injection::DelayedPush { proxy, delay_ms } => {
                format!("{proxy}: config pushes arrive {delay_ms} ms late")
            }
        }
    }

    /// What reverting it does, for plans and journals.
    pub fn inverse(&self) -> String {
        match self {
            Injection::Workload { pod, .. } => format!("clear {pod}'s agent fault (if still ours)"),
            Injection::PodKill { pod, .. } => format!("make sure {pod} runs again"),
            Injection::PodPause { pod } => format!("resume {pod} (SIGCONT)"),
            Injection::RouteFault {
                virtual_service, ..
            } => format!("restore {virtual_service}'s declared spec"),
            Injection::Network { .. } => "route the pods to each other directly again".into(),
            Injection::Certificate { pod, .. } => format!("give {pod} its own certificate back"),
            Injection::RejectedPush { proxy } => format!("push {proxy} its good config again"),
            Injection::DelayedPush { proxy, .. } => format!("push to {proxy} without delay again"),
        }
    }

    /// The pods the fault touches directly (for blast-radius rules).
    pub fn pods(&self) -> Vec<String> {
        match self {
            Injection::Workload { pod, .. }
            | Injection::PodKill { pod, .. }
            | Injection::PodPause { pod }
            | Injection::Certificate { pod, .. } => vec![pod.clone()],
            Injection::Network { to, .. } => to.clone(),
            Injection::RouteFault { .. }
            | Injection::RejectedPush { .. }
            | Injection::DelayedPush { .. } => vec![],
        }
    }
}

/// A fault a target currently holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveInjection {
    pub id: String,
    pub owner: String,
    pub injection: Injection,
    /// Time left on its lease.
    pub expires_in_ms: u64,
    /// How often the data plane has shown it so far (connections through a fault proxy,
    /// requests the faulted app changed, ...): 0 means it has not reached traffic yet.
    pub observed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injections_round_trip_as_tagged_json() {
        let i = Injection::Network {
            from: vec!["api-gateway-0".into()],
            to: vec!["file-processor-0".into()],
            fault: NetworkFault::Latency {
                ms: 200,
                jitter_ms: 20,
            },
        };
        let json = serde_json::to_string(&i).unwrap();
        assert!(json.contains("\"kind\":\"network\""), "{json}");
        assert_eq!(serde_json::from_str::<Injection>(&json).unwrap(), i);
        assert!(i.describe().contains("api-gateway-0 -> file-processor-0"));
    }
}
