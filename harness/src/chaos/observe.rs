//! What the data plane shows, read through the Target seam: whether a fault reached traffic
//! (the fault's own counters, or Envoy's stats), outlier ejections, and steady-state probes.
//! Every read is bounded in time: a paused or killed proxy is an unknown, never a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::plan::PlannedFault;
use super::profile::Probe;
use super::validate::INGRESS;
use crate::outcome::Outcome;
use crate::target::{Call, From, Target, stats_matching};

/// How long one admin read may take before its proxy counts as not answering.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A stats read in a sum over every proxy: a live Envoy answers in milliseconds.
const STATS_TIMEOUT: Duration = Duration::from_millis(500);

/// Every proxy of the mesh: the ingress gateway and each pod's sidecar.
pub fn proxies(target: &dyn Target) -> Vec<String> {
    std::iter::once(INGRESS.to_string())
        .chain(target.pods().into_iter().map(|p| p.name))
        .collect()
}

/// The sum of every counter matching `filter` over `proxies` (those that answer within a
/// short timeout), read from all of them at once: a paused proxy costs one timeout, not one
/// per read.
pub async fn counter_sum(target: &dyn Target, proxies: &[String], filter: &str) -> u64 {
    let reads = proxies.iter().map(|p| async move {
        match tokio::time::timeout(STATS_TIMEOUT, stats_matching(target, p, filter)).await {
            Ok(Ok(body)) => crate::envoy::stats::sum_counters(&body),
            _ => 0,
        }
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .sum()
}

/// The Envoy counters that show a fault of `kind` reached traffic, as a `/stats` filter; None
/// for faults whose own counters say so (the agent's, the fault proxy's, the process state).
pub fn evidence_stats(kind: &str) -> Option<&'static str> {
    match kind {
        "route-fault" => Some(r"fault\.(delays|aborts)_injected$"),
        "certificate" => Some(r"ssl\.(fail_verify_error|fail_verify_san|connection_error)$"),
        _ => None,
    }
}

/// Does the data plane show fault `f` yet? `baseline` is [`evidence_stats`]' sum before it
/// was applied. Some(evidence) once it does.
pub async fn shows(target: &dyn Target, f: &PlannedFault, baseline: u64) -> Result<Option<String>> {
    if let Some(filter) = evidence_stats(f.kind) {
        let now = counter_sum(target, &proxies(target), filter).await;
        return Ok((now > baseline).then(|| {
            format!(
                "Envoy counted {} ({filter}) since it was applied",
                now - baseline
            )
        }));
    }
    let active = target.injections().await?;
    let mut shown = Vec::new();
    for (id, _) in &f.injections {
        match active.iter().find(|a| &a.id == id) {
            Some(a) if a.observed > 0 => {
                shown.push(format!("{id}: {}", observed_as(f.kind, a.observed)))
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(shown.join("; ")))
}

fn observed_as(kind: &str, n: u64) -> String {
    match kind {
        "workload" => format!("the agent faulted {n} requests"),
        "network" => format!("{n} connections went through the fault proxy"),
        "pod-kill" => "the sidecar is gone".into(),
        "pod-pause" => "the sidecar is stopped".into(),
        "rejected-push" => format!("Envoy rejected {n} config updates"),
        "delayed-push" => format!("{n} config pushes were held back"),
        _ => format!("observed {n}"),
    }
}

/// Fault ids the target still holds.
pub async fn held(target: &dyn Target) -> Result<Vec<String>> {
    Ok(target
        .injections()
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect())
}

/// A pod as outlier detection sees it from one proxy.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub ejected: bool,
    /// Requests the proxy has sent to it (all clusters of its service).
    pub requests: u64,
    pub listed: bool,
    /// The service's hosts the proxy lists, and how many of the others it ejects now.
    pub hosts: u32,
    pub others_ejected: u32,
}

/// How `proxy` sees `address` in the clusters of `fqdn`.
pub async fn host_view(
    target: &dyn Target,
    proxy: &str,
    fqdn: &str,
    address: &str,
) -> Option<HostView> {
    let body = tokio::time::timeout(ADMIN_TIMEOUT, target.proxy_admin(proxy, "GET", "/clusters"))
        .await
        .ok()?
        .ok()?;
    let mut view = HostView::default();
    let mut hosts = std::collections::BTreeMap::<String, bool>::new();
    let marker = format!("|{fqdn}::");
    for line in body.lines() {
        let Some(i) = line.find(&marker) else {
            continue;
        };
        let rest = &line[i + marker.len()..];
        let Some((host, stat)) = rest.split_once("::") else {
            continue;
        };
        if !host.contains(':') {
            continue;
        }
        let ejected = stat
            .strip_prefix("health_flags::")
            .is_some_and(crate::envoy::clusters::is_ejected);
        *hosts.entry(host.to_string()).or_default() |= ejected;
        if host != address {
            continue;
        }
        view.listed = true;
        view.ejected |= ejected;
        if let Some(n) = stat.strip_prefix("rq_total::") {
            view.requests += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    view.hosts = hosts.len() as u32;
    view.others_ejected = hosts.iter().filter(|(h, e)| **e && *h != address).count() as u32;
    Some(view)
}

/// A probe's answer.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs one probe. `tokens` holds minted JWTs by tenant; `stat_base` the stat probes'
/// values at the start of the experiment.
pub async fn probe(
    target: &dyn Target,
    p: &Probe,
    tokens: &BTreeMap<String, String>,
    stat_base: &BTreeMap<String, u64>,
) -> ProbeResult {
    let (ok, detail) = match (&p.call, &p.stat) {
        (Some(c), _) => {
            let from = if c.from == "ingress" {
                From::Ingress { https: false }
            } else {
                From::Workload(c.from.clone())
            };
            let mut call = Call::new(from, c.to.as_deref().unwrap_or(""), &c.path);
            call.timeout = Duration::from_secs(5);
            if let Some(t) = c.token.as_ref().and_then(|t| tokens.get(&t.tenant)) {
                call = call.header("authorization", &format!("Bearer {t}"));
            }
            match target.call(&call).await {
                Ok(Outcome::Response { status, .. }) if status == c.status => {
                    (true, format!("HTTP {status}"))
                }
                Ok(o) => (false, o.summary()),
                Err(e) => (false, format!("could not call: {e:#}")),
            }
        }
        (_, Some(s)) => {
            let filter = format!("^{}$", crate::regex_literal::escape(&s.name));
            match tokio::time::timeout(ADMIN_TIMEOUT, stats_matching(target, &s.proxy, &filter))
                .await
            {
                Ok(Ok(body)) => {
                    let now = crate::envoy::stats::parse_stat(&body, &s.name).unwrap_or(0);
                    let rise = now.saturating_sub(stat_base.get(&p.name).copied().unwrap_or(now));
                    (
                        rise <= s.at_most,
                        format!("{} rose by {rise} (at most {})", s.name, s.at_most),
                    )
                }
                _ => (false, format!("{}'s Envoy does not answer", s.proxy)),
            }
        }
        _ => (false, "a probe without a call or a stat".into()),
    };
    ProbeResult {
        name: p.name.clone(),
        ok,
        detail,
    }
}

/// A stat probe's current value (its baseline).
pub async fn stat_value(target: &dyn Target, proxy: &str, name: &str) -> u64 {
    let filter = format!("^{}$", crate::regex_literal::escape(name));
    match tokio::time::timeout(ADMIN_TIMEOUT, stats_matching(target, proxy, &filter)).await {
        Ok(Ok(body)) => crate::envoy::stats::parse_stat(&body, name).unwrap_or(0),
        _ => 0,
    }
}
