//! Peer authentication: each pod port's declared mTLS mode, plaintext and foreign or missing
//! certificates refused on STRICT ports, and every refusal proven to come from a live proxy
//! (the same address completes an mTLS handshake with a mesh identity).

use std::time::Duration;

use cucumber::{given, then, when};

use crate::conformance::steps::common::{NetworkRbac, network_rbac, observed, unreachable};
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::manifest::istio::MtlsMode;
use crate::model::{MeshModel, Pod, Workload};
use crate::outcome::Outcome;
use crate::target::{Call, From, Transport, split_port};
use crate::translate::peer_authentication::effective_mode;
use crate::{broken, promise, unchecked};

fn transport(how: &str) -> Transport {
    match how {
        "plaintext" => Transport::Plaintext,
        "TLS without a client certificate" => Transport::TlsNoCert,
        "TLS with a certificate from another CA" => Transport::TlsForeignCert,
        other => unchecked!("unknown transport {other:?}"),
    }
}

fn mode(text: &str) -> MtlsMode {
    match text {
        "STRICT" => MtlsMode::Strict,
        "PERMISSIVE" => MtlsMode::Permissive,
        "DISABLE" => MtlsMode::Disable,
        other => unchecked!("unknown mTLS mode {other}"),
    }
}

fn mode_name(m: MtlsMode) -> &'static str {
    match m {
        MtlsMode::Strict => "STRICT",
        MtlsMode::Permissive | MtlsMode::Unset => "PERMISSIVE",
        MtlsMode::Disable => "DISABLE",
    }
}

/// Every (pod, service port, pod port) of the pods of `service` (or all pods), with the mode
/// the PeerAuthentications declare for it.
fn declared_ports(model: &MeshModel, only: Option<&str>) -> Vec<(Pod, u16, u16, MtlsMode)> {
    let mut out = Vec::new();
    // Every Service that selects a pod (not only the one that places it).
    for service in &model.services {
        if only.is_some_and(|s| s != service.name) {
            continue;
        }
        for pod in model.pods_of(service) {
            for sp in &service.ports {
                let m = effective_mode(&model.manifests, &Workload::of(pod), sp.target_port);
                out.push((pod.clone(), sp.port, sp.target_port, m));
            }
        }
    }
    out
}

/// "auth-service:8081" -> the service and its port (the first port when none is given).
fn service_port(model: &MeshModel, text: &str) -> (String, u16) {
    let (name, port) = split_port(text);
    let Some(service) = model.service(name) else {
        unchecked!("the mesh declares no service {name}");
    };
    let port = port.unwrap_or(service.default_port().port);
    if service.port(port).is_none() {
        unchecked!("service {name} has no port {port}");
    }
    (name.to_string(), port)
}

#[given(
    regex = r"^the PeerAuthentications declare (STRICT|PERMISSIVE|DISABLE) mTLS for every pod port of namespace (\S+)(?: except (.+))?$"
)]
async fn declared_everywhere(w: &mut MeshWorld, want: String, namespace: String, except: String) {
    let model = crate::declared::model(w.target.manifests());
    let exceptions: Vec<(String, u16)> = except
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| service_port(&model, e))
        .collect();
    let want = mode(&want);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (pod, port, _, m) in declared_ports(&model, None) {
        if pod.namespace != namespace || exceptions.contains(&(pod.service.clone(), port)) {
            continue;
        }
        checked += 1;
        if m != want {
            wrong.push(format!("{}:{port} is {}", pod.name, mode_name(m)));
        }
    }
    if checked == 0 {
        unchecked!("namespace {namespace} has no pods");
    }
    promise!(
        wrong.is_empty(),
        "the promise is {} for every pod port of {namespace}{}; the PeerAuthentications declare {}",
        mode_name(want),
        if except.is_empty() {
            String::new()
        } else {
            format!(" except {except}")
        },
        wrong.join(", ")
    );
    w.evidence(format!(
        "n={checked} pod ports of {namespace} declared {}",
        mode_name(want)
    ));
}

