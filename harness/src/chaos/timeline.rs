//! timeline.jsonl: every event of an experiment as it happens (appended and flushed at once,
//! so a killed run leaves the timeline up to its last moment), and observers' notes handed in
//! by `meshtest chaos note` through a notes file beside the journal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An observer's note.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Note {
    pub at_unix_ms: u64,
    pub text: String,
}

pub struct Timeline {
    start: Instant,
    file: std::fs::File,
    pub path: PathBuf,
    /// Every event so far, for the summary and the retro.
    pub events: Vec<Value>,
    notes_file: PathBuf,
    notes_read: usize,
}

impl Timeline {
    /// Writes to `path`; notes arrive through `notes_file`.
    pub fn create(path: &Path, notes_file: PathBuf, start: Instant) -> Result<Timeline> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Timeline {
            start,
            file,
            path: path.to_path_buf(),
            events: Vec::new(),
            notes_file,
            notes_read: 0,
        })
    }

    /// Seconds since the experiment began.
    pub fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Records `event` with its fields (`fields` is a JSON object).
    pub fn event(&mut self, event: &str, fields: Value) {
        let mut v = json!({
            "at": now_rfc3339(),
            "t_s": (self.t() * 1000.0).round() / 1000.0,
            "event": event,
        });
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
            obj.extend(extra);
        }
        // A timeline that cannot be written loses the file, not the run: events stay in memory.
        let _ = writeln!(self.file, "{v}").and_then(|_| self.file.flush());
        self.events.push(v);
    }

    /// Moves notes written since the last call into the timeline; returns them.
    pub fn take_notes(&mut self) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(&self.notes_file) else {
            return vec![];
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for line in lines.iter().skip(self.notes_read) {
            if let Ok(n) = serde_json::from_str::<Note>(line) {
                self.event("note", json!({"text": n.text}));
                out.push(n.text);
            }
        }
        self.notes_read = lines.len();
        out
    }

    /// The notes of the run so far: (t_s, text).
    pub fn notes(&self) -> Vec<(f64, String)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "note")
            .map(|e| {
                (
                    e["t_s"].as_f64().unwrap_or(0.0),
                    e["text"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Appends a note for the running experiment `notes_file` belongs to.
pub fn append_note(notes_file: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(notes_file)
        .with_context(|| format!("opening {}", notes_file.display()))?;
    let note = Note {
        at_unix_ms: super::journal::now_ms(),
        text: text.to_string(),
    };
    writeln!(f, "{}", serde_json::to_string(&note)?)?;
    f.sync_data()?;
    Ok(())
}

pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}
