//! Validated run configuration built from raw [`LoadArgs`] flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::cli::{LoadArgs, parse_duration};
use crate::error::{LoadError, Result};
use crate::tls;

/// Default measured duration when neither --duration nor --requests is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Open loop opens connections on demand up to this many (HTTP/1.1 has one
/// request in flight per connection, so this caps concurrency).
pub const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 1024;

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Fixed intended send times `start + i / rate`; latency counts from them.
    Open { rate: f64, max_connections: usize },
    /// `connections` connections, each sending its next request as soon as the
    /// previous response is complete.
    Closed { connections: usize },
}

/// Which HTTP client carries the requests (hidden `--client` flag, for tests
/// and comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientChoice {
    /// The hand-rolled HTTP/1.1 client ([`crate::http1`]) for closed loop over
    /// http:// without --http2; hyper otherwise.
    #[default]
    Auto,
    /// Always hyper.
    Hyper,
    /// The hand-rolled client; an input error when the plan is not eligible.
    Fast,
}

/// When a run ends. Loops always end by themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Duration(Duration),
    Requests(u64),
}

/// Where requests go: parsed once, used for every connection.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// "host:port" as sent in Host / :authority.
    pub authority: String,
}

/// A fully validated load run. Build with [`LoadPlan::from_args`] or fill the
/// fields directly (Gherkin steps).
#[derive(Clone)]
pub struct LoadPlan {
    pub target: Target,
    pub mode: Mode,
    pub stop: Stop,
    pub warmup: Duration,
    pub http2: bool,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub client: ClientChoice,
    pub tenant: Option<String>,
    pub tier: Option<String>,
    pub report_dir: Option<PathBuf>,
    pub name: String,
    pub progress: bool,
}

impl std::fmt::Debug for LoadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadPlan")
            .field("url", &self.target.uri)
            .field("mode", &self.mode)
            .field("stop", &self.stop)
            .field("warmup", &self.warmup)
            .field("http2", &self.http2)
            .field("method", &self.method)
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

fn flag_duration(flag: &str, text: &str) -> Result<Duration> {
    parse_duration(text).map_err(|e| LoadError::input(format!("{flag}: {e}")))
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| LoadError::input(format!("{flag} {}: cannot read: {e}", path.display())))
}

/// Parses "name: value" as given to -H.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| LoadError::input(format!("-H '{text}': expected 'name: value'")))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| LoadError::input(format!("-H '{text}': invalid header name")))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| LoadError::input(format!("-H '{text}': invalid header value")))?;
    Ok((name, value))
}

/// Parses and checks the target URL.
pub fn parse_target(url: &str) -> Result<Target> {
    let bad = |why: &str| LoadError::input(format!("URL '{url}': {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(bad(&format!("unsupported scheme '{other}'"))),
        None => return Err(bad("missing scheme (http:// or https://)")),
    };
    let host = uri.host().ok_or_else(|| bad("missing host"))?;
    // Strip IPv6 brackets for connecting; keep them in the authority.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    // Always carry a path so HTTP/1 origin-form and HTTP/2 :path are valid.
    let uri = if uri.path_and_query().is_none() {
        Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| bad(&format!("{e}")))?
    } else {
        uri
    };
    Ok(Target {
        uri,
        https,
        host: bare,
        port,
        authority,
    })
}

