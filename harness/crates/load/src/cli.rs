//! Raw command-line flags for `meshtest load` and `meshtest report compare`.
//!
//! These structs hold flags exactly as typed; [`crate::plan::LoadPlan::from_args`]
//! validates them into a typed plan (ripgrep style), so every mistake is reported
//! as a `LoadError::Input` naming the flag, whoever built the args.

use std::path::PathBuf;

/// `meshtest load URL [--rate R | --connections C] [--duration D | --requests N] ...`
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URL (http:// or https://).
    pub url: String,

    /// Open loop: send this many requests per second at fixed intended times
    /// (0.01 to 10000000).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Closed loop: keep this many connections busy as fast as they go. With
    /// --rate: the most connections the open loop opens (default 512).
    /// 1 to 100000.
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,

    /// Generator threads, each with its own connections and share of the
    /// schedule (default: one per core this process may use; 1 to 1024).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,

    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s; at most 30 days).
    #[arg(long, short = 'd', conflicts_with = "requests")]
    pub duration: Option<String>,

    /// Stop after this many measured requests (1 to 1000000000).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Send load for this long before measuring, e.g. 2s (at most 1 day).
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

    /// Per-request timeout, e.g. 10s (at most 1h).
    #[arg(long, default_value = "10s")]
    pub timeout: String,

    /// Pass/fail rule checked after the run (repeatable), e.g. 'p99<500ms',
    /// 'errors<1%', 'rps>=100'. Any failed rule makes the exit code 1.
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<String>,

    /// Where to write the report (default reports/<timestamp>/).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,

    /// Report name: NAME.hgrm and the title of index.html.
    #[arg(long, default_value = "load")]
    pub name: String,

    /// Do not print live progress on stderr.
    #[arg(long)]
    pub no_progress: bool,

    /// Serve the generator's live metrics (requests, errors, latency quantiles, saturation)
    /// in Prometheus' text format at http://ADDR/metrics while it runs.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Run the load as N processes of this binary (1 to 64), each with 1/N of the rate (its
    /// share of the one schedule) or of the connections and requests; their HDR histograms
    /// merge exactly into one report, with a row per worker in summary.json.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,

    /// Worker mode (set by a parent's --workers): write the record to this file instead of a
    /// report.
    #[arg(long, hide = true)]
    pub worker_out: Option<PathBuf>,

    /// Worker mode: start the schedule at this Unix time, microseconds.
    #[arg(long, hide = true)]
    pub worker_start: Option<u64>,

    /// HTTP client: auto (hand-rolled HTTP/1.1 over http://, hyper
    /// otherwise), hyper, or fast.
    #[arg(long, hide = true, default_value = "auto")]
    pub client: String,

    /// Open loop: least time between two send rounds of a generator thread
    /// sending 10000/s or more, e.g. 1ms (the default; 0s to 10ms); less in
    /// proportion below that rate. Requests due within it leave together.
    #[arg(long, hide = true)]
    pub send_batch: Option<String>,
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
            thresholds: Vec::new(),
            report_dir: None,
            name: "load".into(),
            no_progress: false,
            metrics_listen: None,
            client: "auto".into(),
            threads: None,
            send_batch: None,
            workers: 1,
            worker_out: None,
            worker_start: None,
        }
    }
}

/// `meshtest report compare BASE CUR [--max-p99-regression PCT]
/// [--max-error-rate-increase PP] [--min-throughput-ratio R]`
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Baseline report directory or summary.json.
    pub base: PathBuf,
    /// Current report directory or summary.json.
    pub cur: PathBuf,
    /// Fail when CUR p99 exceeds BASE p99 by more than this percentage (0-10000).
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    pub max_p99_regression: f64,
    /// Fail when CUR's error rate exceeds BASE's by more than this many
    /// percentage points (0-100).
    #[arg(long, value_name = "PP", default_value_t = 0.5)]
    pub max_error_rate_increase: f64,
    /// Fail when CUR's achieved rate is below this fraction of BASE's (0-1).
    #[arg(long, value_name = "RATIO", default_value_t = 0.95)]
    pub min_throughput_ratio: f64,
}

impl CompareArgs {
    /// The two reports with the default gates.
    pub fn new(base: impl Into<PathBuf>, cur: impl Into<PathBuf>) -> Self {
        CompareArgs {
            base: base.into(),
            cur: cur.into(),
            max_p99_regression: 10.0,
            max_error_rate_increase: 0.5,
            min_throughput_ratio: 0.95,
        }
    }
}
