//! Validated run configuration built from raw [`LoadArgs`] flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::cli::LoadArgs;
use crate::duration;
use crate::error::{LoadError, Result};
use crate::limits::{check_generator, check_numbers};
use crate::threshold::{self, Threshold};
use crate::tls;

pub use crate::target::{Target, parse_header, parse_target};

/// Default measured duration when neither --duration nor --requests is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Open loop: the connection pool's least default cap (`--connections` with
/// `--rate` sets another); see [`default_pool`].
pub const DEFAULT_MAX_OPEN_CONNECTIONS: usize = 64;
/// Open loop: least time between two send rounds of a generator thread at
/// [`FULL_BATCH_RATE`] per thread and above (the hidden `--send-batch`);
/// requests due within it leave together. Below that rate the batch shrinks
/// in proportion (see [`LoadPlan::batch_at`]). 1 ms is wrk2's granularity:
/// at 10,000/s it cuts the generator's wake-ups per request by more than
/// half against 200 µs, and the target's work per request with them.
pub const DEFAULT_SEND_BATCH: Duration = Duration::from_millis(1);
/// Per-thread rate from which the whole `send_batch` applies.
pub const FULL_BATCH_RATE: f64 = 10_000.0;
/// Longest `--send-batch`.
pub const MAX_SEND_BATCH: Duration = Duration::from_millis(10);
/// Most `--threads`.
pub const MAX_THREADS: usize = 1024;

/// Smallest --rate, requests per second (one request every 100 s).
pub const MIN_RATE: f64 = 0.01;
/// Largest --rate, requests per second.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Longest --duration: 30 days.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// Longest --warmup: 1 day.
pub const MAX_WARMUP: Duration = Duration::from_secs(86_400);
/// Longest --timeout: 1 hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Most requests one run may send: --requests, and in the open loop every
/// scheduled request (warmup included).
pub const MAX_REQUESTS: u64 = 1_000_000_000;
/// Most --connections (and the open loop's in-flight cap).
pub const MAX_CONNECTIONS: usize = 100_000;

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
    /// Where to serve live metrics (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--threshold` rules, judged by [`crate::run_load`] after the run.
    pub thresholds: Vec<Threshold>,
    /// Generator threads asked for; None: one per core the process may use.
    pub threads: Option<usize>,
    /// Open loop: least time between two send rounds of a thread.
    pub send_batch: Duration,
    /// Set it to end the run early: no request starts after it is set (the generator
    /// threads outlive an aborted future, so a caller that gives up must say so here).
    pub cancel: Arc<AtomicBool>,
    /// Worker mode: when the schedule starts (a parent's `--workers` sets it).
    pub start_at: Option<std::time::SystemTime>,
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
            .field("thresholds", &self.thresholds)
            .field("threads", &self.threads)
            .field("send_batch", &self.send_batch)
            .finish_non_exhaustive()
    }
}

fn flag_duration(flag: &str, text: &str) -> Result<Duration> {
    duration::parse(text).map_err(|e| LoadError::input(format!("{flag}: {e}")))
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| LoadError::input(format!("{flag} {}: cannot read: {e}", path.display())))
}

/// The open loop's default connection cap at `rate`: enough connections to
/// carry the rate at 1 ms per response (one per 1,000/s), and at least 64 (as
/// many as wrk2 is run with). Connections open on demand, so a fast target
/// uses about rate x latency of them; the cap bites only when the target
/// slows down, and then requests wait for a connection, which counts as
/// latency (measured from the intended send time). A small pool of busy
/// connections is also what the target serves best: against Envoy on one
/// core, 512 connections at 30,000/s cost it so much more per request than 64
/// that its queue, and the latency, grew by two orders of magnitude.
pub fn default_pool(rate: f64) -> usize {
    let per_ms = (rate / 1000.0).ceil();
    if per_ms.is_finite() && per_ms > DEFAULT_MAX_OPEN_CONNECTIONS as f64 {
        (per_ms as usize).min(MAX_CONNECTIONS)
    } else {
        DEFAULT_MAX_OPEN_CONNECTIONS
    }
}

