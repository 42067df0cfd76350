//! Where a local mesh lives: a loopback block 127.B.0.0/16 per running mesh (so several meshes
//! and test runs coexist without root), and a private run directory for keys and sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::model::{MeshModel, Pod};

pub const ADMIN_PORT: u16 = 15000;
const LOCK_DIR: &str = "/tmp/meshtest-locks";

/// A claimed second octet B: the mesh owns 127.B.0.0/16 until this is dropped.
pub struct Block {
    pub octet: u8,
    lock: PathBuf,
}

impl Drop for Block {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

impl Block {
    /// Claims a free block: a lock file (reclaimed if its owner is dead) plus a bind probe.
    pub fn claim() -> Result<Block> {
        std::fs::create_dir_all(LOCK_DIR).context("creating the lock directory")?;
        let start = (std::process::id() % 200) as u8;
        for i in 0..220u16 {
            let octet = 20 + ((start as u16 + i) % 220) as u8;
            let lock = Path::new(LOCK_DIR).join(octet.to_string());
            if let Ok(owner) = std::fs::read_to_string(&lock) {
                let alive = owner
                    .trim()
                    .parse::<i32>()
                    .is_ok_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
                if alive {
                    continue;
                }
                let _ = std::fs::remove_file(&lock);
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock);
            let Ok(mut f) = created else { continue };
            std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes())?;
            let probe = SocketAddr::from((Ipv4Addr::new(127, octet, 0, 1), ADMIN_PORT));
            if std::net::TcpListener::bind(probe).is_err() {
                let _ = std::fs::remove_file(&lock);
                continue;
            }
            return Ok(Block { octet, lock });
        }
        bail!("no free 127.B.0.0/16 block for a local mesh (locks in {LOCK_DIR})")
    }

    pub fn ingress_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octet, 0, 1)
    }

    /// 127.B.S.R: S is the service's index + 1, R the pod's ordinal + 1.
    pub fn pod_ip(&self, model: &MeshModel, pod: &Pod) -> Ipv4Addr {
        let s = model
            .services
            .iter()
            .position(|s| s.name == pod.service)
            .expect("pod's service exists") as u8
            + 1;
        Ipv4Addr::new(127, self.octet, s, pod.ordinal as u8 + 1)
    }

    /// Where a Gateway server port listens locally.
    pub fn gateway_listen(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ingress_ip(), unprivileged(port)))
    }
}

/// Gateway ports below 1024 move up by 8000 (80 -> 8080, 443 -> 8443), as Istio's gateway pods do.
pub fn unprivileged(port: u16) -> u16 {
    if port < 1024 { port + 8000 } else { port }
}

/// The private run directory (0700), removed when dropped, or by its janitor when this process
/// dies without dropping it.
pub struct RunDir {
    pub path: PathBuf,
    janitor: Option<Janitor>,
}

/// A `sh` that removes the run directory (and the block's lock file, if still ours) once this
/// process is gone, however it went (kill -9, or a test binary whose shared mesh lives in a static
/// and is never dropped): it blocks reading a pipe whose only writer is this process, and the
/// kernel closes that when the process dies.
/// It ignores terminal signals and has its own process group, so a Ctrl-C cannot stop it first.
struct Janitor {
    child: std::process::Child,
}

impl Janitor {
    fn spawn(dir: &Path, lock: &Path) -> std::io::Result<Janitor> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let child = Command::new("sh")
            .args([
                "-c",
                r#"trap '' INT TERM HUP; read _ ; rm -rf -- "$MESHTEST_RUN_DIR"
                   [ "$(cat -- "$MESHTEST_LOCK" 2>/dev/null)" = "$MESHTEST_PID" ] && rm -f -- "$MESHTEST_LOCK""#,
            ])
            // In the environment, not the arguments: tests look for leftovers by command line.
            .env("MESHTEST_RUN_DIR", dir)
            .env("MESHTEST_LOCK", lock)
            .env("MESHTEST_PID", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Janitor { child })
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // EOF: the janitor wakes up and finds nothing to remove
        let _ = self.child.wait();
    }
}

impl RunDir {
    pub fn create(block: &Block) -> Result<RunDir> {
        use std::os::unix::fs::DirBuilderExt;
        // Short paths: Unix socket paths must fit in 108 bytes.
        remove_stale_run_dirs();
        let path =
            std::env::temp_dir().join(format!("meshtest-{}-{}", block.octet, std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // Without a janitor the directory is still swept by the next mesh start.
        let janitor = Janitor::spawn(&path, &block.lock).ok();
        Ok(RunDir { path, janitor })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        drop(self.janitor.take());
    }
}

/// Removes run directories of meshes whose process is gone (killed with -9, or a test binary's
/// shared mesh that is never dropped): they hold keys.
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("meshtest-") else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        if rest.contains('-') && unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Writes a file by rename, the only way Envoy's filesystem xDS notices a change.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
