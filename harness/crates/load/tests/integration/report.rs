//! Reports: summary.json against the committed schema, .hgrm, index.html, compare.

use std::path::Path;

use meshtest_load::{CompareArgs, LoadArgs, Outcome, run_compare, run_load};
use serde_json::Value;

use crate::schema::validate;
use crate::server::{self, Behaviour};

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/summary.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn report(dir: &Path, f: impl FnOnce(&mut LoadArgs), path: &str) -> Value {
    let srv = server::start(Behaviour::default()).await;
    run(dir, &srv.url(path), f).await.1
}

async fn run(dir: &Path, url: &str, f: impl FnOnce(&mut LoadArgs)) -> (Outcome, Value) {
    let mut a = LoadArgs::for_url(url);
    a.no_progress = true;
    a.report_dir = Some(dir.to_path_buf());
    a.name = "smoke".into();
    a.tenant = Some("acme".into());
    a.tier = Some("gold".into());
    f(&mut a);
    let out = run_load(a).await.unwrap();
    assert_eq!(out.report_dir, dir);
    let v =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let errs = validate(&schema(), &v);
    assert!(errs.is_empty(), "{errs:#?}");
    (out, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_matches_schema_in_both_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let open = report(
        &tmp.path().join("open"),
        |a| {
            a.rate = Some(400.0);
            a.requests = Some(100);
            a.thresholds = vec!["p99<10s".into(), "errors<1%".into(), "rps>=1".into()];
        },
        "/versions",
    )
    .await;
    let errs = validate(&schema(), &open);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(open["schema_version"], 3);
    assert!(open["threads"].as_u64().unwrap() >= 1);
    let used = open["connections_used"].as_u64().unwrap();
    assert!(used >= 1 && used <= open["connections"].as_u64().unwrap());
    assert_eq!(open["saturation"]["saturated"], false);
    assert_eq!(open["saturation"]["rate"], Value::Null);
    assert!(open["saturation"]["send_lag_ms"]["p99"].as_f64().unwrap() >= 0.0);
    let t = open["thresholds"].as_array().unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0]["expression"], "p99<10s");
    assert_eq!(t[0]["metric"], "p99");
    assert_eq!(t[0]["limit"], 10_000.0);
    assert_eq!(t[0]["observed"], open["latency_ms"]["p99"]);
    assert_eq!(t[1]["metric"], "errors");
    assert_eq!(t[1]["observed"], 0.0);
    assert_eq!(t[2]["observed"], open["rate"]["achieved"]);
    assert!(
        t.iter()
            .all(|t| t["passed"] == true && t["verdict"] == "ok")
    );
    assert_eq!(open["mode"], "open");
    assert_eq!(open["rate"]["asked"], 400.0);
    assert_eq!(open["requests"]["total"], 100);
    assert_eq!(open["tenant"], "acme");
    assert_eq!(open["tier"], "gold");
    assert!(open["versions"]["v2"]["count"].as_u64().unwrap() > 0);
    assert!(open["latency_ms"]["p99.9"].as_f64().unwrap() > 0.0);

    let closed = report(
        &tmp.path().join("closed"),
        |a| {
            a.connections = Some(2);
            a.requests = Some(50);
        },
        "/status/404",
    )
    .await;
    let errs = validate(&schema(), &closed);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(closed["rate"]["asked"], Value::Null);
    assert_eq!(closed["connections_used"], 2);
    assert_eq!(closed["saturation"]["send_lag_ms"], Value::Null);
    assert_eq!(closed["thresholds"], serde_json::json!([]));
    assert_eq!(closed["requests"]["http_errors"], 50);
    assert_eq!(closed["status_counts"]["404"], 50);
    assert_eq!(closed["status_classes"]["4xx"]["count"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hgrm_and_html_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    report(
        tmp.path(),
        |a| {
            a.connections = Some(2);
            a.requests = Some(300);
        },
        "/",
    )
    .await;
    let hgrm = std::fs::read_to_string(tmp.path().join("smoke.hgrm")).unwrap();
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(hgrm.contains("Total count    =          300]"));

    let html = std::fs::read_to_string(tmp.path().join("index.html")).unwrap();
    for bad in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "<script",
        "@import",
        "url(",
    ] {
        assert!(
            !html.contains(bad),
            "index.html is not self-contained: {bad}"
        );
    }
    assert_eq!(html.matches("<svg").count(), 3);
    for id in ["latency-by-percentile", "throughput", "p99-over-time"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "missing {id}");
    }
    for tick in ["90%", "99%", "99.9%", "99.99%"] {
        assert!(
            html.contains(&format!(">{tick}</text>")),
            "missing tick {tick}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_thresholds_fail_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server::start(Behaviour::default()).await;
    let (out, v) = run(tmp.path(), &srv.url("/status/503"), |a| {
        a.connections = Some(2);
        a.requests = Some(40);
        a.thresholds = vec!["errors<1%".into(), "p99<10s".into(), "max<1us".into()];
    })
    .await;
    assert!(!out.passed());
    let t = v["thresholds"].as_array().unwrap();
    assert_eq!(t[0]["observed"], 1.0);
    assert_eq!(t[0]["verdict"], "failed");
    assert_eq!(t[0]["passed"], false);
    // 503s are responses: latency is measured.
    assert_eq!(t[1]["verdict"], "ok");
    assert_eq!(t[2]["verdict"], "failed");
    assert_eq!(
        out.failures(),
        ["2 of 3 thresholds not met: errors<1% (FAILED), max<1us (FAILED)"]
    );
    let html = std::fs::read_to_string(tmp.path().join("index.html")).unwrap();
    assert!(
        html.contains("<td>errors&lt;1%</td><td>100.000%</td><td>&lt; 1.000%</td><td>FAILED</td>")
    );

    // Without thresholds, a run that got answers passes whatever the statuses.
    let (out, _) = run(&tmp.path().join("plain"), &srv.url("/status/503"), |a| {
        a.requests = Some(5);
    })
    .await;
    assert!(out.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_always_fails_and_latency_rules_are_unchecked() {
    // A port nobody listens on: every connect is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let tmp = tempfile::tempdir().unwrap();
    let (out, v) = run(tmp.path(), &url, |a| {
        a.requests = Some(5);
        a.thresholds = vec!["p99<1s".into(), "errors<=100%".into()];
    })
    .await;
    assert!(!out.passed());
    let t = v["thresholds"].as_array().unwrap();
    assert_eq!(t[0]["verdict"], "unchecked");
    assert_eq!(t[0]["observed"], Value::Null);
    assert_eq!(t[0]["passed"], false);
    assert_eq!(t[1]["verdict"], "ok");
    assert_eq!(
        out.failures(),
        [
            "no request got a response (5 of 5 failed without one: connect x5)",
            "1 of 2 thresholds not met: p99<1s (UNCHECKED)"
        ]
    );
    assert_eq!(
        out.summary.thresholds[0].line(),
        "threshold p99<1s: p99 unchecked (no request got a response) (limit < 1000.000 ms): UNCHECKED"
    );
    // No thresholds at all: still a failure.
    let (out, _) = run(&tmp.path().join("plain"), &url, |a| a.requests = Some(3)).await;
    assert_eq!(
        out.failures(),
        ["no request got a response (3 of 3 failed without one: connect x3)"]
    );
}

fn example() -> Value {
    serde_json::from_str(include_str!("../../schema/example-summary.json")).unwrap()
}

fn write(dir: &Path, v: &Value) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("summary.json"), v.to_string()).unwrap();
    dir.to_path_buf()
}

fn write_summary(dir: &Path, p99: f64) {
    let mut v = example();
    v["latency_ms"]["p99"] = p99.into();
    write(dir, &v);
}
#[test]
fn example_summary_matches_schema() {
    let v: Value = serde_json::from_str(include_str!("../../schema/example-summary.json")).unwrap();
    let errs = validate(&schema(), &v);
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn compare_flags_p99_regressions_beyond_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, ok, bad) = (
        tmp.path().join("base"),
        tmp.path().join("ok"),
        tmp.path().join("bad"),
    );
    write_summary(&base, 10.0);
    write_summary(&ok, 10.9);
    write_summary(&bad, 11.5);
    let args = |cur: &Path| CompareArgs::new(&base, cur);
    assert!(!run_compare(args(&ok)).unwrap());
    assert!(run_compare(args(&bad)).unwrap());
    // summary.json paths work as well as directories.
    let mut a = args(&bad.join("summary.json"));
    a.max_p99_regression = 20.0;
    assert!(!run_compare(a).unwrap());
    // Improvements never count as regressions.
    assert!(
        !run_compare(CompareArgs {
            max_p99_regression: 0.0,
            ..CompareArgs::new(&bad, &base)
        })
        .unwrap()
    );
    let missing = run_compare(args(&tmp.path().join("nope"))).unwrap_err();
    assert!(missing.is_input());
}

