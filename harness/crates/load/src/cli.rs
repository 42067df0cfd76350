//! Raw command-line flags for `meshtest load` and `meshtest report compare`.
//!
//! These structs hold flags exactly as typed; [`crate::plan::LoadPlan::from_args`]
//! validates them into a typed plan (ripgrep style), so every mistake is reported
//! as a `LoadError::Input` naming the flag, whoever built the args.

use std::path::PathBuf;
use std::time::Duration;

/// `meshtest load URL [--rate R | --connections C] [--duration D | --requests N] ...`
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URL (http:// or https://).
    pub url: String,

    /// Open loop: send this many requests per second at fixed intended times.
    #[arg(long, conflicts_with = "connections")]
    pub rate: Option<f64>,

    /// Closed loop: keep this many connections busy as fast as they go.
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,

    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s).
    #[arg(long, short = 'd', conflicts_with = "requests")]
    pub duration: Option<String>,

    /// Stop after this many measured requests.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Send load for this long before measuring, e.g. 2s.
    #[arg(long)]
    pub warmup: Option<String>,

    /// Use HTTP/2 (ALPN h2 over TLS, prior knowledge h2c over cleartext).
    #[arg(long)]
    pub http2: bool,

    /// HTTP method.
    #[arg(short = 'X', long = "method", default_value = "GET")]
    pub method: String,

    /// Extra request header 'name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,

    /// File whose content is sent as the request body.
    #[arg(long)]
    pub body: Option<PathBuf>,

    /// CA bundle (PEM) that verifies the server chain.
    #[arg(long)]
    pub cacert: Option<PathBuf>,

    /// Client certificate chain (PEM) for mTLS; needs --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM) for mTLS; needs --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,

    /// Tenant the caller minted a token for (recorded in the summary).
    #[arg(long)]
    pub tenant: Option<String>,

    /// Tier the caller minted a token for (recorded in the summary).
    #[arg(long)]
    pub tier: Option<String>,

    /// Per-request timeout, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub timeout: String,

    /// Where to write the report (default reports/<timestamp>/).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,

    /// Report name: NAME.hgrm and the title of index.html.
    #[arg(long, default_value = "load")]
    pub name: String,

    /// Do not print live progress on stderr.
    #[arg(long)]
    pub no_progress: bool,

    /// HTTP client: auto (hand-rolled HTTP/1.1 for the closed loop over
    /// http://, hyper otherwise), hyper, or fast.
    #[arg(long, hide = true, default_value = "auto")]
    pub client: String,
}

impl LoadArgs {
    /// Args with every optional flag unset, for callers that do not go through clap
    /// (Gherkin steps, tests).
    pub fn for_url(url: impl Into<String>) -> Self {
        LoadArgs {
            url: url.into(),
            rate: None,
            connections: None,
            duration: None,
            requests: None,
            warmup: None,
            http2: false,
            method: "GET".into(),
            headers: Vec::new(),
            body: None,
            cacert: None,
            cert: None,
            key: None,
            tenant: None,
            tier: None,
            timeout: "10s".into(),
            report_dir: None,
            name: "load".into(),
            no_progress: false,
            client: "auto".into(),
        }
    }
}

/// `meshtest report compare BASE CUR [--max-p99-regression PCT]`
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Baseline report directory or summary.json.
    pub base: PathBuf,
    /// Current report directory or summary.json.
    pub cur: PathBuf,
    /// Fail when CUR p99 exceeds BASE p99 by more than this percentage.
    #[arg(long, default_value_t = 10.0)]
    pub max_p99_regression: f64,
}

/// Parses "10s", "500ms", "2m", "1h", "250us", "1.5s". A unit is required so
/// that "10" is never silently read as seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{text}' has no unit (use ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' does not start with a number"))?;
    let secs = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{text}' has unknown unit '{unit}' (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{text}' is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
