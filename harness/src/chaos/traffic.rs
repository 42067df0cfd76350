//! The load that runs through an experiment, on the load engine's open loop: one short segment
//! per route per second, started on the second whatever earlier ones are doing (a hung request
//! never slows the schedule), each reduced to a compact slice once it completes. Requests are
//! attributed to the second they were sent in, so a fault window holds exactly the requests sent
//! while the fault was in force.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use meshtest_load::{ErrorKind, LoadArgs, LoadPlan, Mode, Stop};

/// One route's requests sent during one second.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    pub requests: u64,
    /// Requests without a 1xx-3xx answer (errors and 4xx/5xx).
    pub failures: u64,
    pub status: BTreeMap<u16, u64>,
    /// No answer at all, by kind (connect, reset, tls, timeout, other).
    pub errors: BTreeMap<&'static str, u64>,
    /// Latency of every answer as (µs, count), from the intended send time.
    pub latency: Vec<(u64, u64)>,
    /// Answers by the version in their body (`{"version": ...}`).
    pub versions: BTreeMap<String, u64>,
}

impl Slice {
    fn of(rec: &meshtest_load::record::Recorder) -> Slice {
        Slice {
            requests: rec.total(),
            failures: rec.failed(),
            status: rec.status.clone(),
            errors: ErrorKind::ALL
                .iter()
                .filter(|k| rec.errors.get(**k) > 0)
                .map(|k| (k.name(), rec.errors.get(*k)))
                .collect(),
            latency: rec
                .latency
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            versions: rec
                .by_version
                .iter()
                .map(|(v, h)| (v.clone(), h.len()))
                .collect(),
        }
    }
}

/// Everything sent in some seconds, over some routes, merged.
#[derive(Debug, Clone)]
pub struct Window {
    pub requests: u64,
    pub failures: u64,
    pub status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub latency: Histogram<u64>,
    pub versions: BTreeMap<String, u64>,
    /// Seconds in the window whose requests have not all completed yet.
    pub pending_seconds: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            failures: 0,
            status: BTreeMap::new(),
            errors: BTreeMap::new(),
            latency: meshtest_load::record::new_histogram(),
            versions: BTreeMap::new(),
            pending_seconds: 0,
        }
    }
}

impl Window {
    /// Everything one load run recorded.
    pub fn of(rec: &meshtest_load::record::Recorder) -> Window {
        let mut w = Window::default();
        w.add(&Slice::of(rec));
        w
    }

    fn add(&mut self, s: &Slice) {
        self.requests += s.requests;
        self.failures += s.failures;
        for (k, v) in &s.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (k, v) in &s.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (us, n) in &s.latency {
            let _ = self.latency.record_n(*us, *n);
        }
        for (k, v) in &s.versions {
            *self.versions.entry(k.clone()).or_default() += v;
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 / self.requests as f64)
    }

    /// Latency at quantile q of the answers; None without answers.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.latency.is_empty()).then(|| Duration::from_micros(self.latency.value_at_quantile(q)))
    }

    pub fn timeouts(&self) -> u64 {
        self.errors.get("timeout").copied().unwrap_or(0)
    }

    /// "n=250, 3 failed (503 x3), p50 4.1 ms, p99 9.8 ms, max 12.0 ms"
    pub fn describe(&self) -> String {
        let mut codes: Vec<String> = self
            .status
            .iter()
            .filter(|(s, _)| **s >= 400)
            .map(|(s, n)| format!("{s} x{n}"))
            .collect();
        codes.extend(self.errors.iter().map(|(k, n)| format!("{k} x{n}")));
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1000.0)
            })
        };
        format!(
            "n={}, {} failed{}, p50 {}, p99 {}, max {}{}",
            self.requests,
            self.failures,
            if codes.is_empty() {
                String::new()
            } else {
                format!(" ({})", codes.join(", "))
            },
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            if self.pending_seconds > 0 {
                format!(", {} s still in flight", self.pending_seconds)
            } else {
                String::new()
            }
        )
    }
}

/// A route of the load, ready to be cut into seconds.
#[derive(Clone)]
pub struct Stream {
    pub key: String,
    pub rate: f64,
    pub plan: LoadPlan,
}

