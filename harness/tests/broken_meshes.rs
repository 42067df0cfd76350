//! Every scenario proves it can fail: `meshtest run` against a copy of the mesh that breaks the
//! promise it checks must exit 1 with that scenario BROKEN (not just its feature), the promise
//! named, and the evidence in the report. Many breaks change one declared number by a little;
//! others change behaviour the declared values do not show. `every_scenario_is_proven_able_to_fail`
//! keeps the table complete. (The intact mesh passing every scenario is the `conformance` test.)

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{mesh_copy, pyairtable_dir};

/// One broken mesh and the scenarios it must break.
struct Break {
    /// What is broken, as the README's table says it.
    what: &'static str,
    file: &'static str,
    edit: fn(String) -> String,
    feature: &'static str,
    /// Run the @slow scenarios (their pinned declared values fail fast).
    slow: bool,
    /// Anchored patterns over scenario names: each matches at least one scenario, and every
    /// scenario it matches must be BROKEN.
    scenarios: &'static [&'static str],
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the break's scenarios against its mesh and checks each is BROKEN.
fn assert_breaks(b: &Break) {
    let mesh = mesh_copy(|name, text| if name == b.file { (b.edit)(text) } else { text });
    let original = std::fs::read_to_string(pyairtable_dir().join(b.file)).unwrap();
    let edited = std::fs::read_to_string(mesh.path().join(b.file)).unwrap();
    assert_ne!(original, edited, "{}: the edit changed nothing", b.what);
    let reports = tempfile::tempdir().unwrap();
    let name = format!("^({})$", b.scenarios.join("|"));
    let mut args = vec![
        "run".to_string(),
        root()
            .join("features")
            .join(b.feature)
            .display()
            .to_string(),
        "--mesh".into(),
        mesh.path().display().to_string(),
        "--report-dir".into(),
        reports.path().display().to_string(),
        "--name".into(),
        name,
    ];
    if b.slow {
        args.push("--slow".into());
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(&args).current_dir(root());
    let out = support::output_within(&mut cmd, support::COMMAND_DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let explain = format!(
        "break: {}\ncommand: meshtest {}\ncwd: {}\nexit: {:?}\nstdout (tail):\n{}\nstderr:\n{}",
        b.what,
        args.join(" "),
        root().display(),
        out.status.code(),
        stdout
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "should exit 1 (broken)\n{explain}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    let scenarios = summary["scenarios"].as_array().expect("scenarios");
    for pattern in b.scenarios {
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        let matched: Vec<&serde_json::Value> = scenarios
            .iter()
            .filter(|s| re.is_match(s["scenario"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            !matched.is_empty(),
            "no scenario matches {pattern:?}\n{explain}"
        );
        for s in matched {
            assert_eq!(
                s["verdict"], "BROKEN",
                "scenario {:?} should be BROKEN: {}\n{explain}",
                s["scenario"], s["message"]
            );
            assert!(
                s["message"].as_str().is_some_and(|m| !m.is_empty()),
                "no evidence for {:?}\n{explain}",
                s["scenario"]
            );
            let promise = format!("BROKEN promise \"{}\"", s["feature"].as_str().unwrap());
            assert!(
                stdout.contains(&promise),
                "the promise is not named\n{explain}"
            );
        }
    }
    let junit = std::fs::read_to_string(reports.path().join("junit.xml")).expect("junit.xml");
    assert!(
        junit.contains("<failure type=\"BROKEN\""),
        "junit.xml records no failure"
    );
}

// ---- edits ----

/// Applies `f` to the YAML documents of `kind` named `name`.
fn in_doc(text: &str, kind: &str, name: &str, f: impl Fn(String) -> String) -> String {
    text.split("\n---\n")
        .map(|doc| {
            let ours = doc.contains(&format!("kind: {kind}\n"))
                && doc.contains(&format!("  name: {name}\n"));
            if ours {
                f(doc.to_string())
            } else {
                doc.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn replace_in(
    kind: &'static str,
    name: &'static str,
    from: &'static str,
    to: &'static str,
) -> impl Fn(String) -> String {
    move |t| in_doc(&t, kind, name, |d| d.replacen(from, to, 1))
}

/// Drops every block headed by `key:` at this indentation (the key and what is indented under it).
fn strip_block(text: &str, key_line: &str) -> String {
    let indent = key_line.len() - key_line.trim_start().len();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.trim_end() == key_line {
            skipping = true;
            continue;
        }
        let deeper = line.len() - line.trim_start().len() > indent;
        if skipping && deeper && !line.trim().is_empty() {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn principals_to(to: &'static str) -> impl Fn(String) -> String {
    move |t| {
        let list = regex::Regex::new(r#"(?m)^(\s+)principals:(?: \[[^\]]*\]|(?:\n\s+- "[^"]*")+)"#)
            .unwrap();
        list.replace_all(&t, format!("${{1}}principals: [\"{to}\"]").as_str())
            .into_owned()
    }
}

fn edge_route(
    name: &'static str,
    from: &'static str,
    to: &'static str,
) -> impl Fn(String) -> String {
    move |t| {
        let at = t.find(&format!("  - name: {name}\n")).expect("route");
        let (head, tail) = t.split_at(at);
        let end = tail[4..]
            .find("  - name: ")
            .map(|i| i + 4)
            .unwrap_or(tail.len());
        format!(
            "{head}{}{}",
            tail[..end].replacen(from, to, 1),
            &tail[end..]
        )
    }
}

const DELAY_100: &str = "    fault:\n      delay:\n        percentage:\n          value: 100\n        fixedDelay: 1500ms\n    route:";

const AUTH_RETRIES_40: &str = "---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: auth-service\n  namespace: pyairtable\nspec:\n  hosts:\n  - auth-service.pyairtable.svc.cluster.local\n  http:\n  - route:\n    - destination:\n        host: auth-service.pyairtable.svc.cluster.local\n    retries:\n      attempts: 40\n      retryOn: connect-failure,refused-stream\n";

macro_rules! breaks {
    ($($test:ident: $b:expr;)*) => {
        $(#[test] fn $test() { assert_breaks(&$b); })*
        const ALL: &[(&str, fn() -> Break)] = &[$((stringify!($test), || $b)),*];
    };
}

breaks! {
    namespace_permissive: Break {
        what: "the namespace-wide PeerAuthentication is PERMISSIVE",
        file: "security.yaml",
        edit: |t| replace_in("PeerAuthentication", "default-strict-mtls", "mode: STRICT", "mode: PERMISSIVE")(t),
        feature: "mtls.feature",
        slow: false,
        scenarios: &["Every pod port answers plaintext only if its declared mode allows it", "A client presenting a certificate from another CA is rejected"],
    };
    auth_service_permissive: Break {
        what: "auth-service's own PeerAuthentication is PERMISSIVE",
        file: "security.yaml",
        edit: |t| replace_in("PeerAuthentication", "auth-service-jwks-port", "mode: STRICT", "mode: PERMISSIVE")(t),
        feature: "mtls.feature",
        slow: false,
        scenarios: &["Every pod port answers plaintext only if its declared mode allows it", "Plaintext to auth-service is refused by its live proxy", "A TLS client without a certificate is rejected"],
    };
    callers_send_plaintext: Break {
        what: "DestinationRules tell callers to send plaintext (tls mode DISABLE) to auth-service, airtable-gateway and llm-orchestrator",
        file: "traffic.yaml",
        edit: |t| ["auth-service", "airtable-gateway", "llm-orchestrator"].iter().fold(t, |t, s| in_doc(&t, "DestinationRule", s, |d| d.replace("mode: ISTIO_MUTUAL", "mode: DISABLE"))),
        feature: "mtls.feature",
        slow: false,
        scenarios: &["Meshed calls carry the caller's SPIFFE identity"],
    };
    authz_opened: Break {
        what: "every principals list is opened to any mesh identity",
        file: "security.yaml",
        edit: |t| principals_to("*")(t),
        feature: "authz.feature",
        slow: false,
        scenarios: &[".* is denied by RBAC"],
    };
    authz_closed: Break {
        what: "every principals list names an identity that does not exist",
        file: "security.yaml",
        edit: |t| principals_to("cluster.local/ns/nobody/sa/nobody")(t),
        feature: "authz.feature",
        slow: false,
        scenarios: &[".* is allowed"],
    };
    key_set_port_open: Break {
        what: "auth-service's key-set port serves every path",
        file: "security.yaml",
        edit: |t| replace_in("AuthorizationPolicy", "auth-service-access", "\n        paths: [\"/.well-known/jwks.json\"]", "")(t),
        feature: "authz.feature",
        slow: false,
        scenarios: &["auth-service's key-set port serves the key set to anyone, and nothing else"],
    };
    health_needs_token: Break {
        what: "/health needs a token (its open rule is gone)",
        file: "security.yaml",
        edit: |t| t.replace("  - to:\n    - operation:\n        paths: [\"/health\", \"/health/*\"]\n", ""),
        feature: "jwt.feature",
        slow: false,
        scenarios: &["/health needs no token"],
    };
    llm_area_open: Break {
        what: "one API area (/api/v1/llm/) is open without a token",
        file: "security.yaml",
        edit: |t| t.replace("paths: [\"/health\", \"/health/*\"]", "paths: [\"/health\", \"/health/*\", \"/api/v1/llm/*\"]"),
        feature: "jwt.feature",
        slow: false,
        scenarios: &["Every API route refuses a request without a token"],
    };
    jwt_not_required: Break {
        what: "the edge does not require a request principal on /api/*",
        file: "security.yaml",
        edit: |t| t.replace("  - from:\n    - source:\n        requestPrincipals: [\"*\"]\n    to:\n", "  - to:\n"),
        feature: "jwt.feature",
        slow: false,
        scenarios: &["Every API route refuses a request without a token", "A request to the API without a token is denied by RBAC"],
    };
    other_issuer: Break {
        what: "the RequestAuthentication trusts another issuer",
        file: "security.yaml",
        edit: |t| t.replace("issuer: \"pyairtable-auth\"", "issuer: \"someone-else\""),
        feature: "jwt.feature",
        slow: false,
        scenarios: &["A valid token passes, through two mTLS hops"],
    };
    no_request_authentication: Break {
        what: "no RequestAuthentication at the edge",
        file: "security.yaml",
        edit: |t| in_doc(&t, "RequestAuthentication", "pyairtable-jwt-auth", |_| "# removed\n".into()),
        feature: "jwt.feature",
        slow: false,
        scenarios: &["An expired token is refused", "A token from another issuer is refused", "A token signed with another key is refused", "A token whose payload was edited after signing is refused", "A bearer value that is not a JWT is refused"],
    };
    free_bucket_150: Break {
        what: "the free tier's bucket is 150",
        file: "ratelimit.yaml",
        edit: |t| t.replacen("max_tokens: 100\n", "max_tokens: 150\n", 1),
        feature: "rate_limit.feature",
        slow: false,
        scenarios: &["A free-tier tenant gets exactly its bucket before the first 429", "A tenant cannot raise its tier or borrow another tenant's bucket with headers"],
    };
    shared_buckets: Break {
        what: "the tenants of a tier share one bucket",
        file: "ratelimit.yaml",
        edit: |t| t
            .replace("            - request_headers:\n                header_name: x-tenant-id\n                descriptor_key: tenant\n", "")
            .replace("            - key: tenant\n              value: \"\"\n", ""),
        feature: "rate_limit.feature",
        slow: false,
        scenarios: &["One free tenant's exhaustion does not limit another free tenant"],
    };
    pro_bucket_1200: Break {
        what: "the pro tier's bucket is 1200",
        file: "ratelimit.yaml",
        edit: |t| t.replacen("max_tokens: 1000\n", "max_tokens: 1200\n", 1),
        feature: "rate_limit.feature",
        slow: false,
        scenarios: &["A pro-tier tenant gets exactly its higher bucket"],
    };
    enterprise_bucket_12000: Break {
        what: "the enterprise tier's bucket is 12000",
        file: "ratelimit.yaml",
        edit: |t| t.replacen("max_tokens: 10000\n", "max_tokens: 12000\n", 1),
        feature: "rate_limit.feature",
        slow: true,
        scenarios: &["An enterprise-tier tenant gets exactly its bucket", "Every tier's bucket is declared as the tiers promise"],
    };
    enterprise_refill_30s: Break {
        what: "the enterprise tier refills every 30s",
        file: "ratelimit.yaml",
        edit: |t| {
            let at = t.find("value: enterprise").unwrap();
            format!("{}{}", &t[..at], t[at..].replacen("fill_interval: 60s", "fill_interval: 30s", 1))
        },
        feature: "rate_limit.feature",
        slow: false,
        scenarios: &["Every tier's bucket is declared as the tiers promise"],
    };
    tier_from_the_client: Break {
        what: "the tier header is not set from the verified token (a client's own x-tenant-tier passes)",
        file: "security.yaml",
        edit: |t| t.replace("    - header: x-tenant-tier\n      claim: tier\n", ""),
        feature: "rate_limit.feature",
        slow: false,
        scenarios: &["A tenant cannot raise its tier or borrow another tenant's bucket with headers"],
    };
    pool_60_connections: Break {
        what: "auth-service's pool is 60 connections",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "auth-service", "maxConnections: 50", "maxConnections: 60")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["The connection pool takes exactly its declared connections and pending requests, and sheds the next"],
    };
    pending_80: Break {
        what: "auth-service's pending queue is 80",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "auth-service", "http1MaxPendingRequests: 50", "http1MaxPendingRequests: 80")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["The connection pool takes exactly its declared connections and pending requests, and sheds the next"],
    };
    no_destination_rule: Break {
        what: "auth-service has no DestinationRule",
        file: "traffic.yaml",
        edit: |t| in_doc(&t, "DestinationRule", "auth-service", |_| "# removed\n".into()),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["The connection pool takes exactly its declared connections and pending requests, and sheds the next"],
    };
    airtable_ten_per_connection: Break {
        what: "airtable-gateway allows 10 requests per connection",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "airtable-gateway", "maxRequestsPerConnection: 5", "maxRequestsPerConnection: 10")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["Every service's DestinationRule declares the seed's circuit breakers"],
    };
    canary_subset_pool: Break {
        what: "api-gateway's canary subset has its own pool of 60 connections",
        file: "traffic.yaml",
        edit: |t| {
            replace_in(
                "DestinationRule",
                "api-gateway",
                "  - name: canary\n    labels:\n      version: v2",
                "  - name: canary\n    labels:\n      version: v2\n    trafficPolicy:\n      connectionPool:\n        tcp:\n          maxConnections: 60",
            )(t)
        },
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["Every service's DestinationRule declares the seed's circuit breakers"],
    };
    round_robin_llm: Break {
        what: "llm-orchestrator is balanced round robin",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "llm-orchestrator", "simple: LEAST_REQUEST", "simple: ROUND_ROBIN")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["Every service's DestinationRule declares the seed's circuit breakers"],
    };
    ten_per_connection: Break {
        what: "file-processor allows 10 requests per connection",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "file-processor", "maxRequestsPerConnection: 5", "maxRequestsPerConnection: 10")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["A connection carries at most its declared number of requests"],
    };
    four_gateway_errors: Break {
        what: "airtable-gateway ejects after 4 consecutive gateway errors",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "airtable-gateway", "consecutiveGatewayErrors: 3", "consecutiveGatewayErrors: 4")(t),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["A replica is ejected at exactly its declared number of consecutive gateway errors", "With every replica failing, no more replicas are ejected than the declared percentage allows"],
    };
    envoy_ejection_percent: Break {
        what: "maxEjectionPercent is left at Envoy's 10% (detected ejections are never enforced on 3 replicas)",
        file: "traffic.yaml",
        edit: |t| t.replace("      maxEjectionPercent: 50\n", ""),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["A replica is ejected at exactly its declared number of consecutive gateway errors", "With every replica failing, no more replicas are ejected than the declared percentage allows"],
    };
    no_outlier_detection: Break {
        what: "no outlier detection",
        file: "traffic.yaml",
        edit: |t| strip_block(&t, "    outlierDetection:"),
        feature: "circuit_breaker.feature",
        slow: false,
        scenarios: &["A replica is ejected at exactly its declared number of consecutive gateway errors", "With every replica failing, no more replicas are ejected than the declared percentage allows"],
    };
    base_ejection_60s: Break {
        what: "airtable-gateway ejects for 60s",
        file: "traffic.yaml",
        edit: |t| replace_in("DestinationRule", "airtable-gateway", "baseEjectionTime: 30s", "baseEjectionTime: 60s")(t),
        feature: "circuit_breaker.feature",
        slow: true,
        scenarios: &["An ejected replica returns after the declared base ejection time"],
    };
    edge_timeout_60s: Break {
        what: "the edge's default route times out after 60s",
        file: "traffic.yaml",
        edit: |t| edge_route("default", "timeout: 30s", "timeout: 60s")(t),
        feature: "timeouts.feature",
        slow: true,
        scenarios: &["Every proxy carries the timeouts its VirtualServices declare", "A hung api-gateway is cut off at the edge's declared 30 s"],
    };
    shadowing_route: Break {
        what: "a catch-all route without a timeout shadows the edge's default route",
        file: "traffic.yaml",
        edit: |t| t.replacen("  - name: default\n", "  - name: shadow\n    route:\n    - destination:\n        host: api-gateway.pyairtable.svc.cluster.local\n        subset: stable\n  - name: default\n", 1),
        feature: "timeouts.feature",
        slow: false,
        scenarios: &["A hung upstream is cut off at the route's timeout"],
    };
    airtable_timeout_60s: Break {
        what: "airtable-gateway's route times out after 60s",
        file: "traffic.yaml",
        edit: |t| replace_in("VirtualService", "airtable-gateway", "timeout: 30s", "timeout: 60s")(t),
        feature: "timeouts.feature",
        slow: true,
        scenarios: &["Every proxy carries the timeouts its VirtualServices declare", "A hung airtable-gateway is cut off at its declared 30 s"],
    };
    llm_timeout_240s: Break {
        what: "llm-orchestrator's route times out after 240s",
        file: "traffic.yaml",
        edit: |t| replace_in("VirtualService", "llm-orchestrator", "timeout: 120s", "timeout: 240s")(t),
        feature: "timeouts.feature",
        slow: true,
        scenarios: &["Every proxy carries the timeouts its VirtualServices declare", "A hung llm-orchestrator is cut off at its declared 120 s"],
    };
    airtable_retries_once: Break {
        what: "airtable-gateway's route retries once",
        file: "traffic.yaml",
        edit: |t| replace_in("VirtualService", "airtable-gateway", "attempts: 3", "attempts: 1")(t),
        feature: "retries.feature",
        slow: false,
        scenarios: &["A request to a failing airtable-gateway is attempted its declared retries plus once"],
    };
    airtable_default_retries: Break {
        what: "airtable-gateway's route declares no retries (Istio's default applies)",
        file: "traffic.yaml",
        edit: |t| in_doc(&t, "VirtualService", "airtable-gateway", |d| strip_block(&d, "    retries:")),
        feature: "retries.feature",
        slow: false,
        scenarios: &["A request to a failing airtable-gateway is attempted its declared retries plus once"],
    };
    llm_retries_5xx: Break {
        what: "llm-orchestrator's route also retries 5xx",
        file: "traffic.yaml",
        edit: |t| replace_in("VirtualService", "llm-orchestrator", "retryOn: connect-failure,refused-stream", "retryOn: 5xx,connect-failure,refused-stream")(t),
        feature: "retries.feature",
        slow: false,
        scenarios: &["A failure its route does not retry on is attempted once"],
    };
    edge_retries_once: Break {
        what: "the edge's default route retries once",
        file: "traffic.yaml",
        edit: |t| edge_route("default", "attempts: 3", "attempts: 1")(t),
        feature: "retries.feature",
        slow: false,
        scenarios: &["The edge retries a failing api-gateway its declared retries plus once"],
    };
    delay_2_percent: Break {
        what: "the chaos route delays 2% of requests",
        file: "traffic.yaml",
        edit: |t| edge_route("chaos-testing", "value: 1.0", "value: 2.0")(t),
        feature: "fault_injection.feature",
        slow: false,
        scenarios: &["With the opt-in header, the declared delay and abort rates hold"],
    };
    fault_without_header: Break {
        what: "the chaos route's fault applies without the header",
        file: "traffic.yaml",
        edit: |t| t.replace("    match:\n    - headers:\n        x-chaos-test:\n          exact: enabled\n    fault:", "    fault:"),
        feature: "fault_injection.feature",
        slow: false,
        scenarios: &["Without the header, no request is delayed or aborted"],
    };
    split_85_15: Break {
        what: "the canary split is 85/15",
        file: "traffic.yaml",
        edit: |t| t.replace("weight: 90", "weight: 85").replace("weight: 10", "weight: 15"),
        feature: "canary.feature",
        slow: false,
        scenarios: &["The 90/10 split holds", "Any other value of the header follows the split"],
    };
    llm_split_80_20: Break {
        what: "the LLM area's route splits 80/20",
        file: "traffic.yaml",
        edit: |t| edge_route("llm", "weight: 90", "weight: 80")(edge_route("llm", "weight: 10", "weight: 20")(t)),
        feature: "canary.feature",
        slow: false,
        scenarios: &["Every edge route sends the declared share to the canary"],
    };
    no_api_gateway_subsets: Break {
        what: "api-gateway's DestinationRule (and with it the stable and canary subsets) is gone",
        file: "traffic.yaml",
        edit: |t| in_doc(&t, "DestinationRule", "api-gateway", |_| "# removed\n".into()),
        feature: "canary.feature",
        slow: false,
        scenarios: &["The 90/10 split holds", "Every edge route sends the declared share to the canary", "Opting in by header always reaches the canary"],
    };
    opt_in_value_changed: Break {
        what: "the canary opt-in header must be `yes`",
        file: "traffic.yaml",
        edit: |t| edge_route("canary-opt-in", "exact: \"true\"", "exact: \"yes\"")(t),
        feature: "canary.feature",
        slow: false,
        scenarios: &["Opting in by header always reaches the canary"],
    };
    any_value_opts_in: Break {
        what: "any value of the opt-in header pins the canary",
        file: "traffic.yaml",
        edit: |t| edge_route("canary-opt-in", "exact: \"true\"", "regex: \".*\"")(t),
        feature: "canary.feature",
        slow: false,
        scenarios: &["Any other value of the header follows the split"],
    };
    slow_edge: Break {
        what: "the edge's default route delays every request 1.5 s",
        file: "traffic.yaml",
        edit: |t| t.replace("  - name: default\n    route:", &format!("  - name: default\n{DELAY_100}")),
        feature: "latency.feature",
        slow: false,
        scenarios: &["The edge answers within the SLO", "The API answers within the SLO across two mTLS hops"],
    };
    no_retries: Break {
        what: "no route retries (attempts 0 at the edge and on airtable-gateway)",
        file: "traffic.yaml",
        edit: |t| t.replace("      attempts: 3\n", "      attempts: 0\n"),
        feature: "resilience.feature",
        slow: false,
        scenarios: &["Retries hide a replica that fails every request, and outlier detection ejects it"],
    };
    no_airtable_outlier_detection: Break {
        what: "airtable-gateway's DestinationRule has no outlier detection",
        file: "traffic.yaml",
        edit: |t| in_doc(&t, "DestinationRule", "airtable-gateway", |d| strip_block(&d, "    outlierDetection:")),
        feature: "resilience.feature",
        slow: false,
        scenarios: &["Retries hide a replica that fails every request, and outlier detection ejects it"],
    };
    stable_subset_takes_the_canary: Break {
        what: "api-gateway's stable subset selects every version (the canary pod too)",
        file: "traffic.yaml",
        edit: |t| in_doc(&t, "DestinationRule", "api-gateway", |d| d.replace("  - name: stable\n    labels:\n      version: v1\n", "  - name: stable\n    labels:\n      app: api-gateway\n")),
        feature: "resilience.feature",
        slow: false,
        scenarios: &["A failing canary costs at most its declared weight, and stable traffic nothing"],
    };
    llm_edge_timeout_300ms: Break {
        what: "the edge's LLM route times out after 300 ms",
        file: "traffic.yaml",
        edit: |t| edge_route("llm", "timeout: 120s", "timeout: 300ms")(t),
        feature: "resilience.feature",
        slow: false,
        scenarios: &["Latency between api-gateway and llm-orchestrator stays within the LLM route"],
    };
    auth_retried_40_times: Break {
        what: "calls to auth-service retry connect failures 40 times (and its retry budget allows it)",
        file: "traffic.yaml",
        edit: |t| format!("{}{AUTH_RETRIES_40}", in_doc(&t, "DestinationRule", "auth-service", |d| d.replace("maxRetries: 3", "maxRetries: 1000"))),
        feature: "resilience.feature",
        slow: false,
        scenarios: &["The auth API fails fast while auth-service is down"],
    };
    error_alert_threshold_10x_high: Break {
        what: "the error-rate alert's threshold is 50%, not 5%",
        file: "observability.yaml",
        edit: |t| t.replace("        > 0.05\n", "        > 0.5\n"),
        feature: "observability.feature",
        slow: false,
        scenarios: &["The alerts page at the seed's thresholds"],
    };
    latency_alert_threshold_doubled: Break {
        what: "the latency alert pages above 2 s, not 1 s",
        file: "observability.yaml",
        edit: |t| t.replace("        > 1000\n", "        > 2000\n"),
        feature: "observability.feature",
        slow: false,
        scenarios: &["The alerts page at the seed's thresholds"],
    };
    error_alert_on_clean_traffic: Break {
        what: "the error-rate alert counts 2xx answers as errors",
        file: "observability.yaml",
        edit: |t| t.replace("response_code=~\"5..\"}[20s]", "response_code=~\"[25]..\"}[20s]"),
        feature: "observability.feature",
        slow: false,
        scenarios: &["Request counts and latencies agree with what the load generator saw, and clean traffic raises no alert"],
    };
    tracing_samples_nothing: Break {
        what: "the mesh's Telemetry samples 0% of requests for tracing",
        file: "observability.yaml",
        edit: |t| t.replace("randomSamplingPercentage: 100", "randomSamplingPercentage: 0"),
        feature: "observability.feature",
        slow: false,
        scenarios: &["A request keeps one trace id from the ingress to its backend, with a new span at each hop"],
    };
    access_log_without_tenant: Break {
        what: "the access log format has no tenant",
        file: "observability.yaml",
        edit: |t| t.replace("            tenant: \"%REQ(X-TENANT-ID)%\"\n", ""),
        feature: "observability.feature",
        slow: false,
        scenarios: &["Every proxy on a request's path logs it with the tenant, the route and the request id"],
    };
    slow_canary: Break {
        what: "the canary opt-in route delays every request 1.5 s",
        file: "traffic.yaml",
        edit: |t| edge_route("canary-opt-in", "    route:", DELAY_100.trim_start_matches('\n'))(t),
        feature: "latency.feature",
        slow: false,
        scenarios: &["The canary answers within the SLO"],
    };
}

/// The @slow alert breaks spend their minute waiting out `for:` windows, not computing: run
/// side by side in one test (one thread each) rather than two at a time with the others.
macro_rules! breaks_side_by_side {
    ($test:ident { $($name:ident: $b:expr;)* }) => {
        #[test]
        fn $test() {
            let handles: Vec<_> = [$((stringify!($name), (|| $b) as fn() -> Break)),*]
                .into_iter()
                .map(|(name, b)| {
                    std::thread::Builder::new()
                        .name(name.into())
                        .spawn(move || assert_breaks(&b()))
                        .expect("thread")
                })
                .collect();
            let failed: Vec<String> = handles
                .into_iter()
                .filter_map(|h| {
                    let name = h.thread().name().unwrap_or_default().to_string();
                    h.join().err().map(|_| name)
                })
                .collect();
            assert!(failed.is_empty(), "these breaks did not break: {failed:?} (their panics are above)");
        }
        const SIDE_BY_SIDE: &[(&str, fn() -> Break)] = &[$((stringify!($name), || $b)),*];
    };
}

breaks_side_by_side! {
    the_alert_breaks_each_fail_their_alert_scenario {
    error_alert_threshold_10x_low: Break {
        what: "the error-rate alert's threshold is 0.5%, not 5%",
        file: "observability.yaml",
        edit: |t| t.replace("        > 0.05\n", "        > 0.005\n"),
        feature: "observability.feature",
        slow: true,
        scenarios: &["The error-rate alert stays quiet at 3% errors, fires at 8%, and resolves when the errors stop"],
    };
    latency_alert_threshold_10x_low: Break {
        what: "the latency alert pages above 100 ms, not 1 s",
        file: "observability.yaml",
        edit: |t| t.replace("        > 1000\n", "        > 100\n"),
        feature: "observability.feature",
        slow: true,
        scenarios: &["The latency alert stays quiet at 600 ms, fires at 1.2 s, and resolves when answers are fast again"],
    };
    circuit_breaker_alert_on_the_wrong_flag: Break {
        what: "the circuit-breaker alert looks for UF (connection failure), not UO (overflow)",
        file: "observability.yaml",
        edit: |t| t.replace("response_flags=~\".*UO.*\"}[20s]", "response_flags=~\".*UF.*\"}[20s]"),
        feature: "observability.feature",
        slow: true,
        scenarios: &["The circuit-breaker alert fires when a caller's pool overflows, and resolves after"],
    };
    mtls_alert_counts_only_connection_errors: Break {
        what: "the mTLS alert counts only ssl.connection_error (a certificate from another CA fails verification instead)",
        file: "observability.yaml",
        edit: |t| {
            t.lines()
                .filter(|l| !l.contains("+ sum by (pod) (rate(envoy_listener_ssl_fail_verify"))
                .map(|l| format!("{l}\n"))
                .collect()
        },
        feature: "observability.feature",
        slow: true,
        scenarios: &["The mTLS alert fires when a client with another CA's certificate is refused, and resolves after"],
    };
    rate_limit_alert_on_503: Break {
        what: "the rate-limit alert counts 503s, not 429s",
        file: "observability.yaml",
        edit: |t| t.replace("response_code=\"429\"", "response_code=\"503\""),
        feature: "observability.feature",
        slow: true,
        scenarios: &["The rate-limit alert fires when a tenant is refused with 429, and resolves after"],
    };
    }
}

/// Every scenario of every feature (outline examples by their expanded names) is broken by
/// some break above.
#[test]
fn every_scenario_is_proven_able_to_fail() {
    let files = meshtest::conformance::validate::feature_files(&[root().join("features")]).unwrap();
    let features = meshtest::conformance::validate::validate(&files).unwrap();
    let breaks: Vec<Break> = ALL.iter().chain(SIDE_BY_SIDE).map(|(_, b)| b()).collect();
    let mut missing = Vec::new();
    for (f, path) in features.iter().zip(&files) {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for s in &f.scenarios {
            let mut names = meshtest::conformance::runner::expanded_names(s);
            if names.len() > 1 {
                names.remove(0); // an outline is its examples
            }
            for n in names {
                let covered = breaks.iter().any(|b| {
                    b.feature == file
                        && b.scenarios.iter().any(|p| {
                            regex::Regex::new(&format!("^(?:{p})$"))
                                .unwrap()
                                .is_match(&n)
                        })
                });
                if !covered {
                    missing.push(format!("{file}: {n}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "scenarios no broken mesh breaks:\n{}",
        missing.join("\n")
    );
}

/// The README's scenario x break table: `cargo test --test broken_meshes -- --ignored --nocapture break_table`.
#[test]
#[ignore]
fn break_table() {
    println!("| feature | scenario | broken mesh |\n|---|---|---|");
    for (_, b) in ALL.iter().chain(SIDE_BY_SIDE) {
        let b = b();
        for s in b.scenarios {
            println!(
                "| {} | {} | {}{} |",
                b.feature,
                s.replace('|', "\\|"),
                b.what,
                if b.slow { " (@slow)" } else { "" }
            );
        }
    }
}
