//! The write-ahead journal: every fault's intent (what, where, its inverse, owner and deadline)
//! is written and fsynced before the fault is applied, and its revert after; `chaos revert`
//! replays what a killed run left. One JSON object per line, in `<state dir>/chaos/RUN.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::local::owner::Owner;
use crate::target::injection::Injection;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// The run: who it is (a dead owner is what makes its faults orphans) and where the mesh is.
    Start {
        run_id: String,
        profile: String,
        owner: Owner,
        /// "local" or "kube".
        target: String,
        /// Attached runs: the state file of the mesh they act on. Absent when the run owned its
        /// mesh (its faults died with it).
        state: Option<PathBuf>,
        at_unix_ms: u64,
    },
    /// About to apply: written and fsynced first.
    Intent {
        id: String,
        fault: String,
        injection: Injection,
        inverse: String,
        owner: String,
        lease_ms: u64,
        deadline_unix_ms: u64,
    },
    Applied {
        id: String,
        at_unix_ms: u64,
    },
    /// Reverted (`found`: false when nothing of it was left: expired or reverted before).
    Reverted {
        id: String,
        found: bool,
        at_unix_ms: u64,
    },
    /// The run ended (whatever the verdict); everything it applied was reverted.
    Finished {
        verdict: String,
        at_unix_ms: u64,
    },
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An open journal, appended to and fsynced entry by entry.
pub struct Journal {
    pub path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// Creates `dir/RUN.jsonl` (dir 0700, file 0600).
    pub fn create(dir: &Path, run_id: &str) -> Result<Journal> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the journal directory {}", dir.display()))?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the journal {}", path.display()))?;
        // The directory entry itself must survive a crash too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Journal { path, file })
    }

    /// Opens an existing journal to add to it (`chaos revert`).
    pub fn append(path: &Path) -> Result<Journal> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `entry` and returns once it is on disk.
    pub fn write(&mut self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing the journal {}", self.path.display()))
    }
}

/// A journal read back.
#[derive(Debug, Clone)]
pub struct Replay {
    pub path: PathBuf,
    pub start: Option<Entry>,
    /// Intents in the order written, each with whether it was applied and reverted.
    pub intents: Vec<(Entry, bool, bool)>,
    pub finished: bool,
}

impl Replay {
    pub fn read(path: &Path) -> Result<Replay> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the journal {}", path.display()))?;
        let mut start = None;
        let mut intents: Vec<(Entry, bool, bool)> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut finished = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            // A torn last line (killed mid-write) is the one entry that may be incomplete: its
            // fault was then never applied, since apply waits for the fsync.
            let entry: Entry = match serde_json::from_str(line) {
                Ok(e) => e,
                Err(_) if n + 1 == text.lines().count() => break,
                Err(e) => anyhow::bail!("{}:{}: not a journal entry: {e}", path.display(), n + 1),
            };
            match &entry {
                Entry::Start { .. } => start = Some(entry),
                Entry::Intent { id, .. } => {
                    index.insert(id.clone(), intents.len());
                    intents.push((entry, false, false));
                }
                Entry::Applied { id, .. } => {
                    if let Some(&i) = index.get(id) {
                        intents[i].1 = true;
                    }
                }
                Entry::Reverted { id, .. } => {
                    if let Some(&i) = index.get(id) {
                        intents[i].2 = true;
                    }
                }
                Entry::Finished { .. } => finished = true,
            }
        }
        Ok(Replay {
            path: path.to_path_buf(),
            start,
            intents,
            finished,
        })
    }

    pub fn run_id(&self) -> Option<&str> {
        match &self.start {
            Some(Entry::Start { run_id, .. }) => Some(run_id),
            _ => None,
        }
    }

    /// Is the process that wrote it still running?
    pub fn owner_alive(&self) -> bool {
        matches!(&self.start, Some(Entry::Start { owner, .. }) if owner.is_alive())
    }

    /// Intents not known to be reverted, newest first (the order to revert them in). An intent
    /// without "applied" may still have been applied just before a crash: it is reverted too.
    pub fn outstanding(&self) -> Vec<&Entry> {
        self.intents
            .iter()
            .rev()
            .filter(|(_, _, reverted)| !reverted)
            .map(|(e, _, _)| e)
            .collect()
    }
}

/// Journals in `dir`, oldest first.
pub fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_what_was_left_newest_first_and_forgives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "chaos-x").unwrap();
        let intent = |id: &str| Entry::Intent {
            id: id.into(),
            fault: "f".into(),
            injection: Injection::PodPause { pod: "p".into() },
            inverse: "resume".into(),
            owner: "chaos-x".into(),
            lease_ms: 1000,
            deadline_unix_ms: 1,
        };
        j.write(&Entry::Start {
            run_id: "chaos-x".into(),
            profile: "p".into(),
            owner: Owner::current(),
            target: "local".into(),
            state: None,
            at_unix_ms: 0,
        })
        .unwrap();
        for id in ["f1.1", "f2.1", "f3.1"] {
            j.write(&intent(id)).unwrap();
        }
        j.write(&Entry::Applied {
            id: "f1.1".into(),
            at_unix_ms: 0,
        })
        .unwrap();
        j.write(&Entry::Reverted {
            id: "f2.1".into(),
            found: true,
            at_unix_ms: 0,
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"event\":\"appl")
            .unwrap();
        let r = Replay::read(&j.path).unwrap();
        let ids: Vec<String> = r
            .outstanding()
            .iter()
            .map(|e| match e {
                Entry::Intent { id, .. } => id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, ["f3.1", "f1.1"]);
        assert!(r.owner_alive());
        assert!(!r.finished);
        assert_eq!(r.run_id(), Some("chaos-x"));
    }
}