#[given(
    regex = r"^the PeerAuthentications declare (STRICT|PERMISSIVE|DISABLE) mTLS for (?P<service>\S+)$"
)]
async fn declared_for(w: &mut MeshWorld, want: String, target: String) {
    let model = crate::declared::model(w.target.manifests());
    let (service, port) = service_port(&model, &target);
    let want = mode(&want);
    let ports: Vec<_> = declared_ports(&model, Some(&service))
        .into_iter()
        .filter(|(_, p, _, _)| *p == port)
        .collect();
    for (pod, _, _, m) in &ports {
        promise!(
            *m == want,
            "the promise is {} for {service}:{port}; the PeerAuthentications declare {} for {}",
            mode_name(want),
            mode_name(*m),
            pod.name
        );
    }
    w.evidence(format!(
        "{service}:{port} declared {} on its {} pods",
        mode_name(want),
        ports.len()
    ));
}

#[when(
    regex = r"^a client outside the mesh calls (?P<service>\S+) at (\S+) over (plaintext|TLS without a client certificate|TLS with a certificate from another CA)(?: (\d+) times, one every (\d+) ms)?$"
)]
async fn outside_calls(
    w: &mut MeshWorld,
    to: String,
    path: String,
    how: String,
    times: String,
    every_ms: String,
) {
    let mut call = Call::new(From::Outside(transport(&how)), &to, &path);
    call.timeout = CALL_TIMEOUT;
    // Repeated, the refusals last across scrapes (an alert's `rate` sees them).
    let times: usize = times.parse().unwrap_or(1);
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.parse().unwrap_or(1)));
    for _ in 0..times {
        tick.tick().await;
        w.call(format!("outside ({how}) -> {to} {path}"), call.clone())
            .await;
    }
}

fn last_target(w: &MeshWorld) -> String {
    match &w.last_call {
        Some(c) => c.to.clone(),
        None => unchecked!("no call was made before this step"),
    }
}

/// Proves the proxy at `to` is alive: an mTLS handshake with a mesh identity and an HTTP answer
/// (or, on a TCP port, a connection its network RBAC counted as denied).
async fn proof_of_life(w: &MeshWorld, to: &str, refused_how: &str) -> String {
    let mut call = Call::new(From::Outside(Transport::MeshIdentity), to, "/health");
    call.timeout = CALL_TIMEOUT;
    let o = match w.target.call(&call).await {
        Ok(o) => o,
        Err(e) => unchecked!("proving the proxy of {to} alive: {e:#}"),
    };
    match &o {
        Outcome::Response { status, .. } => format!(
            "the same address completed an mTLS handshake with a mesh identity and answered HTTP {status}, so a live proxy refused {refused_how}"
        ),
        _ if let NetworkRbac::Closed(closed) = network_rbac(w, to, &call).await => format!(
            "with a mesh identity the same address completed an mTLS handshake and its network RBAC decided ({closed}), so a live proxy refused {refused_how}"
        ),
        other => unchecked!(
            "{to} refused {refused_how}, but it also failed an mTLS handshake with a mesh identity ({}): the refusal may come from a proxy that is down or misconfigured, not from its policy",
            other.summary()
        ),
    }
}

#[then("the connection is refused without an HTTP response by a live proxy")]
async fn no_http_response(w: &mut MeshWorld) {
    let (desc, o) = observed(w);
    let (desc, o) = (desc.to_string(), o.clone());
    match &o {
        Outcome::Response { .. } => broken!(
            "{desc}: STRICT mTLS should refuse it, but it got {}",
            o.summary()
        ),
        Outcome::Reset { .. } => {}
        other => unchecked!(
            "{desc}: {}; a refusal is a connection closed after the request was sent",
            other.summary()
        ),
    }
    let to = last_target(w);
    let proof = proof_of_life(w, &to, "plaintext").await;
    w.evidence(format!("n=1: {desc}: {}; {proof}", o.summary()));
}

