//! Checks a parsed profile against the mesh it will run on: every name must exist, every value
//! must make sense, before any fault is journaled. Errors are file:line:field.

use std::collections::BTreeSet;

use serde_saphyr::Spanned;

use super::profile::{
    CertificateSpec, Expect, FaultSpec, Mode, NetworkSpec, Profile, Selector, Step, TokenFor,
};
use crate::declared::routes::{self, RouteRequest};
use crate::error::InputError;
use crate::model::MeshModel;
use crate::token::Tier;

/// Why a fault may not do what its author expects (the plan prints them; the run journals
/// them in its timeline).
pub fn warnings(p: &Profile, model: &MeshModel) -> Vec<String> {
    let mut out = Vec::new();
    for (i, step) in p.method.iter().enumerate() {
        let FaultSpec::RouteFault(r) = &step.value.fault else {
            continue;
        };
        let Some(vs) = model
            .manifests
            .virtual_services
            .iter()
            .find(|v| v.name() == r.virtual_service)
        else {
            continue;
        };
        let Some(route) = routes::named_route(model, vs, &r.route) else {
            continue;
        };
        let http = &vs.spec.http[route.index];
        if http.timeout.is_some() || http.retries.is_some() {
            out.push(format!(
                "method[{i}] ({}): route {} of {} declares {}{}; Istio's VirtualService reference says timeouts and retries are not enabled on a route with fault injection, so while this fault is in force the route may lose them (meshtest's local mesh keeps them, as Istio's route translation does)",
                step.value.name,
                route.name,
                r.virtual_service,
                http.timeout.as_deref().map_or(String::new(), |t| format!("a {t} timeout")),
                if http.retries.is_some() { format!("{}{}", if http.timeout.is_some() { " and " } else { "" }, route.retries.describe()) } else { String::new() }
            ));
        }
    }
    out
}

/// The ingress gateway, as selectors and stat probes name it.
pub const INGRESS: &str = "istio-ingressgateway";
/// Most requests per second a profile may ask for (the load stays on loopback, bounded).
pub const MAX_RATE: f64 = 10_000.0;
/// Longest fault, phase or deadline: an experiment always ends by itself.
pub const MAX_SPAN: std::time::Duration = std::time::Duration::from_secs(3_600);

struct Ctx<'a> {
    profile: &'a Profile,
    model: &'a MeshModel,
}

impl Ctx<'_> {
    fn err<T>(&self, line: u64, field: &str, message: impl Into<String>) -> Result<T, InputError> {
        Err(InputError::new(&self.profile.file, message)
            .at_line(line)
            .field(field))
    }

    fn route_keys(&self) -> Vec<String> {
        self.profile
            .load
            .value
            .routes
            .iter()
            .map(|r| r.value.key().to_string())
            .collect()
    }

    fn check_routes(&self, line: u64, field: &str, names: &[String]) -> Result<(), InputError> {
        let keys = self.route_keys();
        for n in names {
            if !keys.contains(n) {
                return self.err(
                    line,
                    field,
                    format!("no load route {n} (the load's routes: {})", keys.join(", ")),
                );
            }
        }
        Ok(())
    }
}

pub fn profile(p: &Profile, model: &MeshModel) -> Result<(), InputError> {
    let cx = Ctx { profile: p, model };
    if p.name.trim().is_empty() {
        return cx.err(1, "name", "a profile needs a name");
    }
    load(&cx)?;
    steady_state(&cx)?;
    if p.method.is_empty() {
        return cx.err(
            1,
            "method",
            "a profile needs at least one fault in `method`",
        );
    }
    for (i, step) in p.method.iter().enumerate() {
        self::step(&cx, i, step)?;
    }
    abort(&cx)?;
    super::alerts::validate(&p.alerts, model, &p.file)?;
    Ok(())
}

