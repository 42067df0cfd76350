//! Errors that name where bad input came from, and the exit code each maps to.

use std::fmt;
use std::path::PathBuf;

/// Bad input: a manifest, feature, profile or flag that cannot be used as written.
/// Always names the file and, where known, the line and field. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        InputError {
            file: file.into(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for InputError {}

/// Exit codes shared by every subcommand.
pub mod exit {
    /// Every promise held / the command did what it was asked.
    pub const OK: u8 = 0;
    /// A promise failed (or, for `call`, no HTTP response came back).
    pub const FAILED: u8 = 1;
    /// Bad input: file, line and field are named on stderr.
    pub const BAD_INPUT: u8 = 2;
    /// The harness could not check (the mesh did not start, a proxy was down, Envoy could not
    /// be installed): not a verdict on the mesh.
    pub const UNCHECKED: u8 = 3;
}

/// Maps any error chain to an exit code: input errors are 2, everything else 3 (the harness
/// could not do what was asked). A broken promise is never an error: commands return 1 for it.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|e| e.downcast_ref::<InputError>().is_some())
    {
        exit::BAD_INPUT
    } else {
        exit::UNCHECKED
    }
}
