//! Error type shared by the load engine, reports and compare.

use std::path::PathBuf;

/// Everything that can stop a load run or a compare before it produces a result.
///
/// `Input` is the user's fault (bad flag, unreadable file) and maps to exit code 2
/// in the `meshtest` binary; everything else is an operational failure.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or input file is invalid; the message names the flag or file.
    #[error("{0}")]
    Input(String),
    /// The TLS configuration could not be built from otherwise readable files.
    #[error("tls setup: {0}")]
    Tls(String),
    /// Writing or reading a report failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A summary.json could not be parsed.
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The inputs are valid but no verdict is possible (e.g. `report compare`
    /// with a BASE that has no successful response). Exit code 3.
    #[error("cannot check: {0}")]
    Unchecked(String),
    /// An internal task or thread failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl LoadError {
    pub(crate) fn input(msg: impl Into<String>) -> Self {
        LoadError::Input(msg.into())
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LoadError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// True when no verdict could be reached although the input was valid (exit code 3).
    pub fn is_unchecked(&self) -> bool {
        matches!(self, LoadError::Unchecked(_))
    }

    /// True when the error came from bad user input (exit code 2).
    pub fn is_input(&self) -> bool {
        matches!(self, LoadError::Input(_))
    }
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;