impl LoadPlan {
    /// Validates raw flags. Every error is `LoadError::Input` naming the flag or file.
    pub fn from_args(args: &LoadArgs) -> Result<LoadPlan> {
        let target = parse_target(&args.url)?;

        let mode = match (args.rate, args.connections) {
            (Some(_), Some(_)) => {
                return Err(LoadError::input(
                    "--rate and --connections conflict: --rate is open loop, --connections closed loop",
                ));
            }
            (Some(r), None) if !(r.is_finite() && r > 0.0) => {
                return Err(LoadError::input(format!(
                    "--rate {r}: must be a positive number"
                )));
            }
            (Some(rate), None) => Mode::Open {
                rate,
                max_connections: DEFAULT_MAX_OPEN_CONNECTIONS,
            },
            (None, Some(0)) => return Err(LoadError::input("--connections 0: must be at least 1")),
            (None, Some(c)) => Mode::Closed { connections: c },
            (None, None) => Mode::Closed { connections: 1 },
        };

        let stop = match (&args.duration, args.requests) {
            (Some(_), Some(_)) => {
                return Err(LoadError::input(
                    "--duration and --requests conflict: give one",
                ));
            }
            (Some(d), None) => {
                let d = flag_duration("--duration", d)?;
                if d.is_zero() {
                    return Err(LoadError::input("--duration: must be greater than zero"));
                }
                Stop::Duration(d)
            }
            (None, Some(0)) => return Err(LoadError::input("--requests 0: must be at least 1")),
            (None, Some(n)) => Stop::Requests(n),
            (None, None) => Stop::Duration(DEFAULT_DURATION),
        };

        let warmup = match &args.warmup {
            Some(w) => flag_duration("--warmup", w)?,
            None => Duration::ZERO,
        };
        let timeout = flag_duration("--timeout", &args.timeout)?;
        if timeout.is_zero() {
            return Err(LoadError::input("--timeout: must be greater than zero"));
        }

        let method = Method::from_bytes(args.method.as_bytes())
            .map_err(|_| LoadError::input(format!("-X '{}': invalid method", args.method)))?;
        let mut headers = HeaderMap::new();
        for h in &args.headers {
            let (name, value) = parse_header(h)?;
            headers.append(name, value);
        }
        let body = match &args.body {
            Some(path) => Bytes::from(read_file("--body", path)?),
            None => Bytes::new(),
        };

        let tls = if target.https {
            let ca = args
                .cacert
                .as_ref()
                .ok_or_else(|| LoadError::input("--cacert is required for https:// URLs"))?;
            let ca_pem = read_file("--cacert", ca)?;
            let client = match (&args.cert, &args.key) {
                (Some(c), Some(k)) => Some((read_file("--cert", c)?, read_file("--key", k)?)),
                (None, None) => None,
                _ => return Err(LoadError::input("--cert and --key must be given together")),
            };
            Some(tls::client_config(&ca_pem, client, args.http2)?)
        } else {
            if args.cacert.is_some() || args.cert.is_some() || args.key.is_some() {
                return Err(LoadError::input(
                    "--cacert/--cert/--key need an https:// URL",
                ));
            }
            None
        };

        if args.name.is_empty() || args.name.contains(['/', '\\']) {
            return Err(LoadError::input(format!(
                "--name '{}': must be a plain file name",
                args.name
            )));
        }

        let client = match args.client.as_str() {
            "auto" => ClientChoice::Auto,
            "hyper" => ClientChoice::Hyper,
            "fast" => ClientChoice::Fast,
            other => {
                return Err(LoadError::input(format!(
                    "--client '{other}': expected auto, hyper or fast"
                )));
            }
        };

        let plan = LoadPlan {
            target,
            mode,
            stop,
            warmup,
            http2: args.http2,
            method,
            headers,
            body,
            tls,
            timeout,
            client,
            tenant: args.tenant.clone(),
            tier: args.tier.clone(),
            report_dir: args.report_dir.clone(),
            name: args.name.clone(),
            progress: !args.no_progress,
        };
        if client == ClientChoice::Fast && !crate::http1::eligible(&plan) {
            return Err(LoadError::input(
                "--client fast: needs the closed loop over http:// without --http2",
            ));
        }
        Ok(plan)
    }

    /// "open" or "closed", as written in summary.json.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> LoadArgs {
        LoadArgs::for_url(url)
    }

    fn input_err(a: &LoadArgs) -> String {
        match LoadPlan::from_args(a) {
            Err(LoadError::Input(m)) => m,
            other => panic!("expected input error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_closed_one_connection_ten_seconds() {
        let p = LoadPlan::from_args(&args("http://127.0.0.1:8080")).unwrap();
        assert_eq!(p.mode, Mode::Closed { connections: 1 });
        assert_eq!(p.stop, Stop::Duration(DEFAULT_DURATION));
        assert_eq!(p.target.uri.path(), "/");
        assert_eq!(p.target.authority, "127.0.0.1:8080");
    }

    #[test]
    fn bad_inputs_name_the_flag() {
        assert!(input_err(&args("ftp://x")).contains("URL"));
        assert!(input_err(&args("not a url")).contains("URL"));
        let mut a = args("http://h");
        a.rate = Some(10.0);
        a.connections = Some(2);
        assert!(input_err(&a).contains("--rate"));
        let mut a = args("http://h");
        a.duration = Some("ten".into());
        assert!(input_err(&a).contains("--duration"));
        let mut a = args("http://h");
        a.headers = vec!["no-colon".into()];
        assert!(input_err(&a).contains("-H"));
        let mut a = args("http://h");
        a.body = Some("/nonexistent/body.json".into());
        assert!(input_err(&a).contains("/nonexistent/body.json"));
        let mut a = args("https://h");
        a.cacert = Some("/nonexistent/ca.pem".into());
        assert!(input_err(&a).contains("--cacert"));
        let mut a = args("http://h");
        a.timeout = "0s".into();
        assert!(input_err(&a).contains("--timeout"));
    }

    #[test]
    fn headers_parse() {
        let (n, v) = parse_header("Authorization:  Bearer abc ").unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer abc");
    }
}
