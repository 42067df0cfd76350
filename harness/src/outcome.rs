//! What a call produced: an HTTP response, or the way the connection failed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// An HTTP response came back (any status).
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Nothing listens there (ECONNREFUSED).
    Refused { detail: String },
    /// The peer closed or reset the connection before a response.
    Reset { detail: String },
    /// The TLS handshake failed.
    Tls { detail: String },
    /// No response within the deadline.
    Timeout { detail: String },
    /// Anything else (bad address, protocol error).
    Error { detail: String },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A response header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Outcome::Response { headers, .. } => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    pub fn body(&self) -> Option<&str> {
        match self {
            Outcome::Response { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The response body as JSON (the agent's echo), if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.body()?).ok()
    }

    /// One word for the kind of outcome: "response", "refused", "reset", "tls", "timeout", "error".
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Response { .. } => "response",
            Outcome::Refused { .. } => "refused",
            Outcome::Reset { .. } => "reset",
            Outcome::Tls { .. } => "tls",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Error { .. } => "error",
        }
    }

    /// A one-line summary fit for a failure message.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Response { status, body, .. } => {
                let body: String = body.chars().take(160).collect();
                format!("HTTP {status} {body:?}")
            }
            Outcome::Refused { detail } => format!("connection refused ({detail})"),
            Outcome::Reset { detail } => {
                format!("connection reset/closed without a response ({detail})")
            }
            Outcome::Tls { detail } => format!("TLS handshake failed ({detail})"),
            Outcome::Timeout { detail } => format!("timed out ({detail})"),
            Outcome::Error { detail } => format!("error ({detail})"),
        }
    }
}
