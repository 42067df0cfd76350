//! Fault injection at its declared rates: with the opt-in header, the declared delay and abort
//! percentages hold under an exact binomial test (stated alpha and power); without it, the
//! fault filter touches nothing. Counts come from the ingress proxy's own fault counters,
//! cross-checked against what clients saw.

use std::time::Duration;

use cucumber::{given, then, when};

use crate::conformance::stats::{acceptance, clopper_pearson, power, sample_size};
use crate::conformance::steps::latency::{ingress_load, run_load};
use crate::conformance::world::MeshWorld;
use crate::declared::routes::{RouteRequest, gateway_route, ingress_host};
use crate::declared::{DeclaredRoute, human};
use crate::translate::duration;
use crate::{broken, promise, unchecked};

/// Open-loop rate of the sample: well inside what the embedded mesh serves on two cores.
const RATE: f64 = 800.0;
const ALPHA: f64 = 0.001;
const POWER: f64 = 0.99;
/// The alternative the test must catch: the rate this many times too high (or no fault).
const FACTOR: f64 = 3.0;

/// The declared fault of the route `req` takes: (delay, delay share, abort status, abort share).
fn declared_fault(w: &MeshWorld, req: &RouteRequest) -> (DeclaredRoute, Duration, f64, u16, f64) {
    let model = crate::declared::model(w.target.manifests());
    let route = gateway_route(&model, &ingress_host(&model), req)
        .unwrap_or_else(|| broken!("no ingress route serves {} {:?}", req.path, req.headers));
    let Some(fault) = route.fault.clone() else {
        broken!(
            "route {} ({}) declares no fault injection",
            route.name,
            route.at
        );
    };
    let (delay, dshare) = match &fault.delay {
        Some(d) => (
            duration::parse(&d.fixed_delay).unwrap_or_default(),
            d.percentage.as_ref().map_or(0.0, |p| p.value / 100.0),
        ),
        None => (Duration::ZERO, 0.0),
    };
    let (status, ashare) = match &fault.abort {
        Some(a) => (
            a.http_status,
            a.percentage.as_ref().map_or(0.0, |p| p.value / 100.0),
        ),
        None => (0, 0.0),
    };
    (route, delay, dshare, status, ashare)
}

#[given(
    regex = r"^the ingress route (\S+) declares a (\S+) delay for (\S+)% and a (\d+) abort for (\S+)% of requests$"
)]
async fn declared(
    w: &mut MeshWorld,
    name: String,
    delay: String,
    dpct: String,
    status: u16,
    apct: String,
) {
    let model = crate::declared::model(w.target.manifests());
    let route = crate::declared::routes::ingress_route_named(&model, &name)
        .unwrap_or_else(|| broken!("no ingress route named {name}"));
    let Some(fault) = &route.fault else {
        broken!("the ingress route {name} declares no fault ({})", route.at);
    };
    let got = (
        fault.delay.as_ref().map(|d| {
            (
                d.fixed_delay.clone(),
                d.percentage.as_ref().map_or(0.0, |p| p.value),
            )
        }),
        fault.abort.as_ref().map(|a| {
            (
                a.http_status,
                a.percentage.as_ref().map_or(0.0, |p| p.value),
            )
        }),
    );
    let num = |t: &str| {
        t.parse::<f64>()
            .unwrap_or_else(|_| unchecked!("`{t}` is not a number"))
    };
    let same_delay = got.0.as_ref().is_some_and(|(d, p)| {
        duration::parse(d) == duration::parse(&delay) && (p - num(&dpct)).abs() < 1e-9
    });
    let same_abort = got
        .1
        .is_some_and(|(s, p)| s == status && (p - num(&apct)).abs() < 1e-9);
    promise!(
        same_delay && same_abort,
        "the promise is a {delay} delay for {dpct}% and a {status} abort for {apct}% on {name}; it declares {got:?} ({})",
        route.at
    );
    w.evidence(format!(
        "{name}: {delay} delay for {dpct}%, {status} abort for {apct}% ({})",
        route.at
    ));
}

