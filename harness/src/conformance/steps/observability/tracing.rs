//! Tracing: a request keeps one trace id across every proxy on its path, with a span of its
//! own at each hop, as the span collector received them (Zipkin's v2 API).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cucumber::then;

use crate::conformance::world::MeshWorld;
use crate::zipkin::{Span, ZipkinApi};
use crate::{broken, promise, unchecked};

/// How long spans may take to reach the collector (proxies flush every second).
const SPAN_DEADLINE: Duration = Duration::from_secs(10);

/// Whether `span` was reported by `proxy` (a pod name, or "istio-ingressgateway"): Envoy tags
/// spans with its node id, which is the pod's name here and `sidecar~IP~POD.NS~...` in Istio.
fn reported_by(span: &Span, proxy: &str) -> bool {
    let node = span.tags.get("node_id").map(String::as_str).unwrap_or("");
    node == proxy || node.contains(&format!("~{proxy}."))
}

/// The hops of `path` (proxy, spans expected) with fewer spans in the trace than expected.
fn missing_hops(spans: &[Span], path: &[(String, usize)]) -> Vec<String> {
    path.iter()
        .filter_map(|(proxy, need)| {
            let have = spans.iter().filter(|s| reported_by(s, proxy)).count();
            (have < *need).then(|| format!("{proxy} ({have} of {need} spans)"))
        })
        .collect()
}

/// What keeps the spans from being one chain: duplicate ids, parents outside the trace, a
/// root other than the first hop's (or more than one).
fn chain_problems(spans: &[Span], first_hop: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    if ids.len() != spans.len() {
        problems.push(format!(
            "{} spans share {} ids: a hop reused its caller's span",
            spans.len(),
            ids.len()
        ));
    }
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent_id.is_none()).collect();
    for s in spans {
        if let Some(p) = &s.parent_id
            && !ids.contains(p.as_str())
        {
            problems.push(format!(
                "span {} of {} names parent {p}, which is not in the trace",
                s.id,
                s.service()
            ));
        }
    }
    match roots.as_slice() {
        [root] if reported_by(root, first_hop) => {}
        [root] => problems.push(format!(
            "the trace starts at {} ({}), not at {first_hop}",
            root.service(),
            root.id
        )),
        _ => problems.push(format!(
            "{} spans have no parent: the trace is not one tree",
            roots.len()
        )),
    }
    problems
}

/// "ingress A > api-gateway-1 B > C > airtable-gateway-0 D", parents before children.
fn describe_chain(spans: &[Span]) -> String {
    let by_parent: BTreeMap<Option<&str>, Vec<&Span>> =
        spans.iter().fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.parent_id.as_deref()).or_default().push(s);
            m
        });
    let mut out = Vec::new();
    let mut next = by_parent.get(&None).cloned().unwrap_or_default();
    while let Some(s) = next.pop() {
        let node = s.tags.get("node_id").map(String::as_str).unwrap_or("?");
        out.push(format!(
            "{node} {} {}",
            s.kind.as_deref().unwrap_or("?"),
            s.id
        ));
        next.extend(
            by_parent
                .get(&Some(s.id.as_str()))
                .cloned()
                .unwrap_or_default(),
        );
    }
    out.join(" > ")
}