/// A summary like the example with `ok` of `total` requests ok (the rest 503s)
/// at `rate` per second.
fn run_with(ok: u64, total: u64, rate: f64) -> Value {
    let mut v = example();
    v["requests"]["total"] = total.into();
    v["requests"]["ok"] = ok.into();
    v["requests"]["errors"] = (total - ok).into();
    v["requests"]["http_errors"] = (total - ok).into();
    v["rate"]["achieved"] = rate.into();
    v
}

#[test]
fn compare_gates_errors_throughput_and_dead_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |name: &str, v: Value| write(&tmp.path().join(name), &v);
    let base = at("base", run_with(1000, 1000, 100.0));
    let judge = |cur: &Path| {
        let a = CompareArgs::new(&base, cur);
        let gates = meshtest_load::compare::Gates::from_args(&a).unwrap();
        let b = meshtest_load::compare::load_summary(&a.base).unwrap();
        let c = meshtest_load::compare::load_summary(&a.cur).unwrap();
        meshtest_load::compare::compare(&b, &c, &gates)
    };
    let failed = |cur: &Path| -> Vec<&'static str> {
        judge(cur)
            .rules
            .iter()
            .filter(|r| r.passed == Some(false))
            .map(|r| r.name)
            .collect()
    };

    // Within every limit: 0.5pp more errors, 95% of the throughput.
    let ok = at("ok", run_with(995, 1000, 95.0));
    assert!(failed(&ok).is_empty(), "{}", judge(&ok).table);
    assert!(!run_compare(CompareArgs::new(&base, &ok)).unwrap());

    let errors = at("errors", run_with(990, 1000, 100.0));
    assert_eq!(failed(&errors), ["error rate"]);
    let c = judge(&errors);
    assert!(c.regressed);
    assert!(
        c.table
            .contains("error rate           REGRESSED 0.000% -> 1.000%: +1.000pp (limit +0.5pp)"),
        "{}",
        c.table
    );
    assert!(c.table.ends_with("REGRESSED: error rate\n"), "{}", c.table);
    assert!(run_compare(CompareArgs::new(&base, &errors)).unwrap());
    let lenient = CompareArgs {
        max_error_rate_increase: 1.0,
        ..CompareArgs::new(&base, &errors)
    };
    assert!(!run_compare(lenient).unwrap());

    let slow = at("slow", run_with(1000, 1000, 94.0));
    assert_eq!(failed(&slow), ["throughput"]);
    assert!(
        judge(&slow).table.contains(
            "throughput           REGRESSED 100.0 -> 94.0/s: 0.940x BASE (limit >= 0.95x)"
        )
    );
    let lenient = CompareArgs {
        min_throughput_ratio: 0.9,
        ..CompareArgs::new(&base, &slow)
    };
    assert!(!run_compare(lenient).unwrap());

    // Every request failed: fast errors, low latency, high "achieved rate".
    let mut dead = run_with(0, 1000, 5000.0);
    dead["latency_ms"]["p99"] = 0.0.into();
    let dead = at("dead", dead);
    assert_eq!(
        failed(&dead),
        ["successful responses", "error rate"],
        "{}",
        judge(&dead).table
    );
    assert!(
        judge(&dead)
            .table
            .contains("CUR has no successful response (0 of 1000 requests ok)")
    );
    // ... and no limit lets it pass.
    let anything_goes = CompareArgs {
        max_p99_regression: 10_000.0,
        max_error_rate_increase: 100.0,
        min_throughput_ratio: 0.0,
        ..CompareArgs::new(&base, &dead)
    };
    assert!(run_compare(anything_goes).unwrap());

    // A BASE without a successful response is no baseline: exit 3 ...
    let e = run_compare(CompareArgs::new(&dead, &ok)).unwrap_err();
    assert!(e.is_unchecked(), "{e}");
    assert!(
        e.to_string().contains("BASE has no successful response"),
        "{e}"
    );
    let c = judge_pair(&dead, &ok);
    assert!(!c.regressed);
    assert!(
        c.table
            .contains("UNCHECKED: BASE has no successful response"),
        "{}",
        c.table
    );
    // ... unless CUR failed on its own.
    assert!(run_compare(CompareArgs::new(&dead, &dead)).unwrap());
}

