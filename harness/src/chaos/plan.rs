//! A profile resolved into what will happen: the pods each selector picks (from a seeded RNG,
//! so `--seed` replays the same choices), each fault's injections, inverse and lease, and the
//! timeline. `--dry-run` prints it and stops.

use std::fmt::Write;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use super::profile::{FaultSpec, Mode, Profile, Selector, Step};
use super::validate::INGRESS;
use crate::agent::Fault;
use crate::error::InputError;
use crate::target::injection::{CertFault, Injection, NetworkFault};

/// Lease margin beyond a fault's duration: the run reverts at the end of the duration; the
/// lease only ends what a dead run could not.
pub const LEASE_MARGIN: Duration = Duration::from_secs(15);

/// A pod selectors may pick.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub service: String,
    pub version: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: String,
    pub seed: u64,
    pub faults: Vec<PlannedFault>,
    /// Offset of the first fault window (the end of the `before` phase).
    pub before: Duration,
    pub after: Duration,
}

#[derive(Debug, Clone)]
pub struct PlannedFault {
    /// f1, f2, ... in method order.
    pub id: String,
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    /// From the start of the experiment.
    pub start: Duration,
    pub duration: Duration,
    pub lease: Duration,
    /// What is injected: one per targeted pod (or one for routes and networks), each with its
    /// own id `fN.M`.
    pub injections: Vec<(String, Injection)>,
    /// The pods hit (for blast radius and ejection checks).
    pub pods: Vec<String>,
}

impl PlannedFault {
    pub fn end(&self) -> Duration {
        self.start + self.duration
    }

    pub fn target(&self) -> String {
        match self.injections.first() {
            Some((
                _,
                Injection::RouteFault {
                    virtual_service,
                    route,
                    ..
                },
            )) => {
                format!("{virtual_service}/{route}")
            }
            Some((_, Injection::Network { from, to, .. })) => {
                format!("{} -> {}", from.join(","), to.join(","))
            }
            _ => self.pods.join(","),
        }
    }
}

impl Plan {
    /// Where the experiment ends if nothing aborts it: the last fault's end plus `after`.
    pub fn span(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.end())
            .max()
            .unwrap_or(self.before)
            + self.after
    }

    pub fn max_pods_at_once(&self) -> usize {
        let mut most = 0;
        for f in &self.faults {
            let overlapping: std::collections::BTreeSet<&String> = self
                .faults
                .iter()
                .filter(|g| g.start < f.end() && f.start < g.end())
                .flat_map(|g| g.pods.iter())
                .collect();
            most = most.max(overlapping.len());
        }
        most
    }
}

/// A seed from the clock and the PID, printed so the run can be replayed.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// "chaos-20261129T104800Z-3f2a": sortable, and safe in owner strings, URLs and file names.
pub fn run_id(seed: u64) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "chaos-{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:04x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        (seed ^ u64::from(std::process::id())) & 0xffff
    )
}

/// Resolves `profile` against the pods there are. `lease` overrides every fault's lease.
pub fn resolve(
    profile: &Profile,
    pods: &[Candidate],
    seed: u64,
    run_id: String,
    lease: Option<Duration>,
) -> Result<Plan, InputError> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let before = profile.phases.before.0;
    let mut faults = Vec::new();
    for (i, spanned) in profile.method.iter().enumerate() {
        let step = &spanned.value;
        let line = spanned.referenced.line();
        let err = |field: &str, msg: String| {
            InputError::new(&profile.file, msg)
                .at_line(line)
                .field(format!("method[{i}].{field}"))
        };
        let id = format!("f{}", i + 1);
        let targets = match &step.target {
            Some(sel) => pick(sel, pods, &mut rng).map_err(|m| err("target", m))?,
            None => vec![],
        };
        let injections =
            injections(step, &id, &targets, pods, &mut rng).map_err(|(field, m)| err(field, m))?;
        faults.push(PlannedFault {
            id,
            index: i,
            name: step.name.clone(),
            kind: step.fault.kind(),
            start: before + step.at.0,
            duration: step.duration.0,
            lease: lease.unwrap_or(step.duration.0 + LEASE_MARGIN),
            injections,
            pods: targets.into_iter().filter(|p| p != INGRESS).collect(),
        });
    }
    Ok(Plan {
        run_id,
        seed,
        faults,
        before,
        after: profile.phases.after.0,
    })
}