impl LoadPlan {
    /// Validates raw flags. Every error is `LoadError::Input` naming the flag or file.
    pub fn from_args(args: &LoadArgs) -> Result<LoadPlan> {
        let target = parse_target(&args.url)?;

        let mode = match (args.rate, args.connections) {
            (Some(rate), cap) => Mode::Open {
                rate,
                max_connections: cap.unwrap_or_else(|| default_pool(rate)),
            },
            (None, Some(c)) => Mode::Closed { connections: c },
            (None, None) => Mode::Closed { connections: 1 },
        };

        let stop = match (&args.duration, args.requests) {
            (Some(_), Some(_)) => {
                return Err(LoadError::input(
                    "--duration and --requests conflict: give one",
                ));
            }
            (Some(d), None) => Stop::Duration(flag_duration("--duration", d)?),
            (None, Some(n)) => Stop::Requests(n),
            (None, None) => Stop::Duration(DEFAULT_DURATION),
        };

        let warmup = match &args.warmup {
            Some(w) => flag_duration("--warmup", w)?,
            None => Duration::ZERO,
        };
        let timeout = flag_duration("--timeout", &args.timeout)?;
        check_numbers(mode, stop, warmup, timeout)?;
        let send_batch = match &args.send_batch {
            Some(b) => flag_duration("--send-batch", b)?,
            None => DEFAULT_SEND_BATCH,
        };
        check_generator(args.threads, send_batch)?;

        let thresholds = args
            .thresholds
            .iter()
            .map(|t| threshold::parse(t).map_err(|e| LoadError::input(format!("--threshold {e}"))))
            .collect::<Result<Vec<_>>>()?;

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
            metrics_listen: args.metrics_listen,
            thresholds,
            threads: args.threads,
            send_batch,
            cancel: Arc::new(AtomicBool::new(false)),
            start_at: worker_start(args.worker_start)?,
        };
        if client == ClientChoice::Fast && !crate::http1::eligible(&plan) {
            return Err(LoadError::input(
                "--client fast: needs http:// without --http2",
            ));
        }
        Ok(plan)
    }

    /// Checks the plan's numbers (rate, connections, duration, requests, warmup,
    /// timeout) against their ranges, as [`LoadPlan::from_args`] does; [`crate::run`]
    /// calls it so a plan filled in by hand cannot overflow the schedule either.
    pub fn validate(&self) -> Result<()> {
        check_numbers(self.mode, self.stop, self.warmup, self.timeout)?;
        check_generator(self.threads, self.send_batch)
    }

    /// The send batch of a thread sending `rate_per_thread` requests/s:
    /// `send_batch` from [`FULL_BATCH_RATE`] up, proportionally less below, so
    /// slow schedules keep their exact send times (1,000/s: batches of 100 µs,
    /// a tenth of the interval) and only busy threads trade a little
    /// lateness, which is counted, for fewer wake-ups.
    pub fn batch_at(&self, rate_per_thread: f64) -> Duration {
        let share = (rate_per_thread / FULL_BATCH_RATE).clamp(0.0, 1.0);
        self.send_batch
            .mul_f64(if share.is_nan() { 0.0 } else { share })
    }

    /// Generator threads the run uses: `threads` (default: every core the
    /// process may run on), but no more than there are connections to give
    /// each one (or, open loop, requests to send).
    pub fn lanes(&self) -> usize {
        let asked = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let most = match self.mode {
            Mode::Open {
                rate,
                max_connections,
            } => {
                let s = crate::schedule::Schedule::new(
                    std::time::Instant::now(),
                    rate,
                    self.warmup,
                    self.stop,
                );
                max_connections.min(usize::try_from(s.total()).unwrap_or(usize::MAX))
            }
            Mode::Closed { connections } => connections,
        };
        asked.min(most).clamp(1, MAX_THREADS)
    }

    /// "open" or "closed", as written in summary.json.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        }
    }
}