impl Stream {
    /// A stream of `rate` requests per second to `url` with `headers`, each timing out after
    /// `timeout`. Built through the load engine's own flag validation.
    pub fn new(
        key: &str,
        url: &str,
        method: &str,
        headers: &[(String, String)],
        rate: f64,
        timeout: Duration,
    ) -> Result<Stream> {
        let mut args = LoadArgs::for_url(url);
        args.rate = Some(rate);
        args.requests = Some(1);
        args.method = method.to_string();
        args.headers = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        args.timeout = format!("{}ms", timeout.as_millis());
        args.no_progress = true;
        // One generator thread per segment: a second's worth of requests needs no more, and a
        // segment starts every second.
        args.threads = Some(1);
        args.name = "chaos".into();
        let plan =
            LoadPlan::from_args(&args).map_err(|e| anyhow::anyhow!("load route {key}: {e}"))?;
        Ok(Stream {
            key: key.to_string(),
            rate,
            plan,
        })
    }

    /// Requests intended in second `k`: spread so that `n` seconds carry `rate * n` of them.
    fn requests_in(&self, k: u64) -> u64 {
        let f = |k: u64| (self.rate * k as f64).floor() as u64;
        f(k + 1) - f(k)
    }
}

#[derive(Default)]
struct Seconds {
    /// second -> route -> slice (absent while its segment runs).
    done: Vec<BTreeMap<String, Slice>>,
    /// How many segments each second started.
    started: Vec<usize>,
}

