//! The embedded mesh's promises against real Envoy: STRICT mTLS, SPIFFE identities, RBAC, JWT at
//! the edge, and live configuration changes.

mod support;

use std::time::Duration;

use meshtest::manifest::Manifests;
use meshtest::outcome::Outcome;
use meshtest::target::{Call, From, Target, Transport};
use meshtest::token::{Breakage, Tier, TokenSpec};
use support::{eventually, mesh_copy, only, processes_mentioning, shared, start};

fn ingress(path: &str) -> Call {
    Call::new(From::Ingress { https: false }, "api-gateway", path)
}

/// A call from inside the mesh: `workload` is a service (any replica) or a pod name.
fn from_workload(workload: &str, service: &str, path: &str) -> Call {
    Call::new(From::Workload(workload.into()), service, path)
}

async fn bearer(mesh: &impl Target, spec: TokenSpec) -> String {
    format!("Bearer {}", mesh.mint_token(&spec).await.expect("token"))
}

#[tokio::test]
async fn plaintext_to_every_pod_gets_no_http_response_under_strict() {
    let mesh = shared().await;
    for pod in mesh.pods() {
        let o = mesh
            .call(&Call::new(
                From::Outside(Transport::Plaintext),
                &pod.name,
                "/health",
            ))
            .await
            .unwrap();
        assert!(
            matches!(o, Outcome::Reset { .. }),
            "{} ({}): plaintext got {}",
            pod.name,
            pod.address(),
            o.summary()
        );
    }
}

#[tokio::test]
async fn tls_without_a_mesh_certificate_fails_the_handshake() {
    let mesh = shared().await;
    for transport in [Transport::TlsNoCert, Transport::TlsForeignCert] {
        let o = mesh
            .call(&Call::new(
                From::Outside(transport),
                "auth-service",
                "/health",
            ))
            .await
            .unwrap();
        assert!(
            matches!(o, Outcome::Tls { .. }),
            "{transport:?}: {}",
            o.summary()
        );
    }
}

#[tokio::test]
async fn api_gateway_reaches_auth_service_as_its_spiffe_identity() {
    let mesh = shared().await;
    let o = mesh
        .call(&from_workload("api-gateway", "auth-service", "/health"))
        .await
        .unwrap();
    assert_eq!(o.status(), Some(200), "{}", o.summary());
    let echo = o.json().expect("echo JSON");
    assert_eq!(echo["service"], "auth-service");
    assert_eq!(
        echo["caller"],
        "spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa"
    );
}

#[tokio::test]
async fn llm_orchestrator_is_denied_auth_service_by_rbac() {
    let mesh = shared().await;
    let o = mesh
        .call(&from_workload(
            "llm-orchestrator",
            "auth-service",
            "/api/v1/auth/verify",
        ))
        .await
        .unwrap();
    assert_eq!(o.status(), Some(403), "{}", o.summary());
    assert_eq!(o.body(), Some("RBAC: access denied"));
}

