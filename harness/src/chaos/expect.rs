//! Judging what a fault must show, over the requests sent while it was in force (and Envoy's
//! view of the faulted pods): each expectation HOLDS, is BROKEN, or is UNCHECKED when the window
//! holds too little to tell. Values the manifests declare (route timeouts, subset weights,
//! outlier thresholds) are read from them, never assumed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::observe::{self, HostView};
use super::profile::Expect;
use super::traffic::Window;
use crate::conformance::verdict::Verdict;
use crate::declared::routes::{self, RouteRequest};
use crate::model::MeshModel;
use crate::target::Target;

/// False-alarm rate of the statistical expectations.
pub const ALPHA: f64 = 0.001;
/// Fewest requests a statistical expectation judges.
pub const MIN_SAMPLE: u64 = 50;

/// A hypothesis' verdict with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    pub hypothesis: String,
    pub verdict: Verdict,
    pub evidence: String,
}

impl Judgement {
    pub fn new(
        hypothesis: impl Into<String>,
        verdict: Verdict,
        evidence: impl Into<String>,
    ) -> Judgement {
        Judgement {
            hypothesis: hypothesis.into(),
            verdict,
            evidence: evidence.into(),
        }
    }
}

/// The load routes' keys and paths, for expectations that name routes.
pub struct Routes<'a> {
    pub keys: Vec<String>,
    pub paths: BTreeMap<String, String>,
    pub model: &'a MeshModel,
}

impl Routes<'_> {
    fn scope(&self, names: &[String]) -> Vec<String> {
        if names.is_empty() {
            self.keys.clone()
        } else {
            names.to_vec()
        }
    }
}

/// Judges an expectation that reads only the load: `window` gives the requests of some routes.
pub fn judge(e: &Expect, routes: &Routes, window: &dyn Fn(&[String]) -> Window) -> Judgement {
    let hyp = e.describe();
    let j = |v, ev: String| Judgement::new(hyp.clone(), v, ev);
    match e {
        Expect::NoClientErrors(s) => {
            let w = window(&routes.scope(&s.routes));
            match w.requests {
                0 => j(
                    Verdict::Unchecked,
                    "no request was sent while the fault was in force".into(),
                ),
                _ if w.failures == 0 => j(Verdict::Holds, w.describe()),
                _ => j(Verdict::Broken, w.describe()),
            }
        }
        Expect::ErrorRateAtMost {
            value,
            routes: names,
        } => {
            let w = window(&routes.scope(names));
            match w.error_rate() {
                None => j(
                    Verdict::Unchecked,
                    "no request was sent while the fault was in force".into(),
                ),
                Some(r) if r <= value.fraction() => j(
                    Verdict::Holds,
                    format!("{:.2}% failed: {}", r * 100.0, w.describe()),
                ),
                Some(r) => j(
                    Verdict::Broken,
                    format!(
                        "{:.2}% failed, above {}%: {}",
                        r * 100.0,
                        value.0,
                        w.describe()
                    ),
                ),
            }
        }
        Expect::ErrorRateAtMostWeight {
            subset,
            routes: names,
        } => at_most_weight(&hyp, subset, routes, &window(&routes.scope(names)), names),
        Expect::P99Below {
            value,
            routes: names,
        } => p99_below(&hyp, value.0, &window(&routes.scope(names))),
        Expect::RequestsEndWithin {
            within,
            routes: names,
        } => {
            let mut out = Vec::new();
            for key in routes.scope(names) {
                let limit = match end_limit(within, routes, &key) {
                    Ok(l) => l,
                    Err(why) => return j(Verdict::Unchecked, why),
                };
                out.push((key.clone(), limit, window(std::slice::from_ref(&key))));
            }
            ends_within(&hyp, &out)
        }
        Expect::FailsFast {
            within,
            routes: names,
        } => fails_fast(&hyp, within.0, &window(names)),
        Expect::SubsetUnaffected { .. }
        | Expect::ShedsLoad { .. }
        | Expect::EjectedWithin { .. } => {
            j(Verdict::Unchecked, "judged from Envoy, not the load".into())
        }
    }
}