fn judge_pair(base: &Path, cur: &Path) -> meshtest_load::compare::Comparison {
    let b = meshtest_load::compare::load_summary(base).unwrap();
    let c = meshtest_load::compare::load_summary(cur).unwrap();
    meshtest_load::compare::compare(&b, &c, &Default::default())
}

#[test]
fn compare_flags_are_range_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(&tmp.path().join("base"), &example());
    let mk = |f: fn(&mut CompareArgs)| {
        let mut a = CompareArgs::new(&base, &base);
        f(&mut a);
        run_compare(a)
    };
    for (flag, f) in [
        (
            "--max-p99-regression",
            (|a| a.max_p99_regression = -1.0) as fn(&mut CompareArgs),
        ),
        ("--max-p99-regression", |a| a.max_p99_regression = f64::NAN),
        ("--max-p99-regression", |a| a.max_p99_regression = 10_001.0),
        ("--max-error-rate-increase", |a| {
            a.max_error_rate_increase = -0.1
        }),
        ("--max-error-rate-increase", |a| {
            a.max_error_rate_increase = 101.0
        }),
        ("--max-error-rate-increase", |a| {
            a.max_error_rate_increase = f64::INFINITY
        }),
        ("--min-throughput-ratio", |a| a.min_throughput_ratio = 1.01),
        ("--min-throughput-ratio", |a| a.min_throughput_ratio = -0.5),
        ("--min-throughput-ratio", |a| {
            a.min_throughput_ratio = f64::NAN
        }),
    ] {
        let e = mk(f).unwrap_err();
        assert!(
            e.is_input() && e.to_string().starts_with(flag),
            "{flag}: {e}"
        );
    }
    for f in [
        (|a| a.max_p99_regression = 0.0) as fn(&mut CompareArgs),
        |a| a.max_p99_regression = 10_000.0,
        |a| a.max_error_rate_increase = 0.0,
        |a| a.max_error_rate_increase = 100.0,
        |a| a.min_throughput_ratio = 0.0,
        |a| a.min_throughput_ratio = 1.0,
    ] {
        assert!(!mk(f).unwrap());
    }
}

