//! Shared fixtures for tests against the embedded mesh: a mesh started once per test binary,
//! meshes built from edited copies of the manifests, and polling with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshtest::local::{LocalMesh, LocalOptions};
use meshtest::target::local::LocalTarget;
use tokio::sync::OnceCell;

pub fn pyairtable_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/pyairtable")
}

/// The intact PyAirtable mesh, started once for every test in this binary. Its Envoys die with
/// the test process (PR_SET_PDEATHSIG on the mesh's own thread).
pub async fn shared() -> &'static LocalTarget {
    static MESH: OnceCell<LocalTarget> = OnceCell::const_new();
    MESH.get_or_init(|| async { start(&pyairtable_dir()).await })
        .await
}

pub async fn start(dir: &Path) -> LocalTarget {
    meshtest::tls::install_crypto_provider();
    let opts = LocalOptions {
        mesh_dir: dir.to_path_buf(),
        envoy: None,
        observe: false,
    };
    let mesh = LocalMesh::start(&opts)
        .await
        .unwrap_or_else(|e| panic!("starting the mesh from {}: {e:#}", dir.display()));
    LocalTarget::owning(mesh, dir).expect("target")
}

/// A copy of the PyAirtable manifests with `edit(file name, text)` applied to each file.
pub fn mesh_copy(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    mesh_copy_of(&pyairtable_dir(), edit)
}

/// A copy of the manifests in `src` (its files, not its subdirectories) with `edit` applied.
pub fn mesh_copy_of(src: &Path, edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(src).expect("mesh dir") {
        let path = entry.expect("entry").path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        std::fs::write(dir.path().join(&name), edit(&name, text)).expect("write manifest");
    }
    dir
}

/// An edit for `mesh_copy` that changes one manifest file and leaves the others alone.
pub fn only(
    file: &'static str,
    edit: impl Fn(String) -> String,
) -> impl Fn(&str, String) -> String {
    move |name, text| if name == file { edit(text) } else { text }
}

/// Runs `cmd` to completion with its output captured, or kills it once `deadline` passes: a
/// test that expects the command to exit must fail, not hang, when it does not (its Envoys die
/// with it: they are tied to its mesh thread).
pub fn output_within(cmd: &mut std::process::Command, deadline: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running meshtest");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for meshtest") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            break child.wait().expect("waiting for meshtest");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = err.join().unwrap_or_default();
    if start.elapsed() > deadline {
        stderr.extend_from_slice(format!("\n[killed by the test after {deadline:?}]\n").as_bytes());
    }
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr,
    }
}

/// A deadline for one meshtest command in a test: generous, but finite.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Polls `check` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts that an async condition becomes true within a deadline (no sleeps standing in for readiness).
#[macro_export]
macro_rules! assert_eventually {
    ($deadline:expr, $check:expr, $($msg:tt)+) => {
        assert!($crate::support::eventually($deadline, $check).await, $($msg)+)
    };
}

/// PIDs of live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .is_ok_and(|s| s.contains(") Z "));
            if cmdline.contains(needle) && !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}