/// Load running in the background.
pub struct Traffic {
    pub start: Instant,
    streams: Vec<String>,
    seconds: Arc<Mutex<Seconds>>,
    stop: Arc<tokio::sync::Notify>,
    driver: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    segments: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl Traffic {
    /// Starts the streams now; they send for at most `limit` (the experiment's bound), and
    /// until [`Traffic::stop`].
    pub fn start(streams: Vec<Stream>, limit: Duration) -> Traffic {
        let start = Instant::now();
        let seconds = Arc::new(Mutex::new(Seconds::default()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let segments = Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
        let keys = streams.iter().map(|s| s.key.clone()).collect();
        let driver = {
            let (seconds, stop, segments) = (seconds.clone(), stop.clone(), segments.clone());
            tokio::spawn(async move {
                for k in 0..limit.as_secs().max(1) {
                    let at = tokio::time::Instant::from_std(start + Duration::from_secs(k));
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = stop.notified() => return,
                    }
                    let mut set = segments.lock().await;
                    let mut n = 0;
                    for s in &streams {
                        let count = s.requests_in(k);
                        if count == 0 {
                            continue;
                        }
                        n += 1;
                        let mut plan = s.plan.clone();
                        plan.mode = Mode::Open {
                            rate: s.rate,
                            max_connections: (count as usize).max(1),
                        };
                        plan.stop = Stop::Requests(count);
                        let (seconds, key) = (seconds.clone(), s.key.clone());
                        set.spawn(async move {
                            let slice = match meshtest_load::run(&plan).await {
                                Ok(r) => Slice::of(&r.recorder),
                                // The plan was validated: a run that cannot start is counted
                                // as requests that got no answer.
                                Err(_) => Slice {
                                    requests: count,
                                    failures: count,
                                    errors: [("other", count)].into_iter().collect(),
                                    ..Slice::default()
                                },
                            };
                            let mut secs = seconds.lock().expect("seconds lock");
                            let i = k as usize;
                            if secs.done.len() <= i {
                                secs.done.resize_with(i + 1, BTreeMap::new);
                            }
                            secs.done[i].insert(key, slice);
                        });
                    }
                    while set.try_join_next().is_some() {}
                    drop(set);
                    let mut secs = seconds.lock().expect("seconds lock");
                    let i = k as usize;
                    if secs.started.len() <= i {
                        secs.started.resize(i + 1, 0);
                    }
                    secs.started[i] = n;
                }
            })
        };
        Traffic {
            start,
            streams: keys,
            seconds,
            stop,
            driver: std::sync::Mutex::new(Some(driver)),
            segments,
        }
    }

    /// Stops starting new seconds (those started run to completion: [`Traffic::drain`]).
    pub fn stop(&self) {
        // notify_one keeps a permit when the driver is not waiting at this instant.
        self.stop.notify_one();
    }

    /// Waits for every started segment to complete, at most `deadline`; false if some did not.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.stop();
        let driver = self.driver.lock().expect("driver lock").take();
        if let Some(d) = driver {
            let _ = d.await;
        }
        let segments = self.segments.clone();
        let wait = async move {
            let mut set = segments.lock().await;
            while set.join_next().await.is_some() {}
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }

    /// Seconds since the load started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The route keys.
    pub fn routes(&self) -> &[String] {
        &self.streams
    }

    /// The number of leading seconds whose requests have all completed.
    pub fn complete_seconds(&self) -> u64 {
        let secs = self.seconds.lock().expect("seconds lock");
        let mut n = 0;
        while n < secs.started.len() && secs.done.get(n).map_or(0, |d| d.len()) >= secs.started[n] {
            n += 1;
        }
        n as u64
    }

    /// Have all the requests sent in second `k` completed?
    pub fn is_complete(&self, k: u64) -> bool {
        let secs = self.seconds.lock().expect("seconds lock");
        let i = k as usize;
        i < secs.started.len() && secs.done.get(i).map_or(0, |d| d.len()) >= secs.started[i]
    }

    /// The latest second whose requests have all completed (earlier ones may still wait on
    /// hung requests).
    pub fn last_complete(&self) -> Option<u64> {
        let secs = self.seconds.lock().expect("seconds lock");
        (0..secs.started.len())
            .rev()
            .find(|&i| secs.done.get(i).map_or(0, |d| d.len()) >= secs.started[i])
            .map(|i| i as u64)
    }

    /// Requests sent in seconds `[from, to)` on `routes` (all when empty), merged.
    /// The last complete second, if there is one yet (the live view's figures).
    pub fn last_second(&self) -> Option<Window> {
        let k = self.last_complete()?;
        Some(self.window(k, k + 1, &[]))
    }

    pub fn window(&self, from: u64, to: u64, routes: &[String]) -> Window {
        let secs = self.seconds.lock().expect("seconds lock");
        let mut w = Window::default();
        for k in from..to {
            let i = k as usize;
            let started = secs.started.get(i).copied().unwrap_or(0);
            let done = secs.done.get(i);
            if done.map_or(0, |d| d.len()) < started {
                w.pending_seconds += 1;
            }
            if let Some(d) = done {
                for (key, slice) in d {
                    if routes.is_empty() || routes.contains(key) {
                        w.add(slice);
                    }
                }
            }
        }
        w
    }

    /// Per-second rows for reports: (second, window of all routes).
    pub fn per_second(&self, to: u64, routes: &[String]) -> Vec<(u64, Window)> {
        (0..to)
            .map(|k| (k, self.window(k, k + 1, routes)))
            .collect()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.driver.lock().ok().and_then(|mut d| d.take()) {
            d.abort();
        }
        if let Ok(mut set) = self.segments.try_lock() {
            set.abort_all();
        }
    }
}

/// The rate of each route: `rate` split by weight.
pub fn split_rate(rate: f64, weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| rate * w / total).collect()
}

/// The URL of the ingress gateway for `path`.
pub fn ingress_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_carry_the_rate_over_time() {
        let s = |rate: f64| Stream {
            key: "r".into(),
            rate,
            plan: LoadPlan::from_args(&{
                let mut a = LoadArgs::for_url("http://127.0.0.1:1/");
                a.rate = Some(1.0);
                a.requests = Some(1);
                a
            })
            .unwrap(),
        };
        let total = |rate: f64, secs: u64| (0..secs).map(|k| s(rate).requests_in(k)).sum::<u64>();
        assert_eq!(total(2.5, 10), 25);
        assert_eq!(total(0.5, 10), 5);
        assert_eq!(total(100.0, 3), 300);
    }

    #[test]
    fn windows_merge_and_count_pending_seconds() {
        let mut w = Window::default();
        w.add(&Slice {
            requests: 10,
            failures: 1,
            status: [(200, 9), (503, 1)].into_iter().collect(),
            latency: vec![(1000, 9), (5000, 1)],
            ..Slice::default()
        });
        assert_eq!(w.error_rate(), Some(0.1));
        assert!(w.quantile(0.99).unwrap() >= Duration::from_micros(4990));
        assert!(w.describe().contains("503 x1"), "{}", w.describe());
        assert_eq!(Window::default().error_rate(), None);
    }
}