fn at_most_weight(
    hyp: &str,
    subset: &str,
    routes: &Routes,
    w: &Window,
    names: &[String],
) -> Judgement {
    let keys = routes.scope(names);
    let mut weight: f64 = 0.0;
    for key in &keys {
        let path = routes.paths.get(key).cloned().unwrap_or_default();
        let Some(route) = routes::gateway_route(routes.model, "*", &RouteRequest::get(&path))
        else {
            return Judgement::new(
                hyp,
                Verdict::Unchecked,
                format!("no ingress route serves {path}"),
            );
        };
        let total: u32 = route.destinations.iter().map(|d| d.weight).sum();
        let share: u32 = route
            .destinations
            .iter()
            .filter(|d| d.subset.as_deref() == Some(subset))
            .map(|d| d.weight)
            .sum();
        weight = weight.max(if total == 0 {
            0.0
        } else {
            f64::from(share) / f64::from(total)
        });
    }
    if w.requests < MIN_SAMPLE {
        return Judgement::new(
            hyp,
            Verdict::Unchecked,
            format!(
                "{} requests in the window, fewer than {MIN_SAMPLE} to judge a share: {}",
                w.requests,
                w.describe()
            ),
        );
    }
    let (lower, _) =
        crate::conformance::stats::clopper_pearson(w.failures, w.requests, 2.0 * ALPHA);
    let ev = format!(
        "{} of {} failed ({:.2}%); {subset}'s declared weight is {:.1}%; the share that failed is at least {:.2}% (one-sided, false-alarm rate {ALPHA})",
        w.failures,
        w.requests,
        w.failures as f64 / w.requests as f64 * 100.0,
        weight * 100.0,
        lower * 100.0
    );
    if lower > weight {
        Judgement::new(hyp, Verdict::Broken, ev)
    } else {
        Judgement::new(hyp, Verdict::Holds, ev)
    }
}

/// p99 below `limit`: a request that timed out counts as slower; other errors are unobserved.
pub fn p99_below(hyp: &str, limit: Duration, w: &Window) -> Judgement {
    if w.requests == 0 {
        return Judgement::new(hyp, Verdict::Unchecked, "no request in the window");
    }
    let limit_us = limit.as_micros() as u64;
    let slow_answers: u64 = w
        .latency
        .iter_recorded()
        .filter(|v| v.value_iterated_to() >= limit_us)
        .map(|v| v.count_at_value())
        .sum();
    let errors: u64 = w.errors.values().sum();
    let slow = slow_answers + w.timeouts();
    let unobserved = errors - w.timeouts();
    let allowed = w.requests - (0.99 * w.requests as f64).ceil() as u64;
    let ev = format!(
        "{slow} of {} at or past {} ({} unobserved; p99 allows {allowed}): {}",
        w.requests,
        meshtest_load::duration::human(limit),
        unobserved,
        w.describe()
    );
    if slow > allowed {
        Judgement::new(hyp, Verdict::Broken, ev)
    } else if slow + unobserved > allowed {
        Judgement::new(
            hyp,
            Verdict::Unchecked,
            format!("too many requests without an answer to tell: {ev}"),
        )
    } else {
        Judgement::new(hyp, Verdict::Holds, ev)
    }
}

/// The limit of `requests_end_within` for one route: a duration, or the ingress route's
/// declared deadline plus a margin (max 1 s, 10%) for scheduling and the hops.
fn end_limit(within: &str, routes: &Routes, key: &str) -> Result<Duration, String> {
    if within != "declared" {
        return meshtest_load::duration::parse(within);
    }
    let path = routes.paths.get(key).cloned().unwrap_or_default();
    let deadline = routes::gateway_route(routes.model, "*", &RouteRequest::get(&path))
        .and_then(|r| r.effective_deadline())
        .ok_or_else(|| format!("the ingress route for {path} declares no timeout"))?;
    Ok(deadline + (deadline / 10).max(Duration::from_secs(1)))
}