fn load(cx: &Ctx) -> Result<(), InputError> {
    let l = &cx.profile.load;
    let line = l.referenced.line();
    if !(l.value.rate > 0.0 && l.value.rate <= MAX_RATE) {
        return cx.err(
            line,
            "load.rate",
            format!("must be above 0 and at most {MAX_RATE} requests per second"),
        );
    }
    if l.value.timeout.0.is_zero() || l.value.timeout.0 > MAX_SPAN {
        return cx.err(line, "load.timeout", "must be above 0 and at most 1h");
    }
    if l.value.routes.is_empty() {
        return cx.err(line, "load.routes", "the load needs at least one route");
    }
    let mut seen = BTreeSet::new();
    for (i, r) in l.value.routes.iter().enumerate() {
        let line = r.referenced.line();
        let field = |f: &str| format!("load.routes[{i}].{f}");
        if !r.value.path.starts_with('/') {
            return cx.err(line, &field("path"), "a path starts with /");
        }
        if !(r.value.weight > 0.0 && r.value.weight.is_finite()) {
            return cx.err(line, &field("weight"), "must be above 0");
        }
        if http::Method::from_bytes(r.value.method.as_bytes()).is_err() {
            return cx.err(line, &field("method"), "not an HTTP method");
        }
        if !seen.insert(r.value.key().to_string()) {
            return cx.err(
                line,
                &field("name"),
                format!("{} names two load routes", r.value.key()),
            );
        }
        token(cx, line, &field("token.tier"), r.value.token.as_ref())?;
    }
    Ok(())
}

fn token(cx: &Ctx, line: u64, field: &str, t: Option<&TokenFor>) -> Result<(), InputError> {
    match t {
        Some(t) if Tier::parse(&t.tier).is_none() => cx.err(
            line,
            field,
            format!("tier {} is not free, pro or enterprise", t.tier),
        ),
        Some(t) if t.tenant.trim().is_empty() => cx.err(line, field, "a token needs a tenant"),
        _ => Ok(()),
    }
}

fn steady_state(cx: &Ctx) -> Result<(), InputError> {
    let s = &cx.profile.steady_state;
    if s.recover_within.0.is_zero() || s.recover_within.0 > MAX_SPAN {
        return cx.err(
            1,
            "steady_state.recover_within",
            "must be above 0 and at most 1h",
        );
    }
    for span in [cx.profile.phases.before.0, cx.profile.phases.after.0] {
        if span > MAX_SPAN {
            return cx.err(1, "phases", "a phase lasts at most 1h");
        }
    }
    let mut names = BTreeSet::new();
    for (i, probe) in s.probes.iter().enumerate() {
        let line = probe.referenced.line();
        let p = &probe.value;
        let field = format!("steady_state.probes[{i}]");
        if !names.insert(p.name.clone()) {
            return cx.err(
                line,
                &format!("{field}.name"),
                format!("two probes are named {}", p.name),
            );
        }
        match (&p.call, &p.stat) {
            (Some(call), None) => {
                if !call.path.starts_with('/') {
                    return cx.err(line, &format!("{field}.call.path"), "a path starts with /");
                }
                if call.from != "ingress" {
                    workload(cx, line, &format!("{field}.call.from"), &call.from)?;
                    let Some(to) = &call.to else {
                        return cx.err(
                            line,
                            &format!("{field}.call.to"),
                            "a workload's call needs `to` (a service)",
                        );
                    };
                    let (name, _) = crate::target::split_port(to);
                    workload(cx, line, &format!("{field}.call.to"), name)?;
                }
                token(
                    cx,
                    line,
                    &format!("{field}.call.token.tier"),
                    call.token.as_ref(),
                )?;
            }
            (None, Some(stat)) => {
                if stat.proxy != INGRESS {
                    pod(cx, line, &format!("{field}.stat.proxy"), &stat.proxy)?;
                }
            }
            _ => {
                return cx.err(
                    line,
                    &field,
                    "a probe is either a `call` or a `stat`, exactly one",
                );
            }
        }
    }
    Ok(())
}

fn workload(cx: &Ctx, line: u64, field: &str, name: &str) -> Result<(), InputError> {
    if cx.model.service(name).is_some() || cx.model.pods.iter().any(|p| p.name == name) {
        return Ok(());
    }
    cx.err(line, field, format!("no service or pod {name} in the mesh"))
}