#[then(
    regex = r"^the request keeps one trace id from the ingress to its backend, with a new span at each hop$"
)]
async fn one_trace(w: &mut MeshWorld) {
    if !crate::translate::telemetry::traces(&w.target.manifests()) {
        broken!(
            "the mesh declares no tracing (no Telemetry `tracing`, no default tracing provider)"
        );
    }
    // The path, from the answer; the backend echoed the headers it received.
    let f = super::Forwarded::of_last_call(w);
    let (forwarded_by, backend) = (f.forwarded_by.clone(), f.backend.clone());
    let received = |h: &str| f.received(h);
    let Some(trace_id) = received("x-b3-traceid") else {
        broken!(
            "{backend} received no trace context (x-b3-traceid): the mesh did not trace the request"
        );
    };
    if received("x-b3-sampled").as_deref() == Some("0") {
        broken!(
            "the mesh sampled the request out (x-b3-sampled: 0 at {backend}): no proxy reports its spans"
        );
    }
    let Some(url) = w.target.tracing_url() else {
        unchecked!(
            "the {} target has no span collector to read",
            w.target.kind()
        );
    };
    let api = ZipkinApi::new(&url).unwrap_or_else(|e| unchecked!("{e:#}"));
    // The ingress's span, api-gateway's inbound and outbound spans, the backend's inbound span.
    let path = [
        ("istio-ingressgateway".to_string(), 1),
        (forwarded_by.clone(), 2),
        (backend.clone(), 1),
    ];
    let deadline = Instant::now() + SPAN_DEADLINE;
    let spans = loop {
        let spans = api
            .trace(&trace_id)
            .await
            .unwrap_or_else(|e| unchecked!("{e:#}"));
        if missing_hops(&spans, &path).is_empty() || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing = missing_hops(&spans, &path);
    promise!(
        missing.is_empty(),
        "trace {trace_id}: within {} s the collector got no span from {} (it holds {} spans: {})",
        SPAN_DEADLINE.as_secs(),
        missing.join(", "),
        spans.len(),
        describe_chain(&spans)
    );
    let problems = chain_problems(&spans, "istio-ingressgateway");
    promise!(
        problems.is_empty(),
        "trace {trace_id} is not one chain of spans: {}",
        problems.join("; ")
    );
    let handed = received("x-b3-spanid").unwrap_or_default();
    promise!(
        spans
            .iter()
            .any(|s| s.id == handed && reported_by(s, &backend)),
        "{backend}'s app received span id {handed:?}, which is not a span its sidecar reported"
    );
    w.evidence(format!(
        "trace {trace_id}: {} spans, one per hop and two at {forwarded_by} (in and out): {}",
        spans.len(),
        describe_chain(&spans)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, node: &str) -> Span {
        Span {
            trace_id: "t".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            name: None,
            kind: None,
            local_endpoint: None,
            tags: [("node_id".to_string(), node.to_string())].into(),
        }
    }

    #[test]
    fn one_chain_from_the_ingress_has_no_problem() {
        let spans = [
            span("a", None, "istio-ingressgateway"),
            span("b", Some("a"), "api-gateway-1"),
            span("c", Some("b"), "api-gateway-1"),
            span("d", Some("c"), "airtable-gateway-0"),
        ];
        assert!(chain_problems(&spans, "istio-ingressgateway").is_empty());
        let path = [
            ("api-gateway-1".to_string(), 2),
            ("airtable-gateway-0".to_string(), 1),
        ];
        assert!(missing_hops(&spans, &path).is_empty());
        assert_eq!(
            describe_chain(&spans),
            "istio-ingressgateway ? a > api-gateway-1 ? b > api-gateway-1 ? c > airtable-gateway-0 ? d"
        );
    }

    #[test]
    fn a_hop_that_starts_its_own_trace_or_reuses_a_span_is_a_problem() {
        let broken = [
            span("a", None, "istio-ingressgateway"),
            span("b", Some("a"), "api-gateway-1"),
            span("x", None, "airtable-gateway-0"),
        ];
        assert_eq!(chain_problems(&broken, "istio-ingressgateway").len(), 1);
        let reused = [
            span("a", None, "istio-ingressgateway"),
            span("a", Some("a"), "p"),
        ];
        assert!(!chain_problems(&reused, "istio-ingressgateway").is_empty());
        let path = [("airtable-gateway-0".to_string(), 1)];
        assert_eq!(
            missing_hops(&reused, &path),
            ["airtable-gateway-0 (0 of 1 spans)"]
        );
    }

    #[test]
    fn a_span_is_matched_to_its_proxy_by_node_id_as_here_and_in_istio() {
        let here = span("a", None, "api-gateway-1");
        let istio = span(
            "a",
            None,
            "sidecar~10.0.0.1~api-gateway-1.pyairtable~pyairtable.svc.cluster.local",
        );
        assert!(reported_by(&here, "api-gateway-1") && reported_by(&istio, "api-gateway-1"));
        assert!(!reported_by(&istio, "api-gateway-10"));
    }
}
