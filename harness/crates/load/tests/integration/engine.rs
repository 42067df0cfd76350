//! Engine behaviour: open-loop CO correction, closed loop, error classification.

use std::time::Duration;

use meshtest_load::{ErrorKind, LoadArgs, LoadPlan, LoadResult, Mode, Stop, run};

use crate::server::{self, Behaviour};

fn plan(url: &str, f: impl FnOnce(&mut LoadArgs)) -> LoadPlan {
    let mut a = LoadArgs::for_url(url);
    a.no_progress = true;
    f(&mut a);
    LoadPlan::from_args(&a).unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_the_asked_count_and_rate() {
    let srv = server::start(Behaviour::default()).await;
    let p = plan(&srv.url("/"), |a| {
        a.rate = Some(500.0);
        a.requests = Some(250);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.total(), 250);
    assert_eq!(r.recorder.ok, 250);
    assert_eq!(r.asked_rate(), Some(500.0));
    // 250 requests at 500/s span 0.498 s; achieved must be close to asked.
    let achieved = r.achieved_rate();
    assert!((400.0..=510.0).contains(&achieved), "achieved {achieved}");
}

async fn stall_run(mode_open: bool) -> LoadResult {
    // Request #100 makes the server hold everything for 200 ms.
    let srv = server::start(Behaviour {
        stall_at: Some((100, Duration::from_millis(200))),
        ..Behaviour::default()
    })
    .await;
    let p = plan(&srv.url("/"), |a| {
        if mode_open {
            a.rate = Some(400.0);
            a.requests = Some(400);
        } else {
            a.connections = Some(1);
            a.duration = Some("1s".into());
        }
    });
    run(&p).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let open = stall_run(true).await;
    // ~80 of 400 requests were intended during the 200 ms stall; measured from
    // their intended times they waited 0..200 ms, so p99 is close to 200 ms.
    let p99 = ms(open.quantile(0.99));
    assert!((150.0..=260.0).contains(&p99), "open p99 {p99} ms");
    let p90 = ms(open.quantile(0.90));
    assert!(p90 >= 20.0, "open p90 {p90} ms");

    let closed = stall_run(false).await;
    // One connection: only the request in flight waits, everything else is fast.
    let max = ms(Duration::from_micros(closed.latency().max()));
    assert!(max >= 150.0, "closed max {max} ms");
    let p99_closed = ms(closed.quantile(0.99));
    assert!(
        p99_closed < p99 / 2.0,
        "closed p99 {p99_closed} ms vs open {p99} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_requests_statuses_and_versions() {
    let srv = server::start(Behaviour::default()).await;
    let p = plan(&srv.url("/versions"), |a| {
        a.connections = Some(4);
        a.requests = Some(200);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.total(), 200);
    assert_eq!(r.recorder.status[&200], 200);
    assert_eq!(r.asked_rate(), None);
    let v1 = r.recorder.by_version["v1"].len();
    let v2 = r.recorder.by_version["v2"].len();
    assert_eq!(v1 + v2, 200);
    assert!(v1 > 50 && v2 > 50, "v1 {v1} v2 {v2}");

    let p = plan(&srv.url("/status/503"), |a| {
        a.connections = Some(2);
        a.requests = Some(20);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.status[&503], 20);
    assert_eq!(r.recorder.ok, 0);
    assert_eq!(r.recorder.failed(), 20);
    assert_eq!(r.recorder.class_histogram("5xx").unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_prior_knowledge() {
    let srv = server::start(Behaviour {
        http2: true,
        ..Behaviour::default()
    })
    .await;
    for open in [false, true] {
        let p = plan(&srv.url("/"), |a| {
            a.http2 = true;
            if open {
                a.rate = Some(1000.0);
            } else {
                a.connections = Some(2);
            }
            a.requests = Some(100);
        });
        let r = run(&p).await.unwrap();
        assert_eq!(r.recorder.ok, 100, "open={open}: {:?}", r.recorder.errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_connect_error() {
    let addr = server::closed_port().await;
    let p = plan(&format!("http://{addr}/"), |a| {
        a.connections = Some(2);
        a.requests = Some(10);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.errors.get(ErrorKind::Connect), 10);
    assert_eq!(r.recorder.responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_is_a_timeout_and_hangup_is_a_reset() {
    let srv = server::start(Behaviour::default()).await;
    let p = plan(&srv.url("/sleep/2000"), |a| {
        a.rate = Some(100.0);
        a.requests = Some(5);
        a.timeout = "100ms".into();
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.errors.get(ErrorKind::Timeout), 5);

    let addr = server::start_rude().await;
    let p = plan(&format!("http://{addr}/"), |a| {
        a.connections = Some(1);
        a.requests = Some(5);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(
        r.recorder.errors.get(ErrorKind::Reset),
        5,
        "{:?}",
        r.recorder.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_not_measured_and_duration_bounds_the_run() {
    let srv = server::start(Behaviour::default()).await;
    let p = plan(&srv.url("/"), |a| {
        a.rate = Some(200.0);
        a.warmup = Some("250ms".into());
        a.duration = Some("500ms".into());
    });
    assert_eq!(
        p.mode,
        Mode::Open {
            rate: 200.0,
            max_connections: meshtest_load::plan::DEFAULT_MAX_OPEN_CONNECTIONS
        }
    );
    assert_eq!(p.stop, Stop::Duration(Duration::from_millis(500)));
    let started = std::time::Instant::now();
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.total(), 100);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.warmup, Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_connections_is_not_an_error() {
    let srv = server::start(Behaviour::default()).await;
    for open in [false, true] {
        let p = plan(&srv.url("/close"), |a| {
            if open {
                a.rate = Some(500.0);
            } else {
                a.connections = Some(4);
            }
            a.requests = Some(100);
        });
        let r = run(&p).await.unwrap();
        assert_eq!(r.recorder.ok, 100, "open={open}: {:?}", r.recorder.errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_free_connection_counts_as_latency() {
    // One connection, 20 ms per response, asked 200/s: the server can only do
    // 50/s, so requests queue in the generator. Measured from their intended
    // times, the last of 20 requests (intended at 95 ms, answered near 400 ms)
    // waited about 300 ms.
    let srv = server::start(Behaviour::default()).await;
    let mut p = plan(&srv.url("/sleep/20"), |a| {
        a.rate = Some(200.0);
        a.requests = Some(20);
    });
    p.mode = Mode::Open {
        rate: 200.0,
        max_connections: 1,
    };
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.ok, 20);
    let max = ms(Duration::from_micros(r.latency().max()));
    assert!(max >= 250.0, "max {max} ms");
    assert!(r.achieved_rate() < 60.0, "achieved {}", r.achieved_rate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_split_the_schedule_and_merge_exactly() {
    let srv = server::start(Behaviour::default()).await;
    for threads in [1, 3] {
        let p = plan(&srv.url("/versions"), |a| {
            a.rate = Some(1000.0);
            a.requests = Some(300);
            a.threads = Some(threads);
        });
        let r = run(&p).await.unwrap();
        assert_eq!(r.threads, threads);
        // Every scheduled request once: counts, histograms and timeline agree.
        assert_eq!(r.recorder.total(), 300);
        assert_eq!(r.recorder.latency.len(), 300);
        assert_eq!(r.recorder.status[&200], 300);
        let v: u64 = r.recorder.by_version.values().map(|h| h.len()).sum();
        assert_eq!(v, 300);
        let buckets = r.recorder.timeline.buckets();
        assert_eq!(buckets.iter().map(|b| b.requests).sum::<u64>(), 300);
        assert_eq!(r.send_lag.as_ref().unwrap().len(), 300);
        assert!(r.connections_used >= threads && r.connections_used <= 64);
        assert!(!r.saturation.saturated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_threads_share_connections_and_requests() {
    let srv = server::start(Behaviour::default()).await;
    let p = plan(&srv.url("/"), |a| {
        a.connections = Some(5);
        a.requests = Some(200);
        a.threads = Some(2);
    });
    let r = run(&p).await.unwrap();
    assert_eq!((r.threads, r.connections_used), (2, 5));
    assert_eq!(r.recorder.total(), 200);
    assert!(r.send_lag.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_that_cannot_keep_up_says_so() {
    // A million requests per second on one generator thread (a debug build,
    // at that) is out of reach on any machine, while the canned-response
    // server answers at once: the schedule falls behind on a busy thread.
    let addr = server::start_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let p = plan(&format!("http://{addr}/"), |a| {
        a.rate = Some(1_000_000.0);
        a.requests = Some(120_000);
        a.threads = Some(1);
    });
    let r = run(&p).await.unwrap();
    assert_eq!(r.recorder.total(), 120_000);
    assert!(r.saturation.saturated, "{:?}", r.saturation);
    let rate = r.saturation.rate.unwrap();
    assert!(rate > 0.0 && rate < 1_000_000.0, "{rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_sending_in_both_loops() {
    let srv = server::start(Behaviour::default()).await;
    for open in [true, false] {
        let p = plan(&srv.url("/"), |a| {
            if open {
                a.rate = Some(200.0);
            } else {
                a.connections = Some(2);
            }
            a.duration = Some("30s".into());
        });
        let cancel = p.cancel.clone();
        let started = std::time::Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let r = run(&p).await.unwrap();
        stopper.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "open={open}: ran {:?} after the cancel",
            started.elapsed()
        );
        assert!(r.recorder.total() > 0, "open={open}: nothing was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_live_counters_in_prometheus_text() {
    let srv = server::start(Behaviour::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = plan(&srv.url("/"), |a| {
        a.rate = Some(200.0);
        a.duration = Some("2s".into());
        a.name = "game-day".into();
        a.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    });
    let load = tokio::spawn(async move { run(&p).await });
    // Poll with a deadline until the counters show requests.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut body = String::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let _ = s.read_to_string(&mut body).await;
        }
        let has_requests = body.lines().any(|l| {
            l.starts_with("meshtest_load_requests_total{name=\"game-day\"}")
                && l.rsplit(' ').next() != Some("0")
        });
        if has_requests || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("# TYPE meshtest_load_requests_total counter"),
        "{body}"
    );
    assert!(
        body.contains("meshtest_load_asked_rate{name=\"game-day\"} 200"),
        "{body}"
    );
    assert!(body.contains("quantile=\"0.99\""), "{body}");
    assert!(
        body.contains("meshtest_load_generator_saturated{name=\"game-day\"} 0"),
        "{body}"
    );
    load.await.unwrap().unwrap();
    // Gone with the run.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}