/// The pods a selector picks, sorted by name.
pub fn pick(sel: &Selector, pods: &[Candidate], rng: &mut SmallRng) -> Result<Vec<String>, String> {
    let mut candidates: Vec<String> = match &sel.service {
        Some(svc) => pods
            .iter()
            .filter(|p| &p.service == svc)
            .filter(|p| sel.version.as_ref().is_none_or(|v| &p.version == v))
            .map(|p| p.name.clone())
            .collect(),
        None => sel
            .pods
            .iter()
            .filter(|name| {
                *name == INGRESS
                    || pods.iter().any(|p| {
                        &p.name == *name && sel.version.as_ref().is_none_or(|v| &p.version == v)
                    })
            })
            .cloned()
            .collect(),
    };
    candidates.sort();
    candidates.dedup();
    if candidates.is_empty() {
        return Err("the selector matches no pod".into());
    }
    let n = match sel.mode {
        Mode::All => candidates.len(),
        Mode::One => 1,
        Mode::Fixed => sel.value.unwrap_or(1.0) as usize,
        Mode::Percent => {
            ((sel.value.unwrap_or(100.0) / 100.0 * candidates.len() as f64).ceil() as usize).max(1)
        }
    };
    if n > candidates.len() {
        return Err(format!(
            "mode fixed asks for {n} pods; the selector matches {} ({})",
            candidates.len(),
            candidates.join(", ")
        ));
    }
    candidates.shuffle(rng);
    let mut chosen: Vec<String> = candidates.into_iter().take(n).collect();
    chosen.sort();
    Ok(chosen)
}

