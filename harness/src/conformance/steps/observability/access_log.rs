//! Access logs: every proxy on a request's path logs it with its business context.

use std::time::{Duration, Instant};

use cucumber::{then, when};

use crate::conformance::steps::jwt::token;
use crate::conformance::world::MeshWorld;
use crate::target::{Call, From};
use crate::token::{Tier, TokenSpec};
use crate::{promise, unchecked};

#[when(regex = r"^tenant (\S+) sends a request through the ingress to (\S+)$")]
async fn one_request(w: &mut MeshWorld, tenant: String, path: String) {
    let id = format!("{tenant}-{}", std::process::id());
    let jwt = token(w, &TokenSpec::new(&id, Tier::Pro)).await;
    let mut call = Call::new(
        From::Ingress { https: false },
        crate::target::INGRESS,
        &path,
    )
    .header("authorization", &format!("Bearer {jwt}"));
    call.timeout = crate::conformance::world::CALL_TIMEOUT;
    w.tenants.insert(tenant.clone(), (id, Tier::Pro));
    w.call(format!("tenant {tenant}: ingress {path}"), call)
        .await;
}

/// The key of the declared JSON access log field whose value is `operator`.
fn json_log_key(w: &MeshWorld, operator: &str) -> Option<String> {
    w.target
        .manifests()
        .istio_operators
        .iter()
        .flat_map(|o| o.spec.mesh_config.extension_providers.iter())
        .filter_map(|p| p.envoy_file_access_log.as_ref()?.log_format.as_ref())
        .flat_map(|f| f.labels.iter())
        .find(|(_, v)| v.trim().eq_ignore_ascii_case(operator))
        .map(|(k, _)| k.clone())
}

#[then(regex = r"^every proxy on its path logs it with tenant (\S+), a route and its request id$")]
async fn access_logged(w: &mut MeshWorld, tenant: String) {
    let Some((id, _)) = w.tenants.get(&tenant).cloned() else {
        unchecked!("tenant {tenant} sent nothing in this scenario");
    };
    // The path, from the answer; the backend echoed the request id the mesh gave it.
    let f = super::Forwarded::of_last_call(w);
    let request_id = f
        .received("x-request-id")
        .unwrap_or_else(|| unchecked!("the backend received no x-request-id"));
    let path = [
        "istio-ingressgateway".to_string(),
        f.forwarded_by,
        f.backend,
    ];
    let route_key = json_log_key(w, "%ROUTE_NAME%").unwrap_or_else(|| {
        crate::broken!("no JSON access log format the mesh declares has a %ROUTE_NAME% field")
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    for proxy in &path {
        // Envoy writes access logs from a buffer: poll (bounded) until the line is there.
        let lines = loop {
            let log = w
                .target
                .proxy_log(proxy)
                .await
                .unwrap_or_else(|e| unchecked!("reading {proxy}'s log: {e:#}"));
            let lines: Vec<serde_json::Value> = log
                .lines()
                .filter(|l| l.contains(&request_id))
                .filter_map(|l| serde_json::from_str(l.trim()).ok())
                .collect();
            if !lines.is_empty() || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        promise!(
            !lines.is_empty(),
            "{proxy} logged no JSON access log line with request id {request_id}"
        );
        for line in &lines {
            let route = line[route_key.as_str()].as_str().unwrap_or("");
            let has_tenant = line
                .as_object()
                .is_some_and(|o| o.values().any(|v| v.as_str() == Some(id.as_str())));
            promise!(
                has_tenant,
                "{proxy}'s access log line for {request_id} does not carry tenant {id}: {line}"
            );
            promise!(
                !route.is_empty() && route != "-",
                "{proxy}'s access log line for {request_id} names no route ({route_key}): {line}"
            );
        }
        w.evidence(format!(
            "{proxy}: {} line(s) with request id {request_id}, tenant {id}, routes {:?}",
            lines.len(),
            lines
                .iter()
                .map(|l| l[route_key.as_str()].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
        ));
    }
}
