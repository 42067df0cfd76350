//! Verdicts that cannot lie, and a harness that touches only what is its own: an empty sample
//! or a dead proxy is UNCHECKED (exit 3), never HOLDS; no admin API on TCP; housekeeping and
//! `down` leave alone what another process owns; a key set istiod could not fetch refuses
//! every token.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshtest::conformance::{RunOptions, Verdict, run};
use meshtest::target::{Call, From, Target};
use meshtest::token::{Tier, TokenSpec};
use support::{eventually, mesh_copy, only, pyairtable_dir, start};

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn meshtest(cwd: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(args)
        .current_dir(cwd)
        .env("MESHTEST_STATE_DIR", cwd.join("state"));
    support::output_within(&mut cmd, support::COMMAND_DEADLINE)
}

fn explain(args: &[&str], out: &std::process::Output) -> String {
    format!(
        "command: meshtest {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A feature whose Then steps have nothing to judge must not pass.
#[test]
fn a_then_over_an_empty_sample_is_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    for (name, then) in [
        ("versions", "Then every response comes from version v2"),
        ("latency", "Then p99 is below 1000 ms"),
        ("status", "Then the response status is 200"),
    ] {
        let file = dir.path().join(format!("{name}.feature"));
        std::fs::write(
            &file,
            format!("Feature: nothing sent\n  Scenario: {name}\n    Given the mesh is running\n    {then}\n"),
        )
        .unwrap();
    }
    let mesh = pyairtable_dir().display().to_string();
    let features = dir.path().display().to_string();
    let args = [
        "run",
        features.as_str(),
        "--mesh",
        mesh.as_str(),
        "--report-dir",
        "reports",
    ];
    let out = meshtest(dir.path(), &args);
    assert_eq!(out.status.code(), Some(3), "{}", explain(&args, &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0 hold, 0 broken, 3 unchecked"),
        "{}",
        explain(&args, &out)
    );
    let junit = std::fs::read_to_string(dir.path().join("reports/junit.xml")).unwrap();
    assert_eq!(
        junit.matches("<error type=\"UNCHECKED\"").count(),
        3,
        "{junit}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("reports/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["verdict"], "UNCHECKED");
    assert_eq!(json["exit_code"], 3);
}

/// A step naming a workload the mesh does not have is bad input, before any mesh starts.
#[test]
fn an_unknown_workload_in_a_step_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.feature"),
        "Feature: typo\n  Scenario: x\n    Given the mesh is running\n    When api-gateway calls auth-servce at /health\n    Then the call is allowed\n",
    )
    .unwrap();
    let mesh = pyairtable_dir().display().to_string();
    let args = ["run", "typo.feature", "--mesh", mesh.as_str()];
    let out = meshtest(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&args, &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.feature:4") && err.contains("auth-servce"),
        "{}",
        explain(&args, &out)
    );
}

/// The conformance runner holds one run at a time per process.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_refusal_by_a_dead_proxy_is_unchecked() {
    let dir = mesh_copy(|_, t| t);
    let target = std::sync::Arc::new(start(dir.path()).await);
    let mesh = target.mesh().expect("owned mesh");
    let pid = mesh.pod("auth-service-0").expect("pod").proxy_pid();
    // SAFETY: our own child Envoy.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(5), || async {
            !mesh.deaths().is_empty()
        })
        .await,
        "the mesh did not notice its dead sidecar"
    );
    // A plaintext call now meets nothing: "refused" is no proof of STRICT mTLS.
    let reports = tempfile::tempdir().unwrap();
    let _one = ONE_RUN.lock().await;
    let summary = run(
        target.clone(),
        &RunOptions {
            features: vec![root().join("features/mtls.feature")],
            tags: None,
            name: Some("^(Plaintext to auth-service is refused by its live proxy|A TLS client without a certificate is rejected)$".into()),
            report_dir: reports.path().to_path_buf(),
            concurrency: 2,
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.results.len(), 2);
    for r in &summary.results {
        assert_eq!(
            r.verdict,
            Verdict::Unchecked,
            "{}: {:?}",
            r.scenario,
            r.message
        );
    }
    assert_eq!(summary.exit_code(), 3);
}

