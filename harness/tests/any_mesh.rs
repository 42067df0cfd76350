//! Meshes shaped unlike PyAirtable's: the bookstore with its own suite, an unmodified
//! Bookinfo-shaped mesh with Gateway API ingress, and `meshtest derive` round trips (on the
//! bookstore and on PyAirtable's circuit breakers). Binary
//! tests run the real `meshtest` in a temp dir and print command, cwd, stdout and stderr.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use meshtest::outcome::Outcome;
use meshtest::target::{Call, From, Target, Transport};
use support::{mesh_copy_of, only};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bookstore() -> PathBuf {
    root().join("mesh/bookstore")
}

fn run(args: &[&str], code: i32) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(args)
        .current_dir(cwd.path())
        .env("MESHTEST_STATE_DIR", cwd.path().join("state"));
    let out = support::output_within(&mut cmd, support::COMMAND_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "command: meshtest {}\ncwd: {}\nexit: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        cwd.path().display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `feature`'s scenarios matching `name` against a copy of `mesh` whose `file` is edited:
/// it must exit 1 with exactly `broken` of them BROKEN. Returns the output.
fn breaks_after(
    mesh: &Path,
    file: &'static str,
    edit: impl Fn(String) -> String,
    feature: &Path,
    name: &str,
    broken: usize,
) -> String {
    let loose = mesh_copy_of(mesh, only(file, edit));
    let out = run(
        &["run", "--mesh", s(loose.path()), s(feature), "--name", name],
        1,
    );
    assert!(
        out.contains(&format!(" {broken} broken")),
        "{name}: expected {broken} BROKEN:\n{out}"
    );
    out
}

#[test]
fn the_bookstore_suite_holds_and_a_loosened_policy_breaks_it() {
    let features = bookstore().join("features");
    run(&["run", "--mesh", s(&bookstore()), s(&features)], 0);
    let loose = mesh_copy_of(
        &bookstore(),
        only("security.yaml", |t| {
            t.replace(
                "principals: [\"cluster.local/ns/store/sa/orders\"]",
                "principals: [\"cluster.local/ns/store/sa/orders\", \"cluster.local/ns/store/sa/storefront\"]",
            )
        }),
    );
    let out = run(&["run", "--mesh", s(loose.path()), s(&features)], 1);
    assert!(
        out.contains("storefront calling payments:7000 at /charges is denied by RBAC"),
        "{out}"
    );
}

#[test]
fn the_bookstore_egress_scenarios_break_when_a_sidecar_is_loosened() {
    let features = bookstore().join("features");
    let cases = [
        (
            // The accounts proxy lets unknown calls out instead of answering 502.
            "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            "",
            "A sidecar reaches only its Sidecar's egress hosts; REGISTRY_ONLY refuses the rest itself",
        ),
        (
            // The cache's proxy is programmed for every service of its namespace.
            "  workloadSelector: {labels: {app: cache}}\n  egress:\n  - hosts: [./orders.store.svc.cluster.local]",
            "  workloadSelector: {labels: {app: cache}}\n  egress:\n  - hosts: [./*]",
            "With ALLOW_ANY a call outside the egress hosts leaves in plaintext, and STRICT refuses it",
        ),
    ];
    for (from, to, scenario) in cases {
        let name = format!("^{}$", regex_escape(scenario));
        let edit = |t: String| {
            assert!(t.contains(from), "egress.yaml no longer has {from:?}");
            t.replace(from, to)
        };
        breaks_after(&bookstore(), "egress.yaml", edit, &features, &name, 1);
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn a_derived_suite_holds_on_its_mesh_and_breaks_when_a_policy_is_loosened() {
    let out_dir = tempfile::tempdir().unwrap();
    let derived = run(
        &[
            "derive",
            "--mesh",
            s(&bookstore()),
            "--out",
            s(out_dir.path()),
        ],
        0,
    );
    assert!(derived.contains("authorization.feature"), "{derived}");
    let matrix = std::fs::read_to_string(out_dir.path().join("authorization.feature")).unwrap();
    let row = |caller: &str, callee: &str, path: &str| {
        matrix
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells.get(1..4) == Some(&[caller, callee, path][..])
            })
            .unwrap_or_else(|| panic!("no row {caller} {callee} {path}:\n{matrix}"))
            .to_string()
    };
    assert!(
        row("storefront", "catalog:9090", "/admin/meshtest-probe")
            .contains("denied by store/catalog-admin")
    );
    assert!(
        row("payments", "catalog:9090", "/health").contains("no rule of store/catalog matches")
    );
    assert!(row("storefront", "catalog:9090", "/health").contains("allowed by store/catalog"));
    run(&["run", "--mesh", s(&bookstore()), s(out_dir.path())], 0);
    // The DENY rule on the catalog's admin paths, gone.
    let loose = mesh_copy_of(
        &bookstore(),
        only("security.yaml", |t| {
            t.replace(
                "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin/*\"]}}]\n",
                "  action: DENY\n  rules: []\n",
            )
        }),
    );
    let out = run(&["run", "--mesh", s(loose.path()), s(out_dir.path())], 1);
    assert!(
        out.contains("BROKEN promise \"Authorization as the AuthorizationPolicies decide it\""),
        "{out}"
    );
    assert!(
        out.contains("catalog:9090 at /admin/meshtest-probe is denied by RBAC"),
        "{out}"
    );
    // The gateway reads its tokens from another header: the same issuer, but a bearer token is
    // never checked, so invalid ones reach the policies instead of being refused.
    let unchecked_tokens = mesh_copy_of(
        &bookstore(),
        only("security.yaml", |t| {
            t.replacen(
                "  - issuer: https://accounts.store.example\n",
                "  - issuer: https://accounts.store.example\n    fromHeaders: [{name: x-store-token}]\n",
                1,
            )
        }),
    );
    let jwt = out_dir.path().join("jwt.feature");
    let out = run(&["run", "--mesh", s(unchecked_tokens.path()), s(&jwt)], 1);
    assert!(out.contains("expected HTTP 401"), "{out}");
    assert!(
        out.contains("BROKEN promise \"The gateway refuses invalid tokens as its RequestAuthentication declares\""),
        "{out}"
    );
}

#[test]
fn derived_circuit_breakers_fault_gates_and_rate_limits_break_when_loosened() {
    let out_dir = tempfile::tempdir().unwrap();
    let pyairtable = support::pyairtable_dir();
    run(
        &[
            "derive",
            "--mesh",
            s(&pyairtable),
            "--out",
            s(out_dir.path()),
        ],
        0,
    );
    let feature = out_dir.path().join("circuit_breakers.feature");
    let text = std::fs::read_to_string(&feature).unwrap();
    assert!(
        text.contains(
            "When api-gateway-0 fills auth-service's connection pool one request at a time"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "Then Envoy on api-gateway-0 has ejected airtable-gateway-0 from airtable-gateway"
        ),
        "{text}"
    );
    // auth-service's pool and the table, as derived, on the mesh they came from...
    let name = "^(Every DestinationRule declares these traffic policies|auth-service's connection pool.*|A replica of airtable-gateway .*)$";
    run(
        &["run", "--mesh", s(&pyairtable), s(&feature), "--name", name],
        0,
    );
    // ... and after auth-service's pool grows by one connection.
    let grown = |t: String| {
        let at = t
            .find("name: auth-service")
            .expect("auth-service's DestinationRule");
        let (head, tail) = t.split_at(at);
        format!(
            "{head}{}",
            tail.replacen("maxConnections: 50", "maxConnections: 51", 1)
        )
    };
    breaks_after(&pyairtable, "traffic.yaml", grown, &feature, name, 2);
    // The chaos-testing route without its header gate: requests without it get its faults.
    let ungated = |t: String| {
        t.replacen(
            "  - name: chaos-testing\n    match:\n    - headers:\n        x-chaos-test:\n          exact: enabled\n",
            "  - name: chaos-testing\n",
            1,
        )
    };
    let faults = out_dir.path().join("faults.feature");
    breaks_after(
        &pyairtable,
        "traffic.yaml",
        ungated,
        &faults,
        "^Without x-chaos-test",
        1,
    );
    // The free tier's bucket one request deeper than derived: its declared-bucket step fails.
    let deeper = |t: String| t.replacen("max_tokens: 100\n", "max_tokens: 101\n", 1);
    let limits = out_dir.path().join("rate_limits.feature");
    breaks_after(
        &pyairtable,
        "ratelimit.yaml",
        deeper,
        &limits,
        "^A free-tier tenant",
        1,
    );
}

/// Shaped like Istio's Bookinfo sample: unmodified images on port 9080 in `default`, Gateway
/// API ingress, a mesh-wide STRICT PeerAuthentication and one ALLOW policy.
const UNMODIFIED: &str = r#"# An application nobody wrote for meshtest.
apiVersion: v1
kind: Service
metadata: {name: details, labels: {app: details}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: details}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: app-details}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: details-v1}
spec:
  selector: {matchLabels: {app: details, version: v1}}
  template:
    metadata: {labels: {app: details, version: v1}}
    spec:
      serviceAccountName: app-details
      containers:
      - name: details
        image: docker.io/example/details:1.20.1
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 9080}]
        securityContext: {runAsUser: 1000}
