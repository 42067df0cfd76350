//! The hand-rolled HTTP/1.1 closed-loop client: framing, versions, reconnects, errors.

use meshtest_load::{ErrorKind, LoadArgs, LoadError, LoadPlan, LoadResult, http1, run};

use crate::server::{self, Behaviour};

fn plan(url: &str, f: impl FnOnce(&mut LoadArgs)) -> LoadPlan {
    let mut a = LoadArgs::for_url(url);
    a.no_progress = true;
    a.connections = Some(2);
    a.requests = Some(40);
    f(&mut a);
    let p = LoadPlan::from_args(&a).unwrap();
    assert_eq!(
        http1::Target::for_plan(&p).is_some(),
        a.client != "hyper",
        "fast path eligibility"
    );
    p
}

async fn raw(response: &'static [u8], close: bool) -> LoadResult {
    let addr = server::start_raw(response, close).await;
    run(&plan(&format!("http://{addr}/"), |_| {}))
        .await
        .unwrap()
}

#[tokio::test]
async fn content_length_statuses_and_versions_match_hyper() {
    let srv = server::start(Behaviour::default()).await;
    for client in ["fast", "hyper"] {
        let p = plan(&srv.url("/versions"), |a| a.client = client.into());
        let r = run(&p).await.unwrap();
        assert_eq!(r.recorder.status[&200], 40, "{client}");
        let v1 = r.recorder.by_version["v1"].len();
        let v2 = r.recorder.by_version["v2"].len();
        assert_eq!(v1 + v2, 40, "{client}");
        assert!(v1 > 5 && v2 > 5, "{client}: v1 {v1} v2 {v2}");

        let p = plan(&srv.url("/status/404"), |a| a.client = client.into());
        let r = run(&p).await.unwrap();
        assert_eq!(r.recorder.status[&404], 40, "{client}");
        assert_eq!(r.recorder.failed(), 40, "{client}");
    }
}

#[tokio::test]
async fn chunked_body_is_decoded() {
    let r = raw(
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n\
          6\r\n{\"vers\r\n10;x=y\r\nion\":\"v7\",\"pod\":\r\n3\r\n\"p\"\r\n1\r\n}\r\n0\r\nx-trailer: 1\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.recorder.status[&201], 40, "{:?}", r.recorder.errors);
    assert_eq!(r.recorder.by_version["v7"].len(), 40);
}

#[tokio::test]
async fn interim_and_empty_responses() {
    let r = raw(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.recorder.status[&204], 40, "{:?}", r.recorder.errors);
    assert_eq!(r.recorder.status.len(), 1);
}

#[tokio::test]
async fn body_until_close_and_http10() {
    let r = raw(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n {\"version\":\"v3\"}",
        true,
    )
    .await;
    assert_eq!(r.recorder.ok, 40, "{:?}", r.recorder.errors);
    assert_eq!(r.recorder.by_version["v3"].len(), 40);

    let r = raw(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    assert_eq!(r.recorder.ok, 40, "{:?}", r.recorder.errors);
    assert!(r.recorder.by_version.is_empty());
}

#[tokio::test]
async fn silent_close_of_a_kept_alive_connection_reconnects() {
    // The server claims keep-alive but closes after every response: the next
    // request on that connection fails before any response byte and is sent
    // again on a fresh connection, without an error.
    let r = raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    assert_eq!(r.recorder.ok, 40, "{:?}", r.recorder.errors);
    // Explicit `connection: close` (hyper test server) reconnects too.
    let srv = server::start(Behaviour::default()).await;
    let r = run(&plan(&srv.url("/close"), |_| {})).await.unwrap();
    assert_eq!(r.recorder.ok, 40, "{:?}", r.recorder.errors);
}

#[tokio::test]
async fn errors_are_classified() {
    let addr = server::closed_port().await;
    let r = run(&plan(&format!("http://{addr}/"), |a| a.requests = Some(6)))
        .await
        .unwrap();
    assert_eq!(r.recorder.errors.get(ErrorKind::Connect), 6);

    let addr = server::start_rude().await;
    let r = run(&plan(&format!("http://{addr}/"), |a| a.requests = Some(6)))
        .await
        .unwrap();
    assert_eq!(
        r.recorder.errors.get(ErrorKind::Reset),
        6,
        "{:?}",
        r.recorder.errors
    );

    let r = raw(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true).await;
    assert_eq!(
        r.recorder.errors.get(ErrorKind::Reset),
        40,
        "{:?}",
        r.recorder.errors
    );

    let r = raw(b"NOT HTTP\r\n\r\n", false).await;
    assert_eq!(
        r.recorder.errors.get(ErrorKind::Other),
        40,
        "{:?}",
        r.recorder.errors
    );

    let srv = server::start(Behaviour::default()).await;
    let started = std::time::Instant::now();
    let r = run(&plan(&srv.url("/sleep/2000"), |a| {
        a.connections = Some(1);
        a.requests = Some(3);
        a.timeout = "100ms".into();
    }))
    .await
    .unwrap();
    assert_eq!(r.recorder.errors.get(ErrorKind::Timeout), 3);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn fast_client_needs_http_without_http2() {
    let mut a = LoadArgs::for_url("http://127.0.0.1:1/");
    a.client = "fast".into();
    a.rate = Some(10.0);
    assert!(http1::Target::for_plan(&LoadPlan::from_args(&a).unwrap()).is_some());
    a.rate = None;
    a.http2 = true;
    assert!(matches!(LoadPlan::from_args(&a), Err(LoadError::Input(_))));
    a.http2 = false;
    let p = LoadPlan::from_args(&a).unwrap();
    assert!(http1::Target::for_plan(&p).is_some());
}