#[tokio::test]
async fn no_envoy_admin_api_listens_on_tcp() {
    let target = start(&pyairtable_dir()).await;
    // Port 15000 (Envoy's admin default) in /proc/net/tcp's hex, in LISTEN state (0A).
    let listening: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1).is_some_and(|a| a.ends_with(":3A98")) && cols.get(3) == Some(&"0A")
        })
        .map(str::to_string)
        .collect();
    assert!(
        listening.is_empty(),
        "TCP listeners on :15000: {listening:?}"
    );
    // The admin sockets live in the 0700 run directory and are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let run = &target.state().run_dir;
    assert_eq!(
        std::fs::metadata(run).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let admin = &target.state().ingress.admin;
    assert_eq!(
        std::fs::metadata(admin).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stats = target
        .proxy_admin("istio-ingressgateway", "GET", "/ready")
        .await
        .unwrap();
    assert_eq!(stats.trim(), "LIVE");
}

#[test]
fn housekeeping_and_down_touch_only_what_is_ours() {
    let tmp = std::env::temp_dir();
    // Not ours: a user's directory that looks like ours, and one of a dead PID without an
    // owner record.
    let notes = tmp.join("meshtest-notes-4242");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("notes.txt"), "keep me").unwrap();
    let unmarked = tmp.join("meshtest-7-999999");
    std::fs::create_dir_all(&unmarked).unwrap();
    // Ours and stale: a run directory whose owner record names a process that is gone.
    let stale = tmp.join("meshtest-8-999998");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(
        stale.join("owner"),
        r#"{"pid":999998,"start_time":1,"token":"x"}"#,
    )
    .unwrap();

    let cwd = tempfile::tempdir().unwrap();
    let mesh = pyairtable_dir().display().to_string();
    let mut up = Command::new(env!("CARGO_BIN_EXE_meshtest"))
        .args(["up", "--mesh", &mesh])
        .current_dir(cwd.path())
        .env("MESHTEST_STATE_DIR", cwd.path().join("state"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(up.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("ready"), "{line}");
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    up.wait().unwrap();

    assert_eq!(
        std::fs::read_to_string(notes.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(
        unmarked.exists(),
        "a directory without an owner record was removed"
    );
    assert!(!stale.exists(), "a dead mesh's run directory was kept");
    std::fs::remove_dir_all(&notes).unwrap();
    std::fs::remove_dir_all(&unmarked).unwrap();

    // `down` with a state file whose PID is alive but is not the meshtest that wrote it.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let state = cwd.path().join("state/state.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let text = format!(
        r#"{{"owner":{{"pid":{},"start_time":1,"token":"x"}},"mesh_dir":"/x","run_dir":"/x","ca":"/x","issuer_key":"/x","control":"/x","ingress":{{"http":null,"https":null,"admin":"/x"}},"pods":[]}}"#,
        sleeper.id()
    );
    std::fs::write(&state, text).unwrap();
    let out = meshtest(cwd.path(), &["down"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&["down"], &out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stale"),
        "{}",
        explain(&["down"], &out)
    );
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "down signalled a process that is not its mesh"
    );
    assert!(!state.exists(), "the stale state file was kept");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// As in Istio: a jwksUri istiod cannot fetch (here, auth-service's key-set port left STRICT,
/// so the fetch from outside the mesh is refused) inlines a key set that verifies no token.
#[tokio::test]
async fn a_key_set_istiod_cannot_fetch_refuses_every_token() {
    let dir = mesh_copy(only("security.yaml", |t| {
        t.replace(
            "    8081:\n      mode: PERMISSIVE\n",
            "    8081:\n      mode: STRICT\n",
        )
    }));
    let target = start(dir.path()).await;
    let token = target
        .mint_token(&TokenSpec::new("acme", Tier::Pro))
        .await
        .unwrap();
    let o = target
        .call(
            &Call::new(
                From::Ingress { https: false },
                "api-gateway",
                "/api/v1/auth/verify",
            )
            .header("authorization", &format!("Bearer {token}")),
        )
        .await
        .unwrap();
    assert_eq!(o.status(), Some(401), "{}", o.summary());
}