---
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: productpage}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: productpage-v1}
spec:
  selector: {matchLabels: {app: productpage}}
  template:
    metadata:
      labels: {app: productpage, version: v1}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      containers:
      - name: productpage
        image: docker.io/example/productpage:1.20.1
        ports: [{containerPort: 9080}]
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: books.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages}
spec:
  parentRefs: [{name: edge}]
  hostnames: [books.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /productpage}}, {path: {type: PathPrefix, value: /static}}]
    backendRefs: [{name: productpage, port: 9080}]
---
# A second route for the same host: Istio merges them into one virtual host.
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: details-grpc}
spec:
  parentRefs: [{name: edge}]
  hostnames: [books.example.com]
  rules:
  - matches: [{method: {service: books.Details}}]
    backendRefs: [{name: details, port: 9080}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-from-productpage}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/default, cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account]}}]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {LOG_LEVEL: info}
"#;

fn status(o: &Outcome) -> Option<u16> {
    o.status()
}

#[tokio::test]
async fn an_unmodified_mesh_with_gateway_api_ingress_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.yaml"), UNMODIFIED).unwrap();
    let mesh = support::start(dir.path()).await;
    let call = |from: From, to: &str, path: &str| Call::new(from, to, path);
    // Between workloads, on their real port, through stand-in agents.
    let o = mesh
        .call(&call(
            From::Workload("productpage".into()),
            "details:9080",
            "/details/0",
        ))
        .await
        .unwrap();
    assert_eq!(status(&o), Some(200), "{o:?}");
    assert!(o.body().unwrap().contains("\"port\": 9080"), "{o:?}");
    // Only productpage (the default service account) may call details.
    let o = mesh
        .call(&call(
            From::Workload("details".into()),
            "details",
            "/details/0",
        ))
        .await
        .unwrap();
    assert_eq!(
        (status(&o), o.body()),
        (Some(403), Some("RBAC: access denied"))
    );
    // The ingress answers on the Gateway's host; PathPrefix matches whole segments.
    for (path, want) in [
        ("/productpage", 200),
        ("/static/app.css", 200),
        ("/staticx", 404),
    ] {
        let o = mesh
            .call(&call(From::Ingress { https: false }, "productpage", path))
            .await
            .unwrap();
        assert_eq!(status(&o), Some(want), "{path}: {o:?}");
    }
    let o = mesh
        .call(&call(
            From::Ingress { https: false },
            "productpage",
            "/productpage",
        ))
        .await
        .unwrap();
    assert!(o.body().unwrap().contains("books.example.com"), "{o:?}");
    let via = From::Ingress { https: false };
    let o = mesh
        .call(&call(via, "details", "/books.Details/Get"))
        .await
        .unwrap();
    assert!(
        o.body().unwrap().contains("\"service\": \"details\""),
        "{o:?}"
    );
    // STRICT: plaintext gets no HTTP answer.
    let o = mesh
        .call(&call(From::Outside(Transport::Plaintext), "details", "/"))
        .await
        .unwrap();
    assert!(status(&o).is_none(), "{o:?}");
}