/// `--worker-start MICROS`: a Unix time at most a minute ahead (a parent sets it a moment ahead).
fn worker_start(micros: Option<u64>) -> Result<Option<std::time::SystemTime>> {
    let Some(us) = micros else {
        return Ok(None);
    };
    let at = std::time::UNIX_EPOCH + Duration::from_micros(us);
    let ahead = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    if ahead > Duration::from_secs(60) {
        return Err(LoadError::input("--worker-start: more than a minute ahead"));
    }
    Ok(Some(at))
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
        a.threads = Some(0);
        assert!(input_err(&a).contains("--threads"));
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

    type Set = fn(&mut LoadArgs);

    #[test]
    fn every_numeric_flag_is_range_checked() {
        let cases: Vec<(&str, Set)> = vec![
            ("--rate", |a| a.rate = Some(0.0)),
            ("--rate", |a| a.rate = Some(-5.0)),
            ("--rate", |a| a.rate = Some(f64::NAN)),
            ("--rate", |a| a.rate = Some(f64::INFINITY)),
            ("--rate", |a| a.rate = Some(1e-300)),
            ("--rate", |a| a.rate = Some(0.009)),
            ("--rate", |a| a.rate = Some(1e300)),
            ("--rate", |a| a.rate = Some(10_000_001.0)),
            ("--connections", |a| a.connections = Some(0)),
            ("--connections", |a| a.connections = Some(100_001)),
            ("--connections", |a| a.connections = Some(usize::MAX)),
            ("--threads", |a| a.threads = Some(0)),
            ("--threads", |a| a.threads = Some(MAX_THREADS + 1)),
            ("--send-batch", |a| a.send_batch = Some("11ms".into())),
            ("--send-batch", |a| a.send_batch = Some("fast".into())),
            ("--requests", |a| a.requests = Some(0)),
            ("--requests", |a| a.requests = Some(1_000_000_001)),
            ("--requests", |a| a.requests = Some(u64::MAX)),
            ("--duration", |a| a.duration = Some("0s".into())),
            ("--duration", |a| a.duration = Some("721h".into())),
            ("--duration", |a| a.duration = Some("-1s".into())),
            ("--duration", |a| {
                a.duration = Some("99999999999999999999h".into())
            }),
            ("--warmup", |a| a.warmup = Some("25h".into())),
            ("--warmup", |a| a.warmup = Some("1e3s".into())),
            ("--timeout", |a| a.timeout = "0s".into()),
            ("--timeout", |a| a.timeout = "61m".into()),
            ("--timeout", |a| a.timeout = "10".into()),
            ("--threshold", |a| a.thresholds = vec!["p99<1000".into()]),
            ("--threshold", |a| a.thresholds = vec!["p95<1s".into()]),
        ];
        for (flag, set) in cases {
            let mut a = args("http://127.0.0.1:8080");
            set(&mut a);
            let e = input_err(&a);
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
        // The edges themselves are fine.
        for set in [
            |a: &mut LoadArgs| a.rate = Some(MIN_RATE),
            |a: &mut LoadArgs| a.rate = Some(MAX_RATE),
            |a: &mut LoadArgs| a.connections = Some(MAX_CONNECTIONS),
            |a: &mut LoadArgs| a.requests = Some(MAX_REQUESTS),
            |a: &mut LoadArgs| a.duration = Some("720h".into()),
            |a: &mut LoadArgs| a.warmup = Some("24h".into()),
            |a: &mut LoadArgs| a.timeout = "1h".into(),
            |a: &mut LoadArgs| a.threads = Some(MAX_THREADS),
            |a: &mut LoadArgs| a.send_batch = Some("0s".into()),
        ] {
            let mut a = args("http://127.0.0.1:8080");
            set(&mut a);
            LoadPlan::from_args(&a).unwrap();
        }
    }

    #[test]
    fn the_open_loop_schedule_is_bounded() {
        let open = |rate: f64, f: &dyn Fn(&mut LoadArgs)| {
            let mut a = args("http://127.0.0.1:8080");
            a.rate = Some(rate);
            f(&mut a);
            LoadPlan::from_args(&a)
        };
        // 1e7/s for 100 s would be 1e9 + 1 requests... exactly 1e9 is fine.
        open(MAX_RATE, &|a| a.duration = Some("100s".into())).unwrap();
        let e = open(MAX_RATE, &|a| a.duration = Some("101s".into())).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--rate 10000000 with --duration 101s schedules 1.01e9 requests"),
            "{e}"
        );
        assert!(e.to_string().ends_with("lower --rate or --duration"), "{e}");
        let e = open(MAX_RATE, &|a| {
            a.duration = Some("60s".into());
            a.warmup = Some("60s".into());
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("--duration 1m and --warmup 1m"),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("lower --rate, --duration or --warmup"),
            "{e}"
        );
        let e = open(MAX_RATE, &|a| {
            a.requests = Some(MAX_REQUESTS);
            a.warmup = Some("1s".into());
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("--requests 1000000000 and --warmup 1s"),
            "{e}"
        );
        // --requests at a slow rate must not take longer than the longest --duration.
        let e = open(MIN_RATE, &|a| a.requests = Some(1_000_000)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--requests 1000000 at --rate 0.01"),
            "{e}"
        );
        open(MIN_RATE, &|a| a.requests = Some(25_920)).unwrap();
        // The reported cases.
        for (rate, f) in [
            (
                1e300,
                &(|a: &mut LoadArgs| a.duration = Some("1s".into())) as &dyn Fn(&mut LoadArgs),
            ),
            (1e300, &|a: &mut LoadArgs| a.warmup = Some("1s".into())),
            (1e-300, &|_: &mut LoadArgs| {}),
        ] {
            assert!(open(rate, f).unwrap_err().to_string().starts_with("--rate"));
        }
    }

    #[test]
    fn hand_filled_plans_are_checked_too() {
        let mut p = LoadPlan::from_args(&args("http://127.0.0.1:8080")).unwrap();
        p.validate().unwrap();
        p.mode = Mode::Open {
            rate: 1e300,
            max_connections: 1024,
        };
        assert!(p.validate().unwrap_err().to_string().starts_with("--rate"));
        p.mode = Mode::Open {
            rate: 10.0,
            max_connections: 0,
        };
        assert!(p.validate().is_err());
        p.mode = Mode::Closed { connections: 1 };
        p.stop = Stop::Duration(Duration::MAX);
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--duration")
        );
    }

    #[test]
    fn with_rate_connections_caps_the_pool_and_threads_follow_the_work() {
        let mut a = args("http://127.0.0.1:8080");
        a.rate = Some(100.0);
        a.requests = Some(3);
        let p = LoadPlan::from_args(&a).unwrap();
        assert_eq!(
            p.mode,
            Mode::Open {
                rate: 100.0,
                max_connections: DEFAULT_MAX_OPEN_CONNECTIONS
            }
        );
        assert_eq!(default_pool(65_000.0), 65);
        assert_eq!(p.batch_at(50_000.0), DEFAULT_SEND_BATCH);
        assert_eq!(p.batch_at(1_000.0), DEFAULT_SEND_BATCH / 10);
        assert_eq!(p.batch_at(f64::NAN), Duration::ZERO);
        assert_eq!(default_pool(1e7), 10_000);
        assert_eq!(default_pool(f64::NAN), 64);
        a.connections = Some(2);
        a.threads = Some(8);
        let p = LoadPlan::from_args(&a).unwrap();
        assert_eq!(
            p.mode,
            Mode::Open {
                rate: 100.0,
                max_connections: 2
            }
        );
        // Two connections: two threads at most (each needs one).
        assert_eq!(p.lanes(), 2);
        a.connections = None;
        // Three requests: three threads at most.
        assert_eq!(LoadPlan::from_args(&a).unwrap().lanes(), 3);
        let mut c = args("http://127.0.0.1:8080");
        c.connections = Some(5);
        c.threads = Some(3);
        assert_eq!(LoadPlan::from_args(&c).unwrap().lanes(), 3);
        c.threads = Some(1);
        assert_eq!(LoadPlan::from_args(&c).unwrap().lanes(), 1);
    }

    #[test]
    fn thresholds_are_parsed_into_the_plan() {
        let mut a = args("http://127.0.0.1:8080");
        a.thresholds = vec!["p99<1000ms".into(), "errors<1%".into()];
        let p = LoadPlan::from_args(&a).unwrap();
        assert_eq!(p.thresholds.len(), 2);
        assert_eq!(p.thresholds[0].limit, 1000.0);
        a.thresholds.push("p99<<1s".into());
        let e = input_err(&a);
        assert!(e.starts_with("--threshold 'p99<<1s': "), "{e}");
    }
}
