//! Each conformance feature proves it can fail: `meshtest run` against a copy of the mesh that
//! breaks exactly that promise must exit 1 and name the promise with its evidence. (The intact
//! mesh passing every feature is the `conformance` test.)

mod support;

use std::path::Path;
use std::process::Command;

use support::{mesh_copy, only};

/// Runs one feature against a broken mesh; asserts exit 1, the promise named, and the evidence.
fn assert_breaks(
    feature: &str,
    promise: &str,
    evidence: &str,
    edit: impl Fn(&str, String) -> String,
) {
    let mesh = mesh_copy(edit);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reports = tempfile::tempdir().unwrap();
    let args = [
        "run".to_string(),
        root.join("features").join(feature).display().to_string(),
        "--mesh".into(),
        mesh.path().display().to_string(),
        "--report-dir".into(),
        reports.path().display().to_string(),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_meshtest"))
        .args(&args)
        .current_dir(&root)
        .output()
        .expect("running meshtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let explain = format!(
        "command: meshtest {}\ncwd: {}\nexit: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        root.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the broken mesh should fail {feature}\n{explain}"
    );
    assert!(
        stdout.contains(&format!("FAILED promise \"{promise}\"")),
        "the failed promise is not named\n{explain}"
    );
    assert!(
        stdout.contains(evidence),
        "the evidence {evidence:?} is missing\n{explain}"
    );
    let junit = std::fs::read_to_string(reports.path().join("junit.xml")).expect("junit.xml");
    assert!(junit.contains("<failure"), "junit.xml records no failure");
    assert!(
        reports.path().join("cucumber.json").is_file()
            && reports.path().join("summary.txt").is_file()
    );
}

#[test]
fn permissive_mtls_breaks_the_mtls_promise() {
    assert_breaks(
        "mtls.feature",
        "STRICT mTLS",
        "answered plaintext",
        only("security.yaml", |t| {
            t.replace("mode: STRICT", "mode: PERMISSIVE")
        }),
    );
}

#[test]
fn auth_service_open_to_everyone_breaks_authorization() {
    let open = |t: String| {
        t.replace(
            "principals: [\"cluster.local/ns/pyairtable/sa/api-gateway-sa\"]\n---\n# api-gateway",
            "principals: [\"*\"]\n---\n# api-gateway",
        )
    };
    assert_breaks(
        "authz.feature",
        "Least-privilege authorization",
        "expected 403 \"RBAC: access denied\", got HTTP 200",
        only("security.yaml", open),
    );
}

#[test]
fn jwt_not_required_breaks_jwt_enforcement() {
    let optional = |t: String| {
        t.replace(
            "  - from:\n    - source:\n        requestPrincipals: [\"*\"]\n    to:\n",
            "  - to:\n",
        )
    };
    assert_breaks(
        "jwt.feature",
        "JWT enforcement at the edge",
        "expected HTTP 403, got HTTP 200",
        only("security.yaml", optional),
    );
}

#[test]
fn no_rate_limit_breaks_the_tenant_limits() {
    assert_breaks(
        "rate_limit.feature",
        "Per-tenant rate limits by tier",
        "was never limited",
        only("ratelimit.yaml", |_| String::new()),
    );
}

#[test]
fn no_outlier_detection_breaks_the_circuit_breaker() {
    // Drop every `outlierDetection:` block (the key and everything indented under it).
    let strip = |t: String| {
        let mut out = String::new();
        let mut skipping = false;
        for line in t.lines() {
            if line.trim_end() == "    outlierDetection:" {
                skipping = true;
                continue;
            }
            if skipping && line.starts_with("      ") {
                continue;
            }
            skipping = false;
            out.push_str(line);
            out.push('\n');
        }
        out
    };
    assert_breaks(
        "circuit_breaker.feature",
        "Circuit breakers",
        "did not eject airtable-gateway-0",
        only("traffic.yaml", strip),
    );
}

#[test]
fn a_fifty_fifty_split_breaks_the_canary() {
    let even = |t: String| {
        t.replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50")
    };
    assert_breaks(
        "canary.feature",
        "Canary routing at the edge",
        "the declared weight is outside the interval",
        only("traffic.yaml", even),
    );
}

#[test]
fn faults_without_the_header_match_break_the_routing_promise() {
    let unguarded = |t: String| {
        t.replace("    match:\n    - headers:\n        x-chaos-test:\n          exact: enabled\n    fault:", "    fault:")
    };
    assert_breaks(
        "routing.feature",
        "Timeouts, retries and fault injection",
        "expected all 50 responses to be 200",
        only("traffic.yaml", unguarded),
    );
}

#[test]
fn a_slow_edge_route_breaks_the_latency_slo() {
    let slow = |t: String| {
        t.replace(
            "  - name: default\n    route:",
            "  - name: default\n    fault:\n      delay:\n        percentage:\n          value: 100\n        fixedDelay: 1500ms\n    route:",
        )
    };
    assert_breaks(
        "latency.feature",
        "Latency within the SLO",
        "the limit is 1000 ms",
        only("traffic.yaml", slow),
    );
}