#[then("the proxy ends the TLS handshake with an alert")]
async fn handshake_alert(w: &mut MeshWorld) {
    let (desc, o) = observed(w);
    let (desc, o) = (desc.to_string(), o.clone());
    match &o {
        Outcome::Tls { detail } if detail.contains("alert") => {}
        Outcome::Response { .. } => broken!(
            "{desc}: the proxy should require a mesh client certificate, but it answered {}",
            o.summary()
        ),
        Outcome::Tls { .. } | Outcome::Reset { .. } => broken!(
            "{desc}: the handshake ended without the proxy's TLS alert ({}): no filter chain demanded a client certificate",
            o.summary()
        ),
        other => unchecked!("{desc}: {}", other.summary()),
    }
    let to = last_target(w);
    let proof = proof_of_life(w, &to, "the handshake").await;
    w.evidence(format!("n=1: {desc}: {}; {proof}", o.summary()));
}

#[then("every pod port answers plaintext from outside the mesh as its declared mTLS mode says")]
async fn every_port_as_declared(w: &mut MeshWorld) {
    let model = crate::declared::model(w.target.manifests());
    let mut lines = Vec::new();
    let mut wrong = Vec::new();
    let ports = declared_ports(&model, None);
    if ports.is_empty() {
        unchecked!("the mesh has no pod ports");
    }
    for (pod, port, target_port, m) in &ports {
        let to = format!("{}:{target_port}", pod.name);
        let mut call = Call::new(From::Outside(Transport::Plaintext), &to, "/health");
        call.timeout = CALL_TIMEOUT;
        let o = match w.target.call(&call).await {
            Ok(o) => o,
            Err(e) => unchecked!("calling {to}: {e:#}"),
        };
        if let Some(why) = unreachable(&o) {
            unchecked!("plaintext to {to} ({}:{port}): {why}", pod.service);
        }
        let answered = o.status().is_some();
        match (m, answered) {
            (MtlsMode::Strict, true) => wrong.push(format!(
                "{to} is declared STRICT but answered plaintext: {}",
                o.summary()
            )),
            (MtlsMode::Strict, false) => {
                if !matches!(o, Outcome::Reset { .. }) {
                    unchecked!(
                        "plaintext to {to}: {} (a refusal is a connection closed after the request)",
                        o.summary()
                    );
                }
                let proof = proof_of_life(w, &to, "plaintext").await;
                lines.push(format!("{to} STRICT: {}; {proof}", o.summary()));
            }
            (_, true) => lines.push(format!(
                "{to} {}: plaintext answered HTTP {}",
                mode_name(*m),
                o.status().unwrap_or(0)
            )),
            // A TCP port's RBAC answers plaintext it accepted by closing the connection.
            (_, false) => match network_rbac(w, &to, &call).await {
                NetworkRbac::Closed(closed) => lines.push(format!(
                    "{to} {}: plaintext reached the proxy's network RBAC ({closed})",
                    mode_name(*m)
                )),
                NetworkRbac::Answered(again) => lines.push(format!(
                    "{to} {}: plaintext answered HTTP {} when repeated",
                    mode_name(*m),
                    again.status().unwrap_or(0)
                )),
                NetworkRbac::NotRbac(why) => wrong.push(format!(
                    "{to} is declared {} but refused plaintext: {} ({why})",
                    mode_name(*m),
                    o.summary()
                )),
                NetworkRbac::Unknown(why) => {
                    unchecked!("plaintext to {to}: {}; {why}", o.summary())
                }
            },
        }
    }
    promise!(wrong.is_empty(), "{}", wrong.join("\n"));
    w.evidence(format!("n={} pod ports: {}", ports.len(), lines.join("; ")));
}