/// A request to `path` that takes the first gateway route declaring a fault (carrying the
/// exact header values its match asks for).
fn opted_in(w: &MeshWorld, path: &str) -> RouteRequest {
    let model = crate::declared::model(w.target.manifests());
    let faulted = crate::declared::routes::gateway_virtual_services(&model)
        .into_iter()
        .flat_map(|vs| vs.spec.http.iter())
        .find(|h| h.fault.is_some())
        .unwrap_or_else(|| unchecked!("no ingress route declares a fault"));
    faulted
        .matches
        .first()
        .map_or(RouteRequest::get(path), |m| {
            m.headers
                .iter()
                .fold(RouteRequest::get(path), |r, (k, v)| match v {
                    crate::manifest::istio::StringMatch::Exact(v) => r.header(k, v),
                    _ => r,
                })
        })
}

/// The ingress proxy's injected delays and aborts so far (every HTTP listener summed).
async fn fault_counters(w: &MeshWorld) -> (u64, u64) {
    let body = crate::target::stats_matching(
        w.target.as_ref(),
        "istio-ingressgateway",
        r"fault\.(delays|aborts)_injected$",
    )
    .await
    .unwrap_or_else(|e| unchecked!("reading the ingress gateway's fault counters: {e:#}"));
    let sum = |suffix: &str| -> u64 {
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    (sum("fault.delays_injected"), sum("fault.aborts_injected"))
}

/// What one open-loop sample through the ingress showed.
#[derive(Debug, Clone)]
pub struct FaultSample {
    pub path: String,
    pub n: u64,
    pub delays: u64,
    pub aborts: u64,
    /// Client-side: answers with the abort status, answers at or past the delay.
    pub seen_aborts: u64,
    pub seen_delays: u64,
    pub errors: u64,
}

async fn sample(
    w: &mut MeshWorld,
    path: &str,
    header: Option<(&str, &str)>,
    n: u64,
    delay: Duration,
    abort: u16,
) -> FaultSample {
    let mut args = ingress_load(w, path, RATE, n);
    if let Some((k, v)) = header {
        args.headers.push(format!("{k}: {v}"));
    }
    let before = fault_counters(w).await;
    let result = run_load(&args).await;
    let after = fault_counters(w).await;
    let rec = &result.recorder;
    let seen_delays = if delay.is_zero() {
        0
    } else {
        // Envoy's delay timer may fire a millisecond early; nothing else takes near this long.
        let at = (delay.as_micros() as u64) * 95 / 100;
        rec.latency
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= at)
            .map(|v| v.count_at_value())
            .sum()
    };
    let s = FaultSample {
        path: path.to_string(),
        n: rec.total(),
        delays: after.0 - before.0,
        aborts: after.1 - before.1,
        seen_aborts: rec.status.get(&abort).copied().unwrap_or(0),
        seen_delays,
        errors: rec.errors.total(),
    };
    w.loads.push(result);
    s
}

#[when(
    regex = r"^enough requests are sent through the ingress to (\S+) with header (\S+): (\S+) to judge the declared fault rates$"
)]
async fn enough_with_header(w: &mut MeshWorld, path: String, header: String, value: String) {
    let req = RouteRequest::get(&path).header(&header, &value);
    let (_, delay, dshare, status, ashare) = declared_fault(w, &req);
    let smallest = [dshare, ashare]
        .into_iter()
        .filter(|p| *p > 0.0)
        .fold(1.0, f64::min);
    // Power against a rate FACTOR times too high and against no fault at all; against one FACTOR
    // times too low it would take ten times the sample, so that power is reported, not promised.
    let n = sample_size(smallest, ALPHA, &[smallest * FACTOR, 0.0], POWER, 200_000).unwrap_or_else(
        || {
            unchecked!(
                "no sample of up to 200000 requests judges a {:.3}% rate",
                smallest * 100.0
            )
        },
    );
    let s = sample(w, &path, Some((&header, &value)), n, delay, status).await;
    w.fault_sample = Some(s);
}

