//! Reports: summary.json against the committed schema, .hgrm, index.html, compare.

use std::path::Path;

use meshtest_load::{CompareArgs, LoadArgs, run_compare, run_load};
use serde_json::Value;

use crate::schema::validate;
use crate::server::{self, Behaviour};

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/summary.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn report(dir: &Path, f: impl FnOnce(&mut LoadArgs), path: &str) -> Value {
    let srv = server::start(Behaviour::default()).await;
    let mut a = LoadArgs::for_url(srv.url(path));
    a.no_progress = true;
    a.report_dir = Some(dir.to_path_buf());
    a.name = "smoke".into();
    a.tenant = Some("acme".into());
    a.tier = Some("gold".into());
    f(&mut a);
    let out = run_load(a).await.unwrap();
    assert_eq!(out.report_dir, dir);
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_matches_schema_in_both_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let open = report(
        &tmp.path().join("open"),
        |a| {
            a.rate = Some(400.0);
            a.requests = Some(100);
        },
        "/versions",
    )
    .await;
    let errs = validate(&schema(), &open);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(open["schema_version"], 1);
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

fn write_summary(dir: &Path, p99: f64) {
    let text = include_str!("../../schema/example-summary.json");
    let mut v: Value = serde_json::from_str(text).unwrap();
    v["latency_ms"]["p99"] = p99.into();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("summary.json"), v.to_string()).unwrap();
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
    let args = |cur: &Path| CompareArgs {
        base: base.clone(),
        cur: cur.to_path_buf(),
        max_p99_regression: 10.0,
    };
    assert!(!run_compare(args(&ok)).unwrap());
    assert!(run_compare(args(&bad)).unwrap());
    // summary.json paths work as well as directories.
    let mut a = args(&bad.join("summary.json"));
    a.max_p99_regression = 20.0;
    assert!(!run_compare(a).unwrap());
    // Improvements never count as regressions.
    assert!(
        !run_compare(CompareArgs {
            base: bad.clone(),
            cur: base.clone(),
            max_p99_regression: 0.0,
        })
        .unwrap()
    );
    let missing = run_compare(args(&tmp.path().join("nope"))).unwrap_err();
    assert!(missing.is_input());
}
