//! Property tests: the duration parser, `meshtest load`'s flag validation, the
//! URL parser and the threshold parser never panic, and what they accept is in
//! range. About 110,000 cases in all (a few seconds in the debug profile).

use std::time::{Duration, Instant};

use meshtest_load::duration::{self, MAX};
use meshtest_load::plan::{
    MAX_CONNECTIONS, MAX_DURATION, MAX_RATE, MAX_REQUESTS, MAX_TIMEOUT, MAX_WARMUP, MIN_RATE,
    parse_target,
};
use meshtest_load::schedule::Schedule;
use meshtest_load::{LoadArgs, LoadError, LoadPlan, Mode, Stop, threshold};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // Failures print their minimal input; nothing is written next to the source.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

const UNITS: [&str; 13] = [
    "ns", "us", "µs", "μs", "ms", "s", "m", "h", "", "d", "S", "sec", " s",
];

fn unit() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&UNITS[..])
}

/// Nanoseconds per unit for the units the parser accepts.
fn nanos_per(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Duration-like text: mostly near-valid, sometimes anything at all.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u64..100_000, unit()).prop_map(|(n, u)| format!("{n}{u}")),
        2 => "[-+]?[0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|μs|ms|s|m|h|d|e3s|)",
        1 => (any::<u64>(), unit()).prop_map(|(n, u)| format!("{n}{u}")),
        1 => (any::<f64>(), unit()).prop_map(|(x, u)| format!("{x}{u}")),
        1 => any::<String>(),
    ]
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => MIN_RATE..=MAX_RATE,
        2 => 0.0..100_000.0f64,
        1 => 0.0..1.0f64,
        1 => any::<f64>(),
        1 => proptest::sample::select(vec![
            0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, 1e-300,
            f64::MIN_POSITIVE, f64::MAX, MIN_RATE, MAX_RATE, 0.00999, 10_000_000.5,
        ]),
    ]
}

fn count<T: Arbitrary + Copy + TryFrom<u64> + 'static>(
    edges: Vec<T>,
) -> impl Strategy<Value = Option<T>>
where
    T::Strategy: 'static,
{
    prop_oneof![
        1 => Just(None),
        2 => (0u64..2_000).prop_map(|n| T::try_from(n).ok()),
        1 => any::<T>().prop_map(Some),
        1 => proptest::sample::select(edges).prop_map(Some),
    ]
}

fn threshold_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            "(p50|p90|p99|p99\\.9|p99\\.99|p\\(99\\)|max|min|mean|avg|med|errors|error_rate|rps|p95|x)",
            "(<|<=|>|>=|=|==|=>|<<| < )",
            "[-]?[0-9]{0,8}(\\.[0-9]{0,6})?(ms|s|us|%|/s|h| %|)",
        )
            .prop_map(|(m, o, v)| format!("{m}{o}{v}")),
        1 => any::<String>(),
    ]
}

