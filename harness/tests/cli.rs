//! The real `meshtest` binary in a temp dir, as a user runs it. Failures print the command,
//! its working directory, stdout and stderr.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{eventually, mesh_copy, only, processes_mentioning, pyairtable_dir};

fn meshtest(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(args)
        .current_dir(cwd)
        .env("MESHTEST_STATE_DIR", cwd.join("state"))
        .env_remove("RUST_BACKTRACE");
    support::output_within(&mut cmd, support::COMMAND_DEADLINE)
}

fn explain(cwd: &Path, args: &[&str], out: &Output) -> String {
    format!(
        "command: meshtest {}\ncwd: {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        cwd.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn expect(cwd: &Path, args: &[&str], code: i32) -> Output {
    let out = meshtest(cwd, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        explain(cwd, args, &out)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn unsupported_field_exits_2_naming_file_line_and_field() {
    let mesh = mesh_copy(only("security.yaml", |text| {
        text.replacen("  action: ALLOW\n  rules:\n", "  action: ALLOW\n  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: edge}\n  rules:\n", 1)
    }));
    let cwd = tempfile::tempdir().unwrap();
    let args = ["up", "--mesh", mesh.path().to_str().unwrap()];
    let out = expect(cwd.path(), &args, 2);
    let err = stderr(&out);
    assert!(
        err.contains("security.yaml:") && err.contains("`targetRefs`"),
        "{}",
        explain(cwd.path(), &args, &out)
    );
}

#[test]
fn a_prometheus_rule_prometheus_refuses_exits_2_naming_the_resource() {
    let mesh = mesh_copy(only("observability.yaml", |text| {
        text.replacen("> 0.05", "> > 0.05", 1)
    }));
    let cwd = tempfile::tempdir().unwrap();
    let args = ["up", "--observe", "--mesh", mesh.path().to_str().unwrap()];
    let out = expect(cwd.path(), &args, 2);
    let err = stderr(&out);
    assert!(
        err.contains("observability.yaml:37: field `spec.groups`")
            && err.contains("Prometheus refuses"),
        "{}",
        explain(cwd.path(), &args, &out)
    );
}

#[test]
fn a_resource_its_crd_refuses_exits_2_as_the_api_server_would() {
    let mesh = mesh_copy(only("traffic.yaml", |text| {
        text.replacen("weight: 90", "weight: \"ninety\"", 1)
    }));
    let cwd = tempfile::tempdir().unwrap();
    let args = ["up", "--mesh", mesh.path().to_str().unwrap()];
    let out = expect(cwd.path(), &args, 2);
    let err = stderr(&out);
    assert!(
        err.contains("traffic.yaml:")
            && err.contains("weight")
            && err.contains("must be of type integer"),
        "{}",
        explain(cwd.path(), &args, &out)
    );
}

/// `meshtest ARGS` with KUBECONFIG and HOME as given (nothing of the machine's own).
fn meshtest_kube(cwd: &Path, args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("KUBECONFIG")
        .env_remove("MESHTEST_ALLOW_CONTEXT")
        .env_remove("RUST_BACKTRACE");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    support::output_within(&mut cmd, support::COMMAND_DEADLINE)
}

#[test]
fn the_kube_target_without_a_kubeconfig_or_with_a_production_context_exits_2() {
    let cwd = tempfile::tempdir().unwrap();
    let args = ["run", "--target", "kube"];
    let out = meshtest_kube(cwd.path(), &args, None);
    let why = explain(cwd.path(), &args, &out);
    assert_eq!(out.status.code(), Some(2), "{why}");
    assert!(
        stderr(&out).contains(".kube/config") && stderr(&out).contains("kubeconfig"),
        "{why}"
    );

    let config = cwd.path().join("config");
    std::fs::write(&config, "apiVersion: v1\nkind: Config\ncurrent-context: prod-eu-1\ncontexts:\n- name: prod-eu-1\n  context: {cluster: prod, user: admin}\nclusters:\n- name: prod\n  cluster: {server: 'https://prod.example:6443'}\n").unwrap();
    for args in [
        vec!["run", "--target", "kube"],
        vec!["chaos", "--profile", "bad-canary", "--target", "kube"],
    ] {
        let out = meshtest_kube(cwd.path(), &args, Some(&config));
        let why = explain(cwd.path(), &args, &out);
        assert_eq!(out.status.code(), Some(2), "{why}");
        assert!(
            stderr(&out).contains("refusing context `prod-eu-1`"),
            "{why}"
        );
    }
}

#[test]
fn malformed_yaml_exits_2_with_file_and_line() {
    let mesh = mesh_copy(only("traffic.yaml", |text| {
        text.replacen("    tls:\n", "    tls: [\n", 1)
    }));
    let cwd = tempfile::tempdir().unwrap();
    let args = ["up", "--mesh", mesh.path().to_str().unwrap()];
    let out = expect(cwd.path(), &args, 2);
    let err = stderr(&out);
    let located = err.lines().any(|l| {
        l.contains("traffic.yaml:")
            && l.split("traffic.yaml:")
                .nth(1)
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    });
    assert!(located, "{}", explain(cwd.path(), &args, &out));
}

#[test]
fn missing_mesh_dir_and_bad_flags_exit_2() {
    let cwd = tempfile::tempdir().unwrap();
    expect(cwd.path(), &["up", "--mesh", "no/such/dir"], 2);
    expect(
        cwd.path(),
        &["token", "--tenant", "acme", "--tier", "gold"],
        2,
    );
    expect(cwd.path(), &["call", "--to", "auth-service", "health"], 2);
}

#[test]
fn bad_features_exit_2_with_file_and_line_before_any_mesh_starts() {
    let cwd = tempfile::tempdir().unwrap();
    let features = cwd.path().join("features");
    std::fs::create_dir_all(&features).unwrap();
    std::fs::write(features.join("typo.feature"), "Feature: typo\n\n  Scenario: a step nobody defined\n    Given the mesh is running\n    When api-gateway pings auth-service\n").unwrap();
    let args = ["run", "features/typo.feature"];
    let out = expect(cwd.path(), &args, 2);
    assert!(
        stderr(&out).contains("typo.feature:5") && stderr(&out).contains("unknown step"),
        "{}",
        explain(cwd.path(), &args, &out)
    );

    std::fs::write(
        features.join("broken.feature"),
        "Feature: broken\n  Scenario: x\n    Given the mesh is running\n  Examples oops\n",
    )
    .unwrap();
    let args = ["run", "features/broken.feature"];
    let out = expect(cwd.path(), &args, 2);
    assert!(
        stderr(&out).contains("broken.feature:"),
        "{}",
        explain(cwd.path(), &args, &out)
    );

    expect(cwd.path(), &["run", "features/none.feature"], 2);
    std::fs::write(
        features.join("ok.feature"),
        "Feature: ok\n  Scenario: x\n    Given the mesh is running\n",
    )
    .unwrap();
    expect(
        cwd.path(),
        &["run", "--target", "nowhere", "features/ok.feature"],
        2,
    );
    expect(
        cwd.path(),
        &["run", "--mesh", "no/such/mesh", "features/ok.feature"],
        2,
    );
}

#[test]
fn token_without_a_running_mesh_exits_2_saying_so() {
    // The signing key exists only in a running mesh's private run directory.
    let cwd = tempfile::tempdir().unwrap();
    let out = expect(
        cwd.path(),
        &["token", "--tenant", "acme", "--tier", "free"],
        2,
    );
    assert!(
        stderr(&out).contains("no mesh is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn load_says_what_the_errors_were_and_writes_its_report() {
    let cwd = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: every request fails to connect.
    let out = expect(
        cwd.path(),
        &[
            "load",
            "http://127.0.0.1:1/",
            "--connections",
            "1",
            "--requests",
            "5",
            "--report-dir",
            "out",
            "--name",
            "refused",
        ],
        1,
    );
    let text = stdout(&out);
    assert!(
        text.contains("FAILED: no request got a response (5 of 5 failed without one: connect x5)"),
        "{text}"
    );
    assert!(text.contains("0 ok, 5 errors"), "{text}");
    assert!(text.contains("no response: connect x5"), "{text}");
    assert!(text.contains("latency ms: none"), "{text}");
    for file in ["summary.json", "refused.hgrm", "index.html"] {
        assert!(cwd.path().join("out").join(file).is_file(), "out/{file}");
    }
}

#[test]
fn out_of_range_numbers_exit_2_naming_the_flag_or_field_never_panicking() {
    let cwd = tempfile::tempdir().unwrap();
    for (args, names) in [
        (
            vec!["load", "http://127.0.0.1:1/", "--rate", "1e-300"],
            "--rate",
        ),
        (
            vec![
                "load",
                "http://127.0.0.1:1/",
                "--rate",
                "1e300",
                "--duration",
                "1s",
            ],
            "--rate",
        ),
        (
            vec![
                "load",
                "http://127.0.0.1:1/",
                "--rate",
                "100",
                "--warmup",
                "99999999999999999999h",
            ],
            "--warmup",
        ),
        (
            vec![
                "load",
                "http://127.0.0.1:1/",
                "--duration",
                "99999999999999999999h",
            ],
            "--duration",
        ),
        (
            vec!["load", "http://127.0.0.1:1/", "--timeout=-1s"],
            "--timeout",
        ),
        (vec!["load", "http://127.0.0.1:99999/"], "99999"),
        (
            vec!["load", "http://127.0.0.1:1/", "--threshold", "p99<1000"],
            "--threshold",
        ),
        (
            vec![
                "call",
                "--outside",
                "--to",
                "auth-service",
                "/health",
                "--timeout",
                "1e300",
            ],
            "--timeout",
        ),
        (vec!["run", "--concurrency", "0"], "--concurrency"),
    ] {
        let out = expect(cwd.path(), &args, 2);
        assert!(
            stderr(&out).contains(names),
            "{}",
            explain(cwd.path(), &args, &out)
        );
    }
    let mesh = mesh_copy(only("traffic.yaml", |t| {
        t.replacen("timeout: 30s", "timeout: 99999999999999999999h", 1)
    }));
    let args = ["up", "--mesh", mesh.path().to_str().unwrap()];
    let out = expect(cwd.path(), &args, 2);
    assert!(
        stderr(&out).contains("traffic.yaml:") && stderr(&out).contains("timeout"),
        "{}",
        explain(cwd.path(), &args, &out)
    );
}

/// A minimal HTTP/1.1 server answering 200 to everything until the test ends.
fn ok_server() -> std::net::SocketAddr {
    slow_server(Duration::ZERO)
}

/// An HTTP/1.1 server answering 200 after `delay`, every connection on its own thread.
fn slow_server(delay: Duration) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn load_workers_merge_into_one_report_with_a_row_each() {
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", slow_server(Duration::from_millis(20)));
    let summary = |dir: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(cwd.path().join(dir).join("summary.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let four = [
        "load",
        &url,
        "--rate",
        "200",
        "-n",
        "400",
        "--workers",
        "4",
        "--report-dir",
        "w4",
        "--no-progress",
    ];
    let out = expect(cwd.path(), &four, 0);
    let why = explain(cwd.path(), &four, &out);
    let one = [
        "load",
        &url,
        "--rate",
        "200",
        "-n",
        "400",
        "--report-dir",
        "w1",
        "--no-progress",
    ];
    expect(cwd.path(), &one, 0);
    let (w4, w1) = (summary("w4"), summary("w1"));
    assert_eq!(w4["requests"]["total"], 400, "{why}");
    let rows = w4["workers"].as_array().expect("a row per worker");
    assert_eq!(rows.len(), 4, "{why}");
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["worker"], k);
        assert_eq!(
            row["requests"], 100,
            "worker {k}: its share of the schedule"
        );
    }
    assert!(
        w1.get("workers").is_none(),
        "one process has no worker rows"
    );
    // The same load as four processes and as one: the same median within the server's jitter
    // (the merge itself is exact: see meshtest_load::workers' tests); the tail depends on how
    // busy the host is (other tests run beside this one), so it is only bounded.
    let p50 = |s: &serde_json::Value| s["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        (p50(&w4) - p50(&w1)).abs() < 5.0,
        "p50 {} vs {}\n{why}",
        p50(&w4),
        p50(&w1)
    );
    for s in [&w4, &w1] {
        let (lo, hi) = (p50(s), s["latency_ms"]["p99"].as_f64().unwrap());
        assert!(
            lo >= 20.0 && hi >= lo && hi < 200.0,
            "p50 {lo} p99 {hi}\n{why}"
        );
    }
    // Bad input is refused before any worker starts.
    let bad = ["load", &url, "-c", "2", "-n", "10", "--workers", "4"];
    let out = expect(cwd.path(), &bad, 2);
    assert!(
        stderr(&out).contains("--workers"),
        "{}",
        explain(cwd.path(), &bad, &out)
    );
}

#[test]
fn load_thresholds_and_the_regression_gate_judge_what_matters() {
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", ok_server());
    let base = [
        "load",
        &url,
        "-n",
        "50",
        "--report-dir",
        "base",
        "--no-progress",
    ];
    expect(cwd.path(), &base, 0);
    let held = [
        "load",
        &url,
        "-n",
        "20",
        "--report-dir",
        "held",
        "--threshold",
        "errors<1%",
        "--threshold",
        "p99<5s",
    ];
    expect(cwd.path(), &held, 0);
    let failed = [
        "load",
        &url,
        "-n",
        "20",
        "--report-dir",
        "slow",
        "--threshold",
        "p99<1us",
    ];
    let out = expect(cwd.path(), &failed, 1);
    assert!(
        stdout(&out).contains("FAILED"),
        "{}",
        explain(cwd.path(), &failed, &out)
    );
    // A run in which every request failed never passes the gate.
    let dead = [
        "load",
        "http://127.0.0.1:1/",
        "-n",
        "20",
        "--report-dir",
        "dead",
        "--no-progress",
    ];
    expect(cwd.path(), &dead, 1);
    let compare = ["report", "compare", "base", "dead"];
    let out = expect(cwd.path(), &compare, 1);
    assert!(
        stdout(&out).contains("REGRESSED"),
        "{}",
        explain(cwd.path(), &compare, &out)
    );
    expect(
        cwd.path(),
        &[
            "report",
            "compare",
            "base",
            "held",
            "--max-p99-regression",
            "10000",
            "--min-throughput-ratio",
            "0",
        ],
        0,
    );
}

#[test]
fn call_without_a_running_mesh_says_how_to_start_one() {
    let cwd = tempfile::tempdir().unwrap();
    let out = expect(
        cwd.path(),
        &[
            "call",
            "--from",
            "api-gateway",
            "--to",
            "auth-service",
            "/health",
        ],
        2,
    );
    assert!(stderr(&out).contains("meshtest up"), "{}", stderr(&out));
}

/// A `meshtest up` child that is killed (and reaped) when the test ends, pass or fail, so a
/// failing test never leaves a mesh running.
struct UpProcess(std::process::Child);

impl std::ops::Deref for UpProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for UpProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshtest up` in the background until it prints "ready"; returns the child and its run dir.
fn up(cwd: &Path) -> (UpProcess, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_meshtest"))
        .args(["up", "--mesh", pyairtable_dir().to_str().unwrap()])
        .current_dir(cwd)
        .env("MESHTEST_STATE_DIR", cwd.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning meshtest up");
    let mut child = UpProcess(child);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        ready.contains("ready") && ready.contains("ingress http://"),
        "first line: {ready:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.join("state/state.json")).unwrap())
            .unwrap();
    for key in ["http", "https"] {
        assert!(
            state["ingress"][key]
                .as_str()
                .is_some_and(|a| a.contains(':')),
            "{state}"
        );
    }
    let pod = &state["pods"][0];
    for key in ["name", "service", "version", "sa", "ip", "admin", "control"] {
        assert!(pod[key].is_string(), "pods[0].{key} in {state}");
    }
    assert!(pod["ports"][0].is_u64(), "pods[0].ports in {state}");
    assert!(
        state["owner"]["pid"].is_u64() && state["owner"]["start_time"].is_u64(),
        "{state}"
    );
    (child, state["run_dir"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn up_call_status_down_and_nothing_left_behind() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut child, run_dir) = up(cwd.path());
    assert_eq!(processes_mentioning(&run_dir).len(), 12);

    let ok = expect(
        cwd.path(),
        &[
            "call",
            "--from",
            "api-gateway",
            "--to",
            "auth-service",
            "/health",
        ],
        0,
    );
    assert!(
        stdout(&ok).starts_with("HTTP 200")
            && stdout(&ok).contains("spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa"),
        "{}",
        stdout(&ok)
    );
    let denied = expect(
        cwd.path(),
        &[
            "call",
            "--from",
            "llm-orchestrator",
            "--to",
            "auth-service",
            "/health",
        ],
        0,
    );
    assert!(
        stdout(&denied).starts_with("HTTP 403") && stdout(&denied).contains("RBAC: access denied"),
        "{}",
        stdout(&denied)
    );
    let refused = expect(
        cwd.path(),
        &[
            "call",
            "--outside",
            "--plaintext",
            "--to",
            "auth-service",
            "/health",
        ],
        1,
    );
    assert!(
        stdout(&refused).contains("no HTTP response"),
        "{}",
        stdout(&refused)
    );
    let tls = expect(
        cwd.path(),
        &["call", "--outside", "--to", "auth-service", "/health"],
        1,
    );
    assert!(stdout(&tls).contains("TLS"), "{}", stdout(&tls));
    expect(cwd.path(), &["call", "--via-ingress", "/health"], 0);
    expect(cwd.path(), &["status"], 0);
    // Tokens come from the running mesh's own key, and the mesh accepts them.
    let token = expect(
        cwd.path(),
        &["token", "--tenant", "acme", "--tier", "free"],
        0,
    );
    let token = stdout(&token).trim().to_string();
    assert_eq!(token.split('.').count(), 3);
    let auth = format!("authorization: Bearer {token}");
    let api = expect(
        cwd.path(),
        &[
            "call",
            "--via-ingress",
            "/api/v1/airtable/bases",
            "-H",
            &auth,
        ],
        0,
    );
    assert!(stdout(&api).starts_with("HTTP 200"), "{}", stdout(&api));
    // Unknown names are bad input, not a failed call.
    let unknown = expect(
        cwd.path(),
        &[
            "call",
            "--from",
            "api-gateway",
            "--to",
            "auth-servce",
            "/health",
        ],
        2,
    );
    assert!(
        stderr(&unknown).contains("--to") && stderr(&unknown).contains("auth-servce"),
        "{}",
        stderr(&unknown)
    );

    expect(cwd.path(), &["down"], 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "up exited with {status}");
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "left behind: {:?}",
        processes_mentioning(&run_dir)
    );
    assert!(!cwd.path().join("state/state.json").exists());
}

#[tokio::test]
async fn kill_9_of_up_takes_its_envoys_with_it() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut child, run_dir) = up(cwd.path());
    child.kill().unwrap(); // SIGKILL: no cleanup code runs in meshtest.
    child.wait().unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        processes_mentioning(&run_dir).is_empty()
    })
    .await;
    assert!(
        gone,
        "left behind after kill -9: {:?}",
        processes_mentioning(&run_dir)
    );
    let removed = eventually(Duration::from_secs(5), || async {
        !Path::new(&run_dir).exists()
    })
    .await;
    assert!(
        removed,
        "the run directory (keys) outlived kill -9: {run_dir}"
    );
    // A stale state file is recognised as such (and nothing is signalled).
    let out = expect(cwd.path(), &["status"], 2);
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
}

#[tokio::test]
async fn ctrl_c_stops_the_mesh_and_everything_it_started() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut child, run_dir) = up(cwd.path());
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "up exited with {exit} after SIGINT");
    assert!(
        processes_mentioning(&run_dir).is_empty(),
        "left behind: {:?}",
        processes_mentioning(&run_dir)
    );
    assert!(
        !Path::new(&run_dir).exists(),
        "the run directory (keys) is removed"
    );
}
