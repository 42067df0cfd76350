//! Where a local mesh lives: a loopback block 127.B.0.0/16 per running mesh (so several meshes
//! and test runs coexist without root), and a private run directory for keys and sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::model::{MeshModel, Pod};

/// The UDP port whose binding on 127.B.0.1 claims block B.
const CLAIM_PORT: u16 = 15000;

/// A claimed second octet B: the mesh owns 127.B.0.0/16 while this lives.
///
/// The claim is a UDP socket bound to 127.B.0.1:15000, held for the block's lifetime: the
/// kernel makes it exclusive across processes and users and releases it when the process dies,
/// so there is no lock file to go stale or to share between users.
pub struct Block {
    pub octet: u8,
    _claim: std::net::UdpSocket,
}

impl Block {
    /// Claims a free block.
    pub fn claim() -> Result<Block> {
        let start = (std::process::id() % 200) as u8;
        for i in 0..220u16 {
            let octet = 20 + ((start as u16 + i) % 220) as u8;
            let addr = SocketAddr::from((Ipv4Addr::new(127, octet, 0, 1), CLAIM_PORT));
            if let Ok(claim) = std::net::UdpSocket::bind(addr) {
                return Ok(Block {
                    octet,
                    _claim: claim,
                });
            }
        }
        bail!("no free 127.B.0.0/16 block for a local mesh (each running mesh holds one)")
    }

    pub fn ingress_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octet, 0, 1)
    }

    /// 127.B.255.N: where the N-th fault proxy of a chaos fault listens.
    pub fn fault_proxy_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octet, 255, n)
    }

    /// 127.B.S.R: S is the service's index + 1, R the pod's ordinal + 1.
    pub fn pod_ip(&self, model: &MeshModel, pod: &Pod) -> Ipv4Addr {
        let s = model
            .services
            .iter()
            // Two namespaces may each have a service of the same name.
            .position(|s| s.name == pod.service && s.namespace == pod.namespace)
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
/// dies without dropping it. Its `owner` file (PID, start time, token) is what lets a later
/// sweep tell a dead mesh's directory from anything else in the temp directory.
pub struct RunDir {
    pub path: PathBuf,
    janitor: Option<Janitor>,
}

/// Name of the owner record inside a run directory.
const OWNER_FILE: &str = "owner";

/// A `sh` that removes the run directory once this process is gone, however it went (kill -9,
/// or a test binary whose shared mesh lives in a static and is never dropped): it blocks reading
/// a pipe whose only writer is this process, and the kernel closes that when the process dies.
/// It ignores terminal signals and has its own process group, so a Ctrl-C cannot stop it first.
struct Janitor {
    child: std::process::Child,
}

impl Janitor {
    fn spawn(dir: &Path) -> std::io::Result<Janitor> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let child = Command::new("sh")
            .args([
                "-c",
                r#"trap '' INT TERM HUP; read _ ; rm -rf -- "$MESHTEST_RUN_DIR""#,
            ])
            // In the environment, not the arguments: tests look for leftovers by command line.
            .env("MESHTEST_RUN_DIR", dir)
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
        remove_stale_run_dirs();
        // Short paths: Unix socket paths must fit in 108 bytes.
        let path =
            std::env::temp_dir().join(format!("meshtest-{}-{}", block.octet, std::process::id()));
        // Never reuse (or delete) a directory we did not create: fail instead.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the run directory {}", path.display()))?;
        super::owner::Owner::current()
            .write(&path.join(OWNER_FILE))
            .with_context(|| format!("writing {}/{OWNER_FILE}", path.display()))?;
        // Without a janitor the directory is still swept by the next mesh start.
        let janitor = Janitor::spawn(&path).ok();
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
/// shared mesh that is never dropped): they hold keys. Only directories named like ours, owned
/// by this user, with a valid owner record whose process is gone; anything else is left alone.
fn remove_stale_run_dirs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("meshtest-") {
            continue;
        }
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !ours {
            continue;
        }
        if let Some(owner) = super::owner::Owner::read(&path.join(OWNER_FILE))
            && !owner.is_alive()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Writes a file by rename, the only way Envoy's filesystem xDS notices a change.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_named_services_in_two_namespaces_get_their_own_addresses() {
        let twin = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: twin, namespace: data}\nspec:\n  selector: {matchLabels: {app: twin}}\n  template:\n    metadata: {labels: {app: twin}}\n    spec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: data}\nspec:\n  selector: {app: twin}\n  ports: [{port: 8080, name: http}]\n---\n";
        let model = crate::translate::tests::model_of(twin);
        let block = Block::claim().unwrap();
        let ips: std::collections::BTreeSet<Ipv4Addr> =
            model.pods.iter().map(|p| block.pod_ip(&model, p)).collect();
        assert_eq!(ips.len(), model.pods.len(), "{ips:?}");
    }
}