fn check_plan(args: &LoadArgs) -> Result<(), TestCaseError> {
    match LoadPlan::from_args(args) {
        Ok(p) => {
            match p.mode {
                Mode::Open {
                    rate,
                    max_connections,
                } => {
                    prop_assert!((MIN_RATE..=MAX_RATE).contains(&rate), "rate {rate}");
                    prop_assert!((1..=MAX_CONNECTIONS).contains(&max_connections));
                    let s = Schedule::new(Instant::now(), rate, p.warmup, p.stop);
                    prop_assert!(s.total() <= MAX_REQUESTS, "total {}", s.total());
                    prop_assert!(s.span() <= MAX_DURATION + Duration::from_secs(1));
                    let _ = (s.at(s.total()), s.measure_start());
                }
                Mode::Closed { connections } => {
                    prop_assert!((1..=MAX_CONNECTIONS).contains(&connections));
                }
            }
            match p.stop {
                Stop::Duration(d) => prop_assert!(!d.is_zero() && d <= MAX_DURATION),
                Stop::Requests(n) => prop_assert!((1..=MAX_REQUESTS).contains(&n)),
            }
            prop_assert!(p.warmup <= MAX_WARMUP);
            prop_assert!(!p.timeout.is_zero() && p.timeout <= MAX_TIMEOUT);
            prop_assert_eq!(p.thresholds.len(), args.thresholds.len());
            p.validate()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Err(LoadError::Input(m)) => {
            prop_assert!(
                m.starts_with("--") || m.starts_with("URL '"),
                "input error names no flag: {m}"
            );
        }
        Err(other) => prop_assert!(false, "not an input error: {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(15_000))]

    #[test]
    fn durations_never_panic_and_stay_in_range(text in duration_text()) {
        if let Ok(d) = duration::parse(&text) {
            prop_assert!(d <= MAX);
            prop_assert!(!text.trim().starts_with('-'));
        }
    }

    #[test]
    fn whole_durations_are_exact_or_refused(n in any::<u64>(), u in unit()) {
        let got = duration::parse(&format!("{n}{u}"));
        match nanos_per(u) {
            None => prop_assert!(got.is_err()),
            Some(per) => {
                let nanos = u128::from(n) * per;
                if nanos <= MAX.as_nanos() {
                    let want = Duration::new(
                        (nanos / 1_000_000_000) as u64,
                        (nanos % 1_000_000_000) as u32,
                    );
                    prop_assert_eq!(got, Ok(want));
                } else {
                    prop_assert!(got.unwrap_err().contains("maximum"));
                }
            }
        }
    }

    #[test]
    fn human_durations_read_back(secs in 0..=duration::MAX_SECS, nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos).min(MAX);
        prop_assert_eq!(duration::parse(&duration::human(d)), Ok(d));
    }

    #[test]
    fn load_flags_are_validated_without_panicking(
        url in prop_oneof![
            4 => Just("http://127.0.0.1:8080/".to_string()),
            1 => Just("https://127.0.0.1:8443/".to_string()),
            1 => "http://127\\.0\\.0\\.1:[0-9]{0,7}/",
        ],
        rate in proptest::option::weighted(0.6, rate()),
        connections in count::<usize>(vec![0, 1, MAX_CONNECTIONS, MAX_CONNECTIONS + 1, usize::MAX]),
        requests in count::<u64>(vec![0, 1, MAX_REQUESTS, MAX_REQUESTS + 1, u64::MAX]),
        duration in proptest::option::of(duration_text()),
        warmup in proptest::option::of(duration_text()),
        timeout in duration_text(),
        thresholds in proptest::collection::vec(threshold_text(), 0..3),
    ) {
        let mut a = LoadArgs::for_url(url);
        (a.rate, a.connections, a.requests) = (rate, connections, requests);
        (a.duration, a.warmup, a.timeout) = (duration, warmup, timeout);
        a.thresholds = thresholds;
        a.no_progress = true;
        check_plan(&a)?;
    }

    #[test]
    fn open_loop_plans_are_accepted_exactly_when_bounded(
        rate in MIN_RATE..=MAX_RATE,
        d_ms in 1u64..=MAX_DURATION.as_millis() as u64,
        w_ms in prop_oneof![Just(0u64), 0..=MAX_WARMUP.as_millis() as u64],
        requests in proptest::option::weighted(0.3, 1..=MAX_REQUESTS),
    ) {
        let mut a = LoadArgs::for_url("http://127.0.0.1:8080/");
        a.rate = Some(rate);
        a.warmup = Some(format!("{w_ms}ms"));
        let warm = (Duration::from_millis(w_ms).as_secs_f64() * rate).ceil();
        let fits = match requests {
            Some(n) => {
                a.requests = Some(n);
                n as f64 / rate <= MAX_DURATION.as_secs_f64() && warm + n as f64 <= MAX_REQUESTS as f64
            }
            None => {
                a.duration = Some(format!("{d_ms}ms"));
                warm + (Duration::from_millis(d_ms).as_secs_f64() * rate).ceil() <= MAX_REQUESTS as f64
            }
        };
        prop_assert_eq!(LoadPlan::from_args(&a).is_ok(), fits, "{:?}", a);
        check_plan(&a)?;
    }

    #[test]
    fn urls_never_panic(url in prop_oneof![
        1 => any::<String>(),
        1 => "(http|https|ftp|HTTP|)(://|:/|)[a-z0-9.:@\\[\\]%-]{0,20}(:[0-9a-z+-]{0,8})?(/[ -~]{0,10})?",
    ]) {
        match parse_target(&url) {
            Ok(t) => {
                prop_assert!(t.port >= 1);
                prop_assert!(t.uri.path().starts_with('/'));
                prop_assert!(!t.host.is_empty());
            }
            Err(LoadError::Input(m)) => {
                prop_assert!(m.starts_with(&format!("URL '{url}'")), "{}", m);
            }
            Err(other) => prop_assert!(false, "not an input error: {other:?}"),
        }
    }

    #[test]
    fn explicit_ports_are_kept_or_refused(
        https in any::<bool>(),
        host in proptest::sample::select(vec!["127.0.0.1", "localhost", "[::1]", "example.test"]),
        port in prop_oneof![
            any::<u64>().prop_map(|p| p.to_string()),
            (0u32..70_000).prop_map(|p| p.to_string()),
            "[0-9]{0,30}",
        ],
        path in "(/[a-z0-9]{0,8}){0,3}",
    ) {
        let scheme = if https { "https" } else { "http" };
        let url = format!("{scheme}://{host}:{port}{path}");
        let want = port.parse::<u16>().ok().filter(|p| *p >= 1);
        match (parse_target(&url), want) {
            (Ok(t), Some(p)) => prop_assert_eq!(t.port, p),
            (Err(LoadError::Input(m)), None) => {
                prop_assert!(m.starts_with(&format!("URL '{url}'")), "{}", m);
            }
            (got, want) => prop_assert!(false, "{url}: got {got:?}, want port {want:?}"),
        }
    }

    #[test]
    fn thresholds_never_panic(expr in threshold_text()) {
        if let Ok(t) = threshold::parse(&expr) {
            prop_assert!(t.limit.is_finite() && t.limit >= 0.0);
            if t.metric == threshold::Metric::ErrorRate {
                prop_assert!(t.limit <= 1.0);
            }
        }
    }
}