fn pod(cx: &Ctx, line: u64, field: &str, name: &str) -> Result<(), InputError> {
    if cx.model.pods.iter().any(|p| p.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = cx.model.pods.iter().map(|p| p.name.as_str()).collect();
    cx.err(
        line,
        field,
        format!("no pod {name} in the mesh (pods: {})", names.join(", ")),
    )
}

fn step(cx: &Ctx, i: usize, spanned: &Spanned<Step>) -> Result<(), InputError> {
    let line = spanned.referenced.line();
    let s = &spanned.value;
    let f = |name: &str| format!("method[{i}].{name}");
    if s.name.trim().is_empty() {
        return cx.err(line, &f("name"), "every fault needs a name");
    }
    if s.duration.0.is_zero() || s.duration.0 > MAX_SPAN || s.at.0 > MAX_SPAN {
        return cx.err(
            line,
            &f("duration"),
            "a fault lasts above 0 and at most 1h, and starts within 1h",
        );
    }
    if s.verify_within().is_zero() || s.verify_within() > s.duration.0 {
        return cx.err(
            line,
            &f("verify_within"),
            "must be above 0 and no longer than the fault's duration",
        );
    }
    let needs_target = !matches!(s.fault, FaultSpec::RouteFault(_));
    match (&s.target, needs_target) {
        (None, true) => {
            return cx.err(
                line,
                &f("target"),
                format!("a {} fault needs a target", s.fault.kind()),
            );
        }
        (Some(_), false) => {
            return cx.err(
                line,
                &f("target"),
                "a route fault names its virtual_service and route, not a target",
            );
        }
        (Some(sel), true) => {
            let ingress_ok = matches!(
                s.fault,
                FaultSpec::RejectedPush(_) | FaultSpec::DelayedPush(_)
            );
            selector(cx, line, &f("target"), sel, ingress_ok)?;
        }
        (None, false) => {}
    }
    fault(cx, line, &f("fault"), s)?;
    cx.check_routes(line, &f("affects"), &s.affects)?;
    for (j, e) in s.expect.iter().enumerate() {
        expectation(
            cx,
            e.referenced.line(),
            &f(&format!("expect[{j}]")),
            &e.value,
            s,
        )?;
    }
    Ok(())
}

fn selector(
    cx: &Ctx,
    line: u64,
    field: &str,
    s: &Selector,
    ingress_ok: bool,
) -> Result<(), InputError> {
    match (&s.service, s.pods.is_empty()) {
        (Some(svc), true) => {
            if cx.model.service(svc).is_none() {
                let names: Vec<&str> = cx.model.services.iter().map(|s| s.name.as_str()).collect();
                return cx.err(
                    line,
                    &format!("{field}.service"),
                    format!(
                        "no service {svc} in the mesh (services: {})",
                        names.join(", ")
                    ),
                );
            }
        }
        (None, false) => {
            for p in &s.pods {
                if !(ingress_ok && p == INGRESS) {
                    pod(cx, line, &format!("{field}.pods"), p)?;
                }
            }
        }
        _ => {
            return cx.err(
                line,
                field,
                "a target names a `service` or `pods`, exactly one",
            );
        }
    }
    if let Some(v) = &s.version {
        let any = cx.model.pods.iter().any(|p| {
            &p.version == v && (s.service.as_ref() == Some(&p.service) || s.pods.contains(&p.name))
        });
        if !any {
            return cx.err(
                line,
                &format!("{field}.version"),
                format!("no selected pod has version {v}"),
            );
        }
    }
    match (s.mode, s.value) {
        (Mode::Fixed, Some(n)) if n >= 1.0 && n.fract() == 0.0 => Ok(()),
        (Mode::Percent, Some(p)) if p > 0.0 && p <= 100.0 => Ok(()),
        (Mode::Fixed, _) => cx.err(
            line,
            &format!("{field}.value"),
            "mode fixed needs `value`: how many pods (a whole number, at least 1)",
        ),
        (Mode::Percent, _) => cx.err(
            line,
            &format!("{field}.value"),
            "mode percent needs `value` above 0 and at most 100",
        ),
        (_, Some(_)) => cx.err(
            line,
            &format!("{field}.value"),
            "only modes fixed and percent take a value",
        ),
        _ => Ok(()),
    }
}

fn fault(cx: &Ctx, line: u64, field: &str, s: &Step) -> Result<(), InputError> {
    match &s.fault {
        FaultSpec::Workload(w) => {
            let effects = [
                w.status.is_some(),
                w.delay.is_some(),
                w.hang,
                w.close,
                w.slow_body.is_some(),
            ];
            if !effects.iter().any(|e| *e) {
                return cx.err(
                    line,
                    &format!("{field}.workload"),
                    "a workload fault needs status, delay, hang, close or slow_body",
                );
            }
            if let Some(st) = w.status
                && !(100..=599).contains(&st)
            {
                return cx.err(
                    line,
                    &format!("{field}.workload.status"),
                    "not an HTTP status",
                );
            }
        }
        FaultSpec::PodKill(k) => {
            if k.backoff.is_some_and(|b| b.0 > MAX_SPAN) {
                return cx.err(line, &format!("{field}.pod-kill.backoff"), "at most 1h");
            }
        }
        FaultSpec::PodPause(_) | FaultSpec::RejectedPush(_) => {}
        FaultSpec::DelayedPush(d) => {
            if d.delay.0.is_zero() || d.delay.0 > std::time::Duration::from_secs(60) {
                return cx.err(
                    line,
                    &format!("{field}.delayed-push.delay"),
                    "more than 0 and at most 60s (a push holds every later change back)",
                );
            }
        }
        FaultSpec::RouteFault(r) => {
            let vs = cx
                .model
                .manifests
                .virtual_services
                .iter()
                .find(|v| v.name() == r.virtual_service);
            let Some(vs) = vs else {
                let names: Vec<&str> = cx
                    .model
                    .manifests
                    .virtual_services
                    .iter()
                    .map(|v| v.name())
                    .collect();
                return cx.err(
                    line,
                    &format!("{field}.route-fault.virtual_service"),
                    format!(
                        "no VirtualService {} (there are: {})",
                        r.virtual_service,
                        names.join(", ")
                    ),
                );
            };
            if routes::named_route(cx.model, vs, &r.route).is_none() {
                let names: Vec<String> = vs
                    .spec
                    .http
                    .iter()
                    .enumerate()
                    .map(|(i, h)| h.name.clone().unwrap_or(format!("#{i}")))
                    .collect();
                return cx.err(
                    line,
                    &format!("{field}.route-fault.route"),
                    format!(
                        "{} has no route {} (routes: {})",
                        r.virtual_service,
                        r.route,
                        names.join(", ")
                    ),
                );
            }
            if r.delay.is_none() && r.abort.is_none() {
                return cx.err(
                    line,
                    &format!("{field}.route-fault"),
                    "a route fault needs a delay, an abort, or both",
                );
            }
            if let Some(a) = &r.abort
                && !(200..=599).contains(&a.status)
            {
                return cx.err(
                    line,
                    &format!("{field}.route-fault.abort.status"),
                    "Istio aborts with a status from 200 to 599",
                );
            }
        }
        FaultSpec::Network(n) => network(cx, line, &format!("{field}.network"), n)?,
        FaultSpec::Certificate(CertificateSpec { cert }) => {
            if cert != "expired" && cert != "other-identity" {
                return cx.err(
                    line,
                    &format!("{field}.certificate.cert"),
                    "expired or other-identity",
                );
            }
        }
    }
    Ok(())
}

fn network(cx: &Ctx, line: u64, field: &str, n: &NetworkSpec) -> Result<(), InputError> {
    selector(cx, line, &format!("{field}.from"), &n.from, true)?;
    let effects = [
        n.latency.is_some(),
        n.bandwidth.is_some(),
        n.reset,
        n.blackhole,
        n.slow_close.is_some(),
    ];
    if effects.iter().filter(|e| **e).count() != 1 {
        return cx.err(line, field, "a network fault is exactly one of latency (with optional jitter), bandwidth, reset, blackhole, slow_close");
    }
    if n.jitter.is_some() && n.latency.is_none() {
        return cx.err(line, &format!("{field}.jitter"), "jitter goes with latency");
    }
    if n.bandwidth == Some(0) {
        return cx.err(
            line,
            &format!("{field}.bandwidth"),
            "0 bytes per second is a blackhole: write `blackhole: true`",
        );
    }
    Ok(())
}

fn expectation(
    cx: &Ctx,
    line: u64,
    field: &str,
    e: &Expect,
    step: &Step,
) -> Result<(), InputError> {
    match e {
        Expect::NoClientErrors(s) => cx.check_routes(line, &format!("{field}.routes"), &s.routes),
        Expect::ErrorRateAtMost { routes, .. } | Expect::P99Below { routes, .. } => {
            cx.check_routes(line, &format!("{field}.routes"), routes)
        }
        Expect::ErrorRateAtMostWeight { subset, routes } => {
            cx.check_routes(line, &format!("{field}.routes"), routes)?;
            let declared = routes_or_all(cx, routes).into_iter().all(|path| {
                routes::gateway_route(cx.model, "*", &RouteRequest::get(&path)).is_some_and(|r| {
                    r.destinations
                        .iter()
                        .any(|d| d.subset.as_deref() == Some(subset.as_str()))
                })
            });
            if !declared {
                return cx.err(line, &format!("{field}.subset"), format!("the ingress route of every load route must send a weighted share to subset {subset}"));
            }
            Ok(())
        }
        Expect::ShedsLoad { service } => {
            if cx.model.service(service).is_none() {
                return cx.err(
                    line,
                    &format!("{field}.service"),
                    format!("no service {service}"),
                );
            }
            Ok(())
        }
        Expect::SubsetUnaffected { service, subset } => {
            if cx.model.service(service).is_none() {
                return cx.err(
                    line,
                    &format!("{field}.service"),
                    format!("no service {service}"),
                );
            }
            if crate::declared::traffic::subset(cx.model, service, subset).is_none() {
                return cx.err(
                    line,
                    &format!("{field}.subset"),
                    format!("no DestinationRule declares subset {subset} of {service}"),
                );
            }
            Ok(())
        }
        Expect::EjectedWithin { by, .. } => {
            if cx.model.service(by).is_none() {
                return cx.err(line, &format!("{field}.by"), format!("no service {by}"));
            }
            if step
                .target
                .as_ref()
                .is_none_or(|t| t.service.is_none() && t.pods.is_empty())
            {
                return cx.err(line, field, "ejection needs the fault to target pods");
            }
            Ok(())
        }
        Expect::RequestsEndWithin { within, routes } => {
            cx.check_routes(line, &format!("{field}.routes"), routes)?;
            if within != "declared" && meshtest_load::duration::parse(within).is_err() {
                return cx.err(line, &format!("{field}.within"), format!("'{within}' is neither a duration nor `declared` (the route's declared timeout)"));
            }
            if within == "declared" {
                for path in routes_or_all(cx, routes) {
                    let deadline = routes::gateway_route(cx.model, "*", &RouteRequest::get(&path))
                        .and_then(|r| r.effective_deadline());
                    if deadline.is_none() {
                        return cx.err(line, &format!("{field}.within"), format!("the ingress route for {path} declares no timeout to end requests at"));
                    }
                }
            }
            Ok(())
        }
        Expect::FailsFast { routes, .. } => {
            if routes.is_empty() {
                return cx.err(
                    line,
                    &format!("{field}.routes"),
                    "name the routes that must fail fast",
                );
            }
            cx.check_routes(line, &format!("{field}.routes"), routes)
        }
    }
}

/// The paths of the named load routes (all when none are named).
fn routes_or_all(cx_profile: &Ctx, names: &[String]) -> Vec<String> {
    cx_profile
        .profile
        .load
        .value
        .routes
        .iter()
        .filter(|r| names.is_empty() || names.iter().any(|n| n == r.value.key()))
        .map(|r| r.value.path.clone())
        .collect()
}

fn abort(cx: &Ctx) -> Result<(), InputError> {
    let a = &cx.profile.abort;
    if let Some(name) = &a.probe_failing
        && !cx
            .profile
            .steady_state
            .probes
            .iter()
            .any(|p| &p.value.name == name)
    {
        return cx.err(
            1,
            "abort.probe_failing",
            format!("no steady-state probe named {name}"),
        );
    }
    if a.r#for.is_some_and(|d| d.0.is_zero() || d.0 > MAX_SPAN) {
        return cx.err(1, "abort.for", "must be above 0 and at most 1h");
    }
    if a.deadline.is_some_and(|d| d.0.is_zero() || d.0 > MAX_SPAN) {
        return cx.err(1, "abort.deadline", "must be above 0 and at most 1h");
    }
    if a.max_pods == Some(0) {
        return cx.err(
            1,
            "abort.max_pods",
            "at least 1 (a fault always touches something)",
        );
    }
    Ok(())
}