type FieldError = (&'static str, String);

fn injections(
    step: &Step,
    id: &str,
    targets: &[String],
    pods: &[Candidate],
    rng: &mut SmallRng,
) -> Result<Vec<(String, Injection)>, FieldError> {
    let ms = |d: Duration| d.as_millis() as u64;
    let per_pod = |make: &dyn Fn(&str) -> Injection| -> Vec<(String, Injection)> {
        targets
            .iter()
            .enumerate()
            .map(|(n, pod)| (format!("{id}.{}", n + 1), make(pod)))
            .collect()
    };
    Ok(match &step.fault {
        FaultSpec::Workload(w) => {
            let fault = Fault {
                status: w.status,
                delay_ms: w.delay.map(|d| ms(d.0)),
                hang: w.hang,
                close: w.close,
                slow_body_ms: w.slow_body.map(|d| ms(d.0)),
                ..Fault::default()
            };
            per_pod(&|pod| Injection::Workload {
                pod: pod.into(),
                fault: fault.clone(),
            })
        }
        FaultSpec::PodKill(k) => {
            let backoff = k.backoff.map_or(step.duration.0, |b| b.0);
            per_pod(&|pod| Injection::PodKill {
                pod: pod.into(),
                backoff_ms: ms(backoff),
            })
        }
        FaultSpec::PodPause(_) => per_pod(&|pod| Injection::PodPause { pod: pod.into() }),
        FaultSpec::Certificate(c) => {
            let cert = if c.cert == "expired" {
                CertFault::Expired
            } else {
                CertFault::OtherIdentity
            };
            per_pod(&|pod| Injection::Certificate {
                pod: pod.into(),
                cert: cert.clone(),
            })
        }
        FaultSpec::RejectedPush(_) => per_pod(&|pod| Injection::RejectedPush { proxy: pod.into() }),
        FaultSpec::DelayedPush(d) => per_pod(&|pod| Injection::DelayedPush {
            proxy: pod.into(),
            delay_ms: d.delay.0.as_millis() as u64,
        }),
        FaultSpec::RouteFault(r) => vec![(
            format!("{id}.1"),
            Injection::RouteFault {
                virtual_service: r.virtual_service.clone(),
                route: r.route.clone(),
                delay_ms: r.delay.as_ref().map(|d| ms(d.fixed.0)),
                delay_percent: r.delay.as_ref().map_or(0.0, |d| d.percent.0),
                abort_status: r.abort.as_ref().map(|a| a.status),
                abort_percent: r.abort.as_ref().map_or(0.0, |a| a.percent.0),
            },
        )],
        FaultSpec::Network(n) => {
            let from = pick(&n.from, pods, rng).map_err(|m| ("fault.network.from", m))?;
            let fault = if let Some(l) = n.latency {
                NetworkFault::Latency {
                    ms: ms(l.0),
                    jitter_ms: n.jitter.map_or(0, |j| ms(j.0)),
                }
            } else if let Some(b) = n.bandwidth {
                NetworkFault::Bandwidth {
                    bytes_per_second: b,
                }
            } else if n.reset {
                NetworkFault::Reset
            } else if n.blackhole {
                NetworkFault::Blackhole
            } else {
                NetworkFault::SlowClose {
                    ms: n.slow_close.map_or(0, |d| ms(d.0)),
                }
            };
            if targets.iter().any(|t| from.contains(t)) {
                return Err((
                    "fault.network.from",
                    "a pod cannot be cut off from itself".into(),
                ));
            }
            vec![(
                format!("{id}.1"),
                Injection::Network {
                    from,
                    to: targets.to_vec(),
                    fault,
                },
            )]
        }
    })
}

/// The plan as `--dry-run` prints it.
pub fn describe(plan: &Plan, profile: &Profile) -> String {
    let human = meshtest_load::duration::human;
    let mut s = String::new();
    let _ = writeln!(s, "profile {} ({})", profile.name, profile.file.display());
    if !profile.description.is_empty() {
        let _ = writeln!(s, "  {}", profile.description.trim());
    }
    if !profile.hypothesis.is_empty() {
        let _ = writeln!(s, "hypothesis: {}", profile.hypothesis.trim());
    }
    let _ = writeln!(
        s,
        "run id {}; seed {} (--seed {} picks the same pods)",
        plan.run_id, plan.seed, plan.seed
    );
    let load = &profile.load.value;
    let total_weight: f64 = load.routes.iter().map(|r| r.value.weight).sum();
    let _ = writeln!(
        s,
        "load: {} requests/s through the ingress for {} (timeout {} each):",
        load.rate,
        human(plan.span()),
        human(load.timeout.0)
    );
    for r in &load.routes {
        let r = &r.value;
        let share = r.weight / total_weight * 100.0;
        let token = r.token.as_ref().map_or(String::new(), |t| {
            format!(", JWT for tenant {} ({})", t.tenant, t.tier)
        });
        let _ = writeln!(s, "  {} {} {:.0}%{token}", r.method, r.path, share);
    }
    let ss = &profile.steady_state;
    let _ = writeln!(
        s,
        "steady state: error rate below {}%, p99 below {}; back within {} of the last revert",
        ss.error_rate_below.0,
        human(ss.p99_below.0),
        human(ss.recover_within.0)
    );
    for p in &ss.probes {
        let p = &p.value;
        match (&p.call, &p.stat) {
            (Some(c), _) => {
                let _ = writeln!(
                    s,
                    "  probe {}: {} {} -> {} (expects {})",
                    p.name,
                    c.from,
                    c.to.as_deref().unwrap_or(""),
                    c.path,
                    c.status
                );
            }
            (_, Some(st)) => {
                let _ = writeln!(
                    s,
                    "  probe {}: {} {} rises by at most {}",
                    p.name, st.proxy, st.name, st.at_most
                );
            }
            _ => {}
        }
    }
    let _ = writeln!(s, "timeline:");
    let _ = writeln!(
        s,
        "  {:>6} - {:<6} before: steady state",
        "0s",
        human(plan.before)
    );
    for f in &plan.faults {
        let step = &profile.method[f.index].value;
        let _ = writeln!(
            s,
            "  {:>6} - {:<6} {} {} [{}] on {}",
            human(f.start),
            human(f.end()),
            f.id,
            f.name,
            f.kind,
            f.target()
        );
        for (id, inj) in &f.injections {
            let _ = writeln!(s, "                   {id}: {}", inj.describe());
            let _ = writeln!(s, "                   inverse: {}", inj.inverse());
        }
        let _ = writeln!(
            s,
            "                   lease {} (kept by {}); verified within {} by {}",
            human(f.lease),
            keeper(f.kind),
            human(step.verify_within()),
            verified_by(f.kind)
        );
        for e in &step.expect {
            let _ = writeln!(s, "                   expect: {}", e.value.describe());
        }
        if !step.affects.is_empty() {
            let _ = writeln!(
                s,
                "                   may break the steady state of: {}",
                step.affects.join(", ")
            );
        }
    }
    let end = plan.span();
    let _ = writeln!(
        s,
        "  {:>6} - {:<6} after: steady state (after the steady state is back)",
        human(end - plan.after),
        human(end)
    );
    let a = &profile.abort;
    let mut rules = Vec::new();
    if let Some(r) = a.error_rate_above {
        rules.push(format!(
            "error rate above {}% for {}",
            r.0,
            human(a.r#for.map_or(Duration::from_secs(3), |d| d.0))
        ));
    }
    if let Some(p) = &a.probe_failing {
        rules.push(format!(
            "probe {p} failing for {}",
            human(a.r#for.map_or(Duration::from_secs(3), |d| d.0))
        ));
    }
    if let Some(n) = a.max_pods {
        rules.push(format!(
            "more than {n} pods faulted at once (this plan: {})",
            plan.max_pods_at_once()
        ));
    }
    if let Some(d) = a.deadline {
        rules.push(format!("running longer than {}", human(d.0)));
    }
    let _ = writeln!(
        s,
        "abort when: {}",
        if rules.is_empty() {
            "(no rules; Ctrl-C reverts everything)".to_string()
        } else {
            rules.join("; ")
        }
    );
    s
}

/// Who ends a fault when its lease runs out.
pub fn keeper(kind: &str) -> &'static str {
    match kind {
        "workload" => "the pod's agent",
        "network" => "the fault proxy and the mesh's owner",
        _ => "the mesh's owner process",
    }
}

/// What shows the fault reached the data plane.
pub fn verified_by(kind: &str) -> &'static str {
    match kind {
        "workload" => "the agent's count of requests it faulted",
        "pod-kill" => "the sidecar process being gone",
        "pod-pause" => "the sidecar process being stopped (state T)",
        "route-fault" => "Envoy's fault.delays_injected / fault.aborts_injected",
        "network" => "connections through the fault proxy",
        "certificate" => "peers' TLS failures (ssl.fail_verify_*, ssl.connection_error)",
        "rejected-push" => "Envoy's listener_manager.lds.update_rejected",
        "delayed-push" => "a config push held back (needs a config change while it is in force)",
        _ => "the data plane",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Candidate> {
        (0..3)
            .map(|i| Candidate {
                name: format!("airtable-gateway-{i}"),
                service: "airtable-gateway".into(),
                version: "v1".into(),
            })
            .collect()
    }

    #[test]
    fn the_same_seed_picks_the_same_pods() {
        let sel = Selector {
            service: Some("airtable-gateway".into()),
            ..Selector::default()
        };
        let picks: Vec<Vec<String>> = (0..5)
            .map(|_| pick(&sel, &pods(), &mut SmallRng::seed_from_u64(42)).unwrap())
            .collect();
        assert!(picks.windows(2).all(|w| w[0] == w[1]), "{picks:?}");
        let seen: std::collections::BTreeSet<Vec<String>> = (0..40)
            .map(|s| pick(&sel, &pods(), &mut SmallRng::seed_from_u64(s)).unwrap())
            .collect();
        assert!(
            seen.len() > 1,
            "different seeds pick different pods: {seen:?}"
        );
    }

    #[test]
    fn modes_pick_counts() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut sel = Selector {
            service: Some("airtable-gateway".into()),
            mode: Mode::All,
            ..Selector::default()
        };
        assert_eq!(pick(&sel, &pods(), &mut rng).unwrap().len(), 3);
        sel.mode = Mode::Percent;
        sel.value = Some(10.0);
        assert_eq!(
            pick(&sel, &pods(), &mut rng).unwrap().len(),
            1,
            "rounded up to one"
        );
        sel.value = Some(50.0);
        assert_eq!(pick(&sel, &pods(), &mut rng).unwrap().len(), 2);
        sel.mode = Mode::Fixed;
        sel.value = Some(4.0);
        assert!(
            pick(&sel, &pods(), &mut rng)
                .unwrap_err()
                .contains("matches 3")
        );
        sel.version = Some("v9".into());
        assert!(pick(&sel, &pods(), &mut rng).is_err());
    }
}
