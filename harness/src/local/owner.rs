//! Who owns a run directory or a running `meshtest up`: a PID, that process's start time (so a
//! reused PID is not mistaken for the owner) and a random token. meshtest touches only what a
//! valid owner record says is its own.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
    pub token: String,
}

impl Owner {
    /// This process, with a fresh token.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            token: random_token(),
        }
    }

    /// Is the process that wrote this record still running (same PID, same start time, and
    /// not a zombie: a killed process its parent has not reaped yet runs nothing)?
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time) && !is_zombie(self.pid)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
    }

    pub fn read(path: &Path) -> Option<Owner> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), or None if there is none.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Is process `pid` a zombie (state Z) or dead (X)?
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // Without /dev/urandom, still distinct per process and moment.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        assert!(
            !Owner {
                start_time: me.start_time + 1,
                ..me.clone()
            }
            .is_alive()
        );
        assert_ne!(me.token, Owner::current().token);
        let dir = tempfile::tempdir().unwrap();
        me.write(&dir.path().join("owner")).unwrap();
        assert_eq!(Owner::read(&dir.path().join("owner")), Some(me));
        assert_eq!(Owner::read(&dir.path().join("nothing")), None);
    }
}