fn ends_within(hyp: &str, per_route: &[(String, Duration, Window)]) -> Judgement {
    let mut lines = Vec::new();
    let mut verdict = Verdict::Holds;
    for (key, limit, w) in per_route {
        let max = w.quantile(1.0).unwrap_or_default();
        let line = format!(
            "{key}: every request by {} ({}; longest {:.1} s, {} timed out at the load's own timeout)",
            meshtest_load::duration::human(*limit),
            w.describe(),
            max.as_secs_f64(),
            w.timeouts()
        );
        let v = if w.requests == 0 {
            Verdict::Unchecked
        } else if max > *limit || w.timeouts() > 0 {
            Verdict::Broken
        } else {
            Verdict::Holds
        };
        verdict = Verdict::combine([verdict, v]);
        lines.push(line);
    }
    Judgement::new(hyp, verdict, lines.join("; "))
}

fn fails_fast(hyp: &str, within: Duration, w: &Window) -> Judgement {
    if w.requests == 0 {
        return Judgement::new(hyp, Verdict::Unchecked, "no request in the window");
    }
    if w.failures == 0 {
        return Judgement::new(
            hyp,
            Verdict::Unchecked,
            format!(
                "no request failed, so nothing shows how fast they fail: {}",
                w.describe()
            ),
        );
    }
    let p99 = p99_below(hyp, within, w);
    let ev = format!("{} of {} failed; {}", w.failures, w.requests, p99.evidence);
    Judgement::new(hyp, p99.verdict, ev)
}

/// Does the fault make its pods answer with gateway errors (502/503/504, or no answer, which
/// Envoy turns into 503)?
pub fn gateway_errors(i: &crate::target::injection::Injection) -> bool {
    use crate::target::injection::{Injection, NetworkFault};
    match i {
        Injection::Workload { fault, .. } => {
            fault.close || fault.status.is_some_and(|s| (502..=504).contains(&s))
        }
        Injection::PodKill { .. } | Injection::PodPause { .. } | Injection::Certificate { .. } => {
            true
        }
        Injection::Network { fault, .. } => {
            matches!(fault, NetworkFault::Reset | NetworkFault::Blackhole)
        }
        Injection::RouteFault { .. }
        | Injection::RejectedPush { .. }
        | Injection::DelayedPush { .. } => false,
    }
}

/// Envoy counters behind `subset_unaffected`: (5xx, total) summed over every proxy.
pub async fn subset_counters(
    target: &dyn Target,
    model: &MeshModel,
    service: &str,
    subset: &str,
) -> (u64, u64) {
    let Some(svc) = model.service(service) else {
        return (0, 0);
    };
    let base = format!(
        r"^cluster\.outbound\|\d+\|{}\|{}\.",
        crate::regex_literal::escape(subset),
        crate::regex_literal::escape(&svc.fqdn())
    );
    let proxies = observe::proxies(target);
    let errors = observe::counter_sum(target, &proxies, &format!("{base}upstream_rq_5xx$")).await;
    let total = observe::counter_sum(target, &proxies, &format!("{base}upstream_rq_total$")).await;
    (errors, total)
}