#[tokio::test]
async fn the_edge_requires_a_valid_jwt_on_api_but_not_on_health() {
    let mesh = shared().await;
    let valid = TokenSpec::new("acme", Tier::Pro);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("health without token", None, 200, ""),
        ("api without token", None, 403, "RBAC: access denied"),
        (
            "valid token",
            Some(bearer(mesh, valid.clone()).await),
            200,
            "",
        ),
        (
            "expired",
            Some(
                bearer(
                    mesh,
                    TokenSpec {
                        expired: true,
                        ..valid.clone()
                    },
                )
                .await,
            ),
            401,
            "Jwt is expired",
        ),
        (
            "tampered",
            Some(
                bearer(
                    mesh,
                    TokenSpec {
                        breakage: Breakage::Tampered,
                        ..valid.clone()
                    },
                )
                .await,
            ),
            401,
            "Jwt verification fails",
        ),
        (
            "bad signature",
            Some(
                bearer(
                    mesh,
                    TokenSpec {
                        breakage: Breakage::BadSignature,
                        ..valid.clone()
                    },
                )
                .await,
            ),
            401,
            "Jwt verification fails",
        ),
        (
            "wrong issuer",
            Some(
                bearer(
                    mesh,
                    TokenSpec {
                        issuer: Some("evil".into()),
                        ..valid.clone()
                    },
                )
                .await,
            ),
            401,
            "Jwt issuer is not configured",
        ),
    ];
    for (name, auth, status, body) in cases {
        let path = if name.starts_with("health") {
            "/health"
        } else {
            "/api/v1/auth/verify"
        };
        let mut call = ingress(path);
        if let Some(a) = auth {
            call = call.header("authorization", &a);
        }
        let o = mesh.call(&call).await.unwrap();
        assert_eq!(o.status(), Some(status), "{name}: {}", o.summary());
        if !body.is_empty() {
            assert_eq!(o.body(), Some(body), "{name}");
        }
        if status == 200 && path != "/health" {
            // Two mTLS hops: ingress -> api-gateway -> auth-service.
            let echo = o.json().expect("echo");
            assert_eq!(echo["service"], "auth-service", "{name}");
            assert_eq!(
                echo["caller"], "spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa",
                "{name}"
            );
            assert_eq!(echo["headers"]["x-tenant-id"], "acme", "{name}");
            assert!(
                o.header("x-meshtest-forwarded-by")
                    .is_some_and(|p| p.starts_with("api-gateway")),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn https_ingress_serves_simple_tls() {
    let mesh = shared().await;
    let o = mesh
        .call(&Call::new(
            From::Ingress { https: true },
            "api-gateway",
            "/health",
        ))
        .await
        .unwrap();
    assert_eq!(o.status(), Some(200), "{}", o.summary());
}

#[tokio::test]
async fn plaintext_is_answered_under_permissive() {
    let dir = mesh_copy(only("security.yaml", |text| {
        text.replace("mode: STRICT", "mode: PERMISSIVE")
    }));
    let mesh = start(dir.path()).await;
    for pod in mesh.pods() {
        let o = mesh
            .call(&Call::new(
                From::Outside(Transport::Plaintext),
                &pod.name,
                "/health",
            ))
            .await
            .unwrap();
        // Answered by the sidecar; RBAC still denies an unauthenticated caller.
        assert!(o.status().is_some(), "{}: {}", pod.name, o.summary());
    }
    // Meshed calls still use mTLS.
    let o = mesh
        .call(&from_workload("api-gateway", "auth-service", "/health"))
        .await
        .unwrap();
    assert_eq!(
        o.json().unwrap()["caller"],
        "spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa"
    );
}

#[tokio::test]
async fn a_virtual_service_change_applies_without_restarting_envoy() {
    let dir = mesh_copy(|_, text| text);
    let target = start(dir.path()).await;
    let mesh = target.mesh().expect("owned mesh");
    let pids = mesh.envoy_pids();
    let token = bearer(&target, TokenSpec::new("live", Tier::Enterprise)).await;
    let versions = |n: usize| {
        let token = token.clone();
        let target = &target;
        async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let o = target
                    .call(&ingress("/api/v1/airtable/bases").header("authorization", &token))
                    .await
                    .unwrap();
                // The echo comes from airtable-gateway; api-gateway's version is in the forwarder's pod name.
                seen.push(
                    o.header("x-meshtest-forwarded-by")
                        .unwrap_or("none")
                        .to_string(),
                );
            }
            seen
        }
    };
    assert!(
        versions(10)
            .await
            .iter()
            .any(|p| !p.starts_with("api-gateway-canary")),
        "stable should serve most traffic"
    );

    // Shift the default route to 0/100: every request now lands on the canary.
    let traffic = std::fs::read_to_string(dir.path().join("traffic.yaml")).unwrap();
    let shifted = traffic
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    std::fs::write(dir.path().join("traffic.yaml"), shifted).unwrap();
    mesh.apply(Manifests::load_dir(dir.path()).unwrap())
        .await
        .unwrap();
    let seen = versions(20).await;
    assert!(
        seen.iter().all(|p| p.starts_with("api-gateway-canary")),
        "after the shift: {seen:?}"
    );
    assert_eq!(mesh.envoy_pids(), pids, "no Envoy was restarted");
}

#[tokio::test]
async fn stopping_the_mesh_leaves_no_process_behind() {
    let target = start(&support::pyairtable_dir()).await;
    let run_dir = target.state().run_dir.display().to_string();
    assert_eq!(
        processes_mentioning(&run_dir).len(),
        12,
        "11 sidecars + ingress gateway"
    );
    drop(target);
    assert!(
        eventually(Duration::from_secs(5), || async {
            processes_mentioning(&run_dir).is_empty()
        })
        .await,
        "leftover: {:?}",
        processes_mentioning(&run_dir)
    );
}

#[tokio::test]
async fn agent_faults_show_through_the_mesh_and_clear() {
    use meshtest::agent::Fault;
    let dir = mesh_copy(|_, text| text);
    let mesh = start(dir.path()).await;
    let call = || from_workload("api-gateway-0", "file-processor", "/upload");
    let fault = |f: Fault| {
        let mesh = &mesh;
        async move { mesh.set_fault("file-processor-0", f).await.unwrap() }
    };

    fault(Fault::status(418)).await;
    assert_eq!(mesh.call(&call()).await.unwrap().status(), Some(418));

    // A closed connection becomes Envoy's 503 to the caller.
    fault(Fault::close()).await;
    let o = mesh.call(&call()).await.unwrap();
    assert_eq!(o.status(), Some(503), "{}", o.summary());
    assert!(
        o.body().is_some_and(
            |b| b.contains("upstream connect error or disconnect/reset before headers")
        ),
        "{}",
        o.summary()
    );

    fault(Fault::delay_ms(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(mesh.call(&call()).await.unwrap().status(), Some(200));
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A hang outlasts the caller's deadline; the caller sees its own timeout.
    fault(Fault::hang()).await;
    let mut hung = call();
    hung.timeout = Duration::from_millis(500);
    let o = mesh.call(&hung).await.unwrap();
    assert!(matches!(o, Outcome::Timeout { .. }), "{}", o.summary());

    fault(Fault::default()).await;
    assert_eq!(mesh.call(&call()).await.unwrap().status(), Some(200));
}