#[when(
    regex = r"^enough requests are sent through the ingress to (\S+) without the header to see a fault that applied to them$"
)]
async fn enough_without(w: &mut MeshWorld, path: String) {
    // The fault the opt-in route declares: a sample large enough that, were it applied to this
    // traffic too, at least one delay or abort shows with probability POWER.
    let req = opted_in(w, &path);
    let (_, delay, dshare, status, ashare) = declared_fault(w, &req);
    let any = 1.0 - (1.0 - dshare) * (1.0 - ashare);
    if any <= 0.0 {
        unchecked!("the declared fault touches no request");
    }
    let n = ((1.0 - POWER).ln() / (1.0 - any).ln()).ceil() as u64;
    let s = sample(w, &path, None, n, delay, status).await;
    w.fault_sample = Some(s);
    w.evidence(format!("n={n}: were the declared fault ({:.2}% of requests) applied without the header, some request would show it with probability {POWER}", any * 100.0));
}

fn the_sample(w: &MeshWorld) -> FaultSample {
    match &w.fault_sample {
        Some(s) if s.n > 0 => s.clone(),
        _ => unchecked!("no requests were sent before this step"),
    }
}

/// One exact two-sided test: the verdict line, or BROKEN.
fn judge(what: &str, k: u64, n: u64, p0: f64) -> String {
    let (lo, hi) = acceptance(n, p0, ALPHA);
    let (cl, ch) = clopper_pearson(k, n, ALPHA);
    let line = format!(
        "{what}: {k} of {n} ({:.3}%), declared {:.3}%: accepted {lo}-{hi} at alpha {ALPHA}; {:.1}% interval {:.3}%-{:.3}%; power {:.3} against {:.3}% and {:.3} against {:.3}%",
        k as f64 / n as f64 * 100.0,
        p0 * 100.0,
        (1.0 - ALPHA) * 100.0,
        cl * 100.0,
        ch * 100.0,
        power(n, p0, ALPHA, p0 * FACTOR),
        p0 * FACTOR * 100.0,
        power(n, p0, ALPHA, p0 / FACTOR),
        p0 / FACTOR * 100.0
    );
    promise!(
        (lo..=hi).contains(&k),
        "the share is not the declared one: {line}"
    );
    line
}

#[then("the delayed and aborted shares are consistent with the declared rates")]
async fn consistent(w: &mut MeshWorld) {
    let s = the_sample(w);
    let req = opted_in(w, &s.path);
    let (route, delay, dshare, _, ashare) = declared_fault(w, &req);
    if s.errors > 0 {
        unchecked!(
            "{} of {} requests got no answer: the counts would be partial",
            s.errors,
            s.n
        );
    }
    if s.seen_aborts != s.aborts {
        unchecked!(
            "the ingress counted {} aborts but clients saw {} answers with the abort status: something else answered too",
            s.aborts,
            s.seen_aborts
        );
    }
    if s.seen_delays < s.delays {
        broken!(
            "the ingress counted {} delays but only {} requests took the declared {} or longer",
            s.delays,
            s.seen_delays,
            human(delay)
        );
    }
    let d = judge(
        &format!("delayed by {}", human(delay)),
        s.delays,
        s.n,
        dshare,
    );
    let a = judge("aborted", s.aborts, s.n, ashare);
    w.alphas.extend([ALPHA, ALPHA]);
    w.evidence(format!("route {} ({}): {d}", route.name, route.at));
    w.evidence(format!("route {}: {a}", route.name));
}

#[then("no request was delayed or aborted by the fault filter")]
async fn none_faulted(w: &mut MeshWorld) {
    let s = the_sample(w);
    promise!(
        s.delays == 0 && s.aborts == 0 && s.seen_aborts == 0,
        "requests without the opt-in header were faulted: the ingress injected {} delays and {} aborts into {} requests",
        s.delays,
        s.aborts,
        s.n
    );
    if s.errors > 0 {
        unchecked!("{} of {} requests got no answer", s.errors, s.n);
    }
    w.evidence(format!(
        "n={}: the ingress injected no delay and no abort",
        s.n
    ));
}