/// Envoy counters an expectation is judged on, read when the fault shows and when it is
/// reverted; None for expectations judged otherwise.
pub async fn window_counters(
    target: &dyn Target,
    model: &MeshModel,
    e: &Expect,
) -> Option<(u64, u64)> {
    match e {
        Expect::SubsetUnaffected { service, subset } => {
            Some(subset_counters(target, model, service, subset).await)
        }
        Expect::ShedsLoad { service } => {
            let svc = model.service(service)?;
            let base = format!(
                r"^cluster\.outbound\|\d+\|[^|]*\|{}\.",
                crate::regex_literal::escape(&svc.fqdn())
            );
            let proxies = observe::proxies(target);
            let overflow = observe::counter_sum(
                target,
                &proxies,
                &format!("{base}upstream_rq_pending_overflow$"),
            )
            .await;
            let total =
                observe::counter_sum(target, &proxies, &format!("{base}upstream_rq_total$")).await;
            Some((overflow, total))
        }
        _ => None,
    }
}

/// Judges an expectation from its counters at both ends of the fault.
pub fn judge_counters(e: &Expect, before: (u64, u64), after: (u64, u64)) -> Judgement {
    let hyp = e.describe();
    match e {
        Expect::ShedsLoad { .. } => {
            let shed = after.0.saturating_sub(before.0);
            let sent = after.1.saturating_sub(before.1);
            let ev = format!(
                "{shed} requests shed by a full pending queue among {sent} the proxies sent it"
            );
            if shed > 0 {
                Judgement::new(hyp, Verdict::Holds, ev)
            } else {
                Judgement::new(hyp, Verdict::Broken, format!("nothing was shed: {ev}"))
            }
        }
        _ => judge_subset(&hyp, before, after),
    }
}

pub fn judge_subset(hyp: &str, before: (u64, u64), after: (u64, u64)) -> Judgement {
    let errors = after.0.saturating_sub(before.0);
    let total = after.1.saturating_sub(before.1);
    let ev = format!("{errors} 5xx among {total} requests the proxies sent to it during the fault");
    match (total, errors) {
        (0, _) => Judgement::new(
            hyp,
            Verdict::Unchecked,
            format!("no traffic reached it: {ev}"),
        ),
        (_, 0) => Judgement::new(hyp, Verdict::Holds, ev),
        _ => Judgement::new(hyp, Verdict::Broken, ev),
    }
}

