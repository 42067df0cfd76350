//! Cluster tests: they need a real cluster (the nightly workflow's kind, with Istio installed
//! and the agent image loaded), so they are `#[ignore]`d and run with
//! `MESHTEST_TARGET=kube cargo test --test kube_cluster -- --ignored`. The same API calls are
//! covered without a cluster by the tower-test mocks in `target::kube::cluster`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshtest::target::kube::{KubeFlags, choose, cluster};

fn on_a_cluster() -> bool {
    let yes = std::env::var("MESHTEST_TARGET").as_deref() == Ok("kube");
    if !yes {
        eprintln!("skipped: set MESHTEST_TARGET=kube with a kind cluster to run the cluster tests");
    }
    yes
}

fn meshtest(args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshtest"));
    cmd.args(args).current_dir(&root);
    let out = support::output_within(&mut cmd, support::COMMAND_DEADLINE);
    eprintln!(
        "command: meshtest {}\ncwd: {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        root.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
#[ignore]
fn pyairtable_deploys_becomes_ready_and_is_deleted_again() {
    if !on_a_cluster() {
        return;
    }
    let out = meshtest(&[
        "kube",
        "deploy",
        "--mesh",
        "mesh/pyairtable",
        "--ready-timeout",
        "600s",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready in"));
}

#[tokio::test]
#[ignore]
async fn clean_leaves_no_namespace_of_meshtest() {
    if !on_a_cluster() {
        return;
    }
    meshtest::tls::install_crypto_provider();
    let out = meshtest(&[
        "kube",
        "deploy",
        "--mesh",
        "mesh/pyairtable",
        "--keep",
        "--ready-timeout",
        "600s",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = meshtest(&["kube", "clean"]);
    assert_eq!(out.status.code(), Some(0));
    let choice = choose(&KubeFlags::default()).unwrap();
    let client = cluster::connect(&choice).await.unwrap();
    // Deleted namespaces linger while they terminate: poll, with a deadline, until none is left.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = cluster::runs(&client, None).await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there after 300 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
