//! What a run has injected and not yet reverted, shared between the experiment and whoever
//! must clean up after it (the end of the run, an abort, Ctrl-C, SIGTERM, a panic): each
//! fault is journaled before it is applied and reverted newest first.

use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::journal::{Entry, Journal, now_ms};
use crate::target::Target;
use crate::target::injection::Injection;

#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
    pub owner: String,
}

struct Inner {
    journal: Journal,
    /// (id, injection), in the order applied.
    live: Vec<(String, Injection)>,
}

/// The outcome of one revert.
#[derive(Debug, Clone)]
pub struct Reverted {
    pub id: String,
    /// False when nothing of it was left (it had expired).
    pub found: bool,
    pub ms: u64,
    pub error: Option<String>,
}

impl Ledger {
    pub fn new(journal: Journal, owner: &str) -> Ledger {
        Ledger {
            inner: Arc::new(Mutex::new(Inner {
                journal,
                live: Vec::new(),
            })),
            owner: owner.to_string(),
        }
    }

    pub fn journal_path(&self) -> std::path::PathBuf {
        self.inner.lock().expect("ledger lock").journal.path.clone()
    }

    pub fn write(&self, entry: &Entry) -> Result<()> {
        self.inner.lock().expect("ledger lock").journal.write(entry)
    }

    /// Journals the intent (fsynced), then applies it.
    pub async fn apply(
        &self,
        target: &dyn Target,
        fault: &str,
        id: &str,
        injection: &Injection,
        lease: std::time::Duration,
    ) -> Result<()> {
        {
            let mut inner = self.inner.lock().expect("ledger lock");
            inner.journal.write(&Entry::Intent {
                id: id.into(),
                fault: fault.into(),
                injection: injection.clone(),
                inverse: injection.inverse(),
                owner: self.owner.clone(),
                lease_ms: lease.as_millis() as u64,
                deadline_unix_ms: now_ms() + lease.as_millis() as u64,
            })?;
            // Live from the intent on: a crash between here and the answer may have applied it.
            inner.live.push((id.into(), injection.clone()));
        }
        target.inject(id, &self.owner, injection, lease).await?;
        self.write(&Entry::Applied {
            id: id.into(),
            at_unix_ms: now_ms(),
        })
    }

    /// Reverts one injection (if still live) and journals it.
    pub async fn revert(&self, target: &dyn Target, id: &str) -> Reverted {
        let injection = {
            let inner = self.inner.lock().expect("ledger lock");
            inner
                .live
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, inj)| inj.clone())
        };
        let started = std::time::Instant::now();
        let Some(injection) = injection else {
            return Reverted {
                id: id.into(),
                found: false,
                ms: 0,
                error: None,
            };
        };
        let result = target.revert_injection(id, &self.owner, &injection).await;
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(found) => {
                let mut inner = self.inner.lock().expect("ledger lock");
                inner.live.retain(|(i, _)| i != id);
                let _ = inner.journal.write(&Entry::Reverted {
                    id: id.into(),
                    found,
                    at_unix_ms: now_ms(),
                });
                Reverted {
                    id: id.into(),
                    found,
                    ms,
                    error: None,
                }
            }
            Err(e) => Reverted {
                id: id.into(),
                found: true,
                ms,
                error: Some(format!("{e:#}")),
            },
        }
    }

    /// Reverts everything still live, newest first; the ones that failed.
    pub async fn revert_all(&self, target: &dyn Target) -> Vec<Reverted> {
        let ids: Vec<String> = {
            let inner = self.inner.lock().expect("ledger lock");
            inner.live.iter().rev().map(|(id, _)| id.clone()).collect()
        };
        let mut failed = Vec::new();
        for id in ids {
            let r = self.revert(target, &id).await;
            if r.error.is_some() {
                failed.push(r);
            }
        }
        failed
    }

    /// Ids still live.
    pub fn live(&self) -> Vec<(String, Injection)> {
        self.inner.lock().expect("ledger lock").live.clone()
    }
}