#[test]
fn compare_reads_version_1_summaries_and_refuses_newer_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v2 = example();
    v2["schema_version"] = 2.into();
    for field in ["threads", "connections_used", "saturation"] {
        v2.as_object_mut().unwrap().remove(field);
    }
    for t in v2["thresholds"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("reason");
    }
    let mut v1 = v2.clone();
    v1["schema_version"] = 1.into();
    v1.as_object_mut().unwrap().remove("thresholds");
    let v1 = write(&tmp.path().join("v1"), &v1);
    let v2 = write(&tmp.path().join("v2"), &v2);
    let v3 = write(&tmp.path().join("v3"), &example());
    assert!(!run_compare(CompareArgs::new(&v1, &v2)).unwrap());
    assert!(!run_compare(CompareArgs::new(&v2, &v3)).unwrap());
    let old = meshtest_load::compare::load_summary(&v2).unwrap();
    assert_eq!((old.threads, old.saturation.saturated), (1, false));
    let mut v4 = example();
    v4["schema_version"] = 4.into();
    let v4 = write(&tmp.path().join("v4"), &v4);
    let e = run_compare(CompareArgs::new(&v1, &v4)).unwrap_err();
    assert!(
        e.is_input() && e.to_string().contains("schema_version 4"),
        "{e}"
    );
}

#[test]
fn a_saturated_generator_leaves_every_threshold_unchecked() {
    let mut v = example();
    v["saturation"]["saturated"] = true.into();
    v["saturation"]["rate"] = 38_950.0.into();
    v["saturation"]["saturated_s"] = 6.5.into();
    let s: meshtest_load::Summary = serde_json::from_value(v).unwrap();
    for expr in ["p99<50ms", "p99>1us", "errors<1%", "rps>=1"] {
        let t = meshtest_load::threshold::parse(expr).unwrap().evaluate(&s);
        assert_eq!(t.verdict, meshtest_load::Verdict::Unchecked, "{expr}");
        assert!(!t.passed);
        // What was measured stays visible; the reason says why it does not count.
        assert!(t.observed.is_some());
        assert_eq!(
            t.reason.as_deref(),
            Some("generator saturated at ~39000/s"),
            "{expr}"
        );
    }
    let t = meshtest_load::threshold::parse("p99<50ms")
        .unwrap()
        .evaluate(&s);
    assert_eq!(
        t.line(),
        "threshold p99<50ms: p99 10.783 ms (limit < 50.000 ms): UNCHECKED (generator saturated at ~39000/s)"
    );
    let mut out = serde_json::to_value(&s).unwrap();
    out["thresholds"] = serde_json::to_value([t]).unwrap();
    let errs = validate(&schema(), &out);
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn compare_leaves_a_saturated_run_unchecked() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(&tmp.path().join("base"), &example());
    let mut v = example();
    v["saturation"]["saturated"] = true.into();
    v["saturation"]["rate"] = 38_950.0.into();
    v["latency_ms"]["p99"] = 5000.0.into();
    let cur = write(&tmp.path().join("cur"), &v);
    let c = judge_pair(&base, &cur);
    assert!(!c.regressed, "{}", c.table);
    let why = c.unchecked.unwrap();
    assert!(
        why.starts_with("CUR's generator saturated at ~39000/s"),
        "{why}"
    );
    assert!(c.rules[1..].iter().all(|r| r.passed.is_none()));
    let e = run_compare(CompareArgs::new(&base, &cur)).unwrap_err();
    assert!(e.is_unchecked(), "{e}");
}