/// Watches the proxies of `by` until each that sent a faulted pod at least the declared
/// consecutive-error threshold of requests has ejected it, or `within` has passed since the
/// fault was verified. A proxy that sent fewer cannot be expected to eject.
pub async fn watch_ejection(
    target: &dyn Target,
    model: &MeshModel,
    by: &str,
    pods: &[String],
    gateway_errors: bool,
    within: Duration,
    hyp: String,
) -> Judgement {
    let started = Instant::now();
    let Some(pod) = pods
        .first()
        .and_then(|p| target.pods().into_iter().find(|x| &x.name == p))
    else {
        return Judgement::new(hyp, Verdict::Unchecked, "the fault hit no pod to eject");
    };
    let Some(svc) = model.service(&pod.service) else {
        return Judgement::new(
            hyp,
            Verdict::Unchecked,
            format!("no service {}", pod.service),
        );
    };
    let declared = crate::declared::traffic::outlier(model, svc);
    // 502/503/504 and connection failures count toward both thresholds; other 5xx only toward
    // consecutive 5xx. Without declared outlier detection the proxies are still watched (an
    // EnvoyFilter could add it), at Envoy's own default of 5.
    let threshold = match &declared.value {
        Some(o) => {
            let gateway = if gateway_errors {
                o.consecutive_gateway_errors
            } else {
                None
            };
            [o.consecutive_5xx_errors, gateway]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u32::MAX)
        }
        None => 5,
    };
    let at = match &declared.value {
        Some(_) => declared.at.clone(),
        None => format!(
            "no outlier detection declared for {} ({}); Envoy's default",
            svc.name, declared.at
        ),
    };
    let callers: Vec<String> = target
        .pods()
        .into_iter()
        .filter(|p| p.service == by)
        .map(|p| p.name)
        .collect();
    let targets: Vec<(String, String)> = target
        .pods()
        .into_iter()
        .filter(|p| pods.contains(&p.name))
        .map(|p| (p.name.clone(), p.address()))
        .collect();
    let fqdn = svc.fqdn();
    let mut watch = Watch::default();
    loop {
        for c in &callers {
            for (name, addr) in &targets {
                let key = (c.clone(), name.clone());
                if watch.ejected_at.contains_key(&key) || watch.excluded.contains_key(&key) {
                    continue;
                }
                if let Some(v) = observe::host_view(target, c, &fqdn, addr).await {
                    watch.see(key, v, started.elapsed(), declared.value.as_ref());
                }
            }
        }
        if watch.settled(threshold) || started.elapsed() >= within {
            return watch.verdict(hyp, threshold, within, &at);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What an ejection watch has seen, per (proxy, pod).
#[derive(Default)]
struct Watch {
    base: BTreeMap<(String, String), u64>,
    ejected_at: BTreeMap<(String, String), Duration>,
    last: BTreeMap<(String, String), HostView>,
    /// Pairs that cannot be judged, and why (ejected before the watch, or the proxy already
    /// ejects as many hosts as the declared maximum allows).
    excluded: BTreeMap<(String, String), String>,
}

impl Watch {
    fn see(
        &mut self,
        key: (String, String),
        v: HostView,
        at: Duration,
        declared: Option<&crate::declared::traffic::Outlier>,
    ) {
        if !self.base.contains_key(&key) {
            let full = declared.is_some_and(|o| v.others_ejected >= o.max_ejected(v.hosts));
            if v.ejected {
                self.excluded
                    .insert(key, "was already ejected when the watch began".into());
                return;
            }
            if full {
                let why = format!(
                    "already ejects {} of {} hosts, as many as the declared maxEjectionPercent allows",
                    v.others_ejected, v.hosts
                );
                self.excluded.insert(key, why);
                return;
            }
            self.base.insert(key.clone(), v.requests);
        }
        if v.ejected {
            self.ejected_at.insert(key.clone(), at);
        }
        self.last.insert(key, v);
    }

    /// Every pair that has been sent enough to be due has ejected, and every pair is due.
    fn settled(&self, threshold: u32) -> bool {
        let due: Vec<&(String, String)> = self
            .last
            .iter()
            .filter(|(k, v)| v.requests.saturating_sub(self.base[*k]) >= u64::from(threshold))
            .map(|(k, _)| k)
            .collect();
        !due.is_empty()
            && due.len() == self.last.len()
            && due.iter().all(|k| self.ejected_at.contains_key(*k))
    }

    fn verdict(&self, hyp: String, threshold: u32, within: Duration, at: &str) -> Judgement {
        let mut lines = Vec::new();
        let mut verdict = Verdict::Holds;
        let mut judged = 0;
        for (k, v) in &self.last {
            let sent = v.requests.saturating_sub(self.base[k]);
            match self.ejected_at.get(k) {
                Some(t) => {
                    judged += 1;
                    lines.push(format!(
                        "{} ejected {} after {:.1} s",
                        k.0,
                        k.1,
                        t.as_secs_f64()
                    ));
                }
                None if sent >= u64::from(threshold) => {
                    judged += 1;
                    verdict = Verdict::Broken;
                    lines.push(format!(
                        "{} sent {} {sent} requests and did not eject it within {}",
                        k.0,
                        k.1,
                        meshtest_load::duration::human(within)
                    ));
                }
                None => lines.push(format!(
                    "{} sent {} only {sent} requests (the threshold is {threshold}): not judged",
                    k.0, k.1
                )),
            }
        }
        for (k, why) in &self.excluded {
            lines.push(format!("{} {} {why}: not judged", k.0, k.1));
        }
        if judged == 0 {
            verdict = Verdict::Unchecked;
        }
        Judgement::new(
            hyp,
            verdict,
            format!(
                "consecutive-error threshold {threshold} ({at}); {}",
                lines.join("; ")
            ),
        )
    }
}
