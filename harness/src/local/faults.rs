//! Chaos faults on the embedded mesh: pods killed (and replaced), frozen, routes faulted by live
//! config, fault proxies spliced between pods, certificates swapped, bad config pushed. Each
//! fault has an id, an owner and a lease this process enforces (`tick`), so a fault ends even if
//! the chaos run that set it is gone; a revert restores what was declared, not a guess.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use super::LocalMesh;
use super::fault_proxy::FaultProxy;
use crate::manifest::Manifests;
use crate::manifest::istio::{Fault as RouteFaultSpec, FaultAbort, FaultDelay, Percent};
use crate::target::injection::{ActiveInjection, CertFault, Injection};
use crate::translate::CertFiles;

/// The faults a mesh holds.
#[derive(Default)]
pub(crate) struct Board {
    active: Vec<Active>,
}

struct Active {
    id: String,
    owner: String,
    injection: Injection,
    expires: Instant,
    /// Network faults: a proxy per target pod.
    proxies: Vec<FaultProxy>,
    /// Pod kills: when the replacement comes (None once it has).
    restart_at: Option<Instant>,
    /// Rejected pushes: the proxy's rejected-update count before the push.
    rejected_before: u64,
    /// Delayed pushes: how many pushes were held back while it was in force.
    held: Arc<AtomicU64>,
}

/// What the active faults change in the config the mesh pushes.
#[derive(Default)]
pub(crate) struct Overlay {
    /// (caller pod or "istio-ingressgateway", target pod) -> the fault proxy's address.
    pub endpoints: HashMap<(String, String), IpAddr>,
    /// Pod -> the certificate it presents instead of its own.
    pub certs: HashMap<String, CertFiles>,
    /// Proxies whose next push is one Envoy must reject.
    pub rejected: HashSet<String>,
    /// Proxies whose pushes wait this long, with the fault's count of pushes held back.
    pub delayed: HashMap<String, (Duration, Arc<AtomicU64>)>,
}

impl LocalMesh {
    /// Injects `injection` as fault `id` of `owner`, ending by itself after `lease`.
    pub async fn inject(
        &self,
        id: &str,
        owner: &str,
        injection: &Injection,
        lease: Duration,
    ) -> Result<()> {
        if self
            .board
            .lock()
            .expect("board lock")
            .active
            .iter()
            .any(|a| a.id == id)
        {
            return Ok(()); // already applied (a journal replay): idempotent
        }
        let expires = Instant::now() + lease;
        let mut active = Active {
            id: id.to_string(),
            owner: owner.to_string(),
            injection: injection.clone(),
            expires,
            proxies: vec![],
            restart_at: None,
            rejected_before: 0,
            held: Arc::new(AtomicU64::new(0)),
        };
        match injection {
            Injection::Workload { .. } => bail!("workload faults go to the agent, not the mesh"),
            Injection::PodKill { pod, backoff_ms } => {
                let lp = self.pod(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
                lp.proxy.kill_expected();
                *lp.agent.lock().expect("agent lock") = None;
                active.restart_at = Some(Instant::now() + Duration::from_millis(*backoff_ms));
            }
            Injection::PodPause { pod } => {
                let lp = self.pod(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
                lp.proxy.signal(libc::SIGSTOP);
            }
            Injection::RouteFault {
                virtual_service,
                route,
                ..
            } => {
                let declared = self.declared.lock().expect("declared lock").clone();
                let found = declared.virtual_services.iter().any(|vs| {
                    vs.name() == virtual_service && route_index(&vs.spec.http, route).is_some()
                });
                if !found {
                    bail!("no VirtualService {virtual_service} with a route {route}");
                }
            }
            Injection::Network { from, to, fault } => {
                for p in from.iter().chain(to) {
                    if p != "istio-ingressgateway" && self.pod(p).is_none() {
                        bail!("no pod {p}");
                    }
                }
                for target in to {
                    let taken: Vec<IpAddr> = active.proxies.iter().map(|p| p.ip).collect();
                    let ip = self.free_fault_proxy_ip(&taken)?;
                    let lp = self.pod(target).expect("checked");
                    let upstreams: Vec<(u16, SocketAddr)> = lp
                        .pod
                        .ports
                        .iter()
                        .map(|&p| (p, SocketAddr::new(lp.ip, p)))
                        .collect();
                    let fault = fault.clone();
                    let proxy = self
                        .thread
                        .run(async move { FaultProxy::start(ip, upstreams, fault, expires).await })
                        .await??;
                    active.proxies.push(proxy);
                }
            }
            Injection::Certificate { pod, .. } => {
                self.pod(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
            }
            Injection::RejectedPush { proxy } => {
                let p = self
                    .proxy(proxy)
                    .ok_or_else(|| anyhow!("no proxy {proxy}"))?;
                active.rejected_before = rejected_updates(&p.admin).await;
            }
            Injection::DelayedPush { proxy, .. } => {
                self.proxy(proxy)
                    .ok_or_else(|| anyhow!("no proxy {proxy}"))?;
            }
        }
        self.board.lock().expect("board lock").active.push(active);
        if needs_push(injection) {
            self.push().await?;
        }
        Ok(())
    }

    /// Reverts fault `id`; false when the mesh holds no such fault (already reverted, or
    /// expired): reverting twice is harmless.
    pub async fn revert(&self, id: &str) -> Result<bool> {
        let active = {
            let mut board = self.board.lock().expect("board lock");
            match board.active.iter().position(|a| a.id == id) {
                Some(i) => board.active.remove(i),
                None => return Ok(false),
            }
        };
        self.undo(active).await?;
        Ok(true)
    }

    async fn undo(&self, active: Active) -> Result<()> {
        match &active.injection {
            Injection::PodKill { pod, .. } if active.restart_at.is_some() => {
                self.restart_pod(pod).await?
            }
            Injection::PodPause { pod } => {
                if let Some(lp) = self.pod(pod) {
                    lp.proxy.signal(libc::SIGCONT);
                }
            }
            i if needs_push(i) => {
                drop(active); // the fault proxies stop with it
                self.push().await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The faults the mesh holds, with how often traffic has met them.
    pub async fn injections(&self) -> Vec<ActiveInjection> {
        let snapshot: Vec<(String, String, Injection, Instant, u64, u64, u64)> = {
            let board = self.board.lock().expect("board lock");
            board
                .active
                .iter()
                .map(|a| {
                    let through: u64 = a
                        .proxies
                        .iter()
                        .map(|p| p.connections.load(std::sync::atomic::Ordering::Relaxed))
                        .sum();
                    (
                        a.id.clone(),
                        a.owner.clone(),
                        a.injection.clone(),
                        a.expires,
                        through,
                        a.rejected_before,
                        a.held.load(std::sync::atomic::Ordering::Relaxed),
                    )
                })
                .collect()
        };
        let mut out = Vec::new();
        for (id, owner, injection, expires, through, rejected_before, held) in snapshot {
            let observed = match &injection {
                Injection::Network { .. } => through,
                Injection::DelayedPush { .. } => held,
                // A killed or frozen pod is shown by its process.
                Injection::PodKill { pod, .. } => self
                    .pod(pod)
                    .map_or(0, |p| u64::from(p.proxy.exited().is_some())),
                Injection::PodPause { pod } => self
                    .pod(pod)
                    .map_or(0, |p| u64::from(is_stopped(p.proxy.pid()))),
                Injection::RejectedPush { proxy } => match self.proxy(proxy) {
                    Some(p) => rejected_updates(&p.admin)
                        .await
                        .saturating_sub(rejected_before),
                    None => 0,
                },
                // Route and certificate faults show in the proxies' stats, read by the caller.
                _ => 0,
            };
            out.push(ActiveInjection {
                id,
                owner,
                injection,
                expires_in_ms: expires
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                observed,
            });
        }
        out
    }

    /// Ends expired faults and brings killed pods back after their backoff; `up` (or whoever
    /// owns the mesh) calls it a few times a second.
    pub async fn tick(&self) -> Result<()> {
        let now = Instant::now();
        let (expired, restarts): (Vec<String>, Vec<String>) = {
            let board = self.board.lock().expect("board lock");
            (
                board
                    .active
                    .iter()
                    .filter(|a| a.expires <= now)
                    .map(|a| a.id.clone())
                    .collect(),
                board
                    .active
                    .iter()
                    .filter(|a| a.restart_at.is_some_and(|t| t <= now))
                    .filter_map(|a| match &a.injection {
                        Injection::PodKill { pod, .. } => Some(pod.clone()),
                        _ => None,
                    })
                    .collect(),
            )
        };
        for pod in restarts {
            self.restart_pod(&pod).await?;
            let mut board = self.board.lock().expect("board lock");
            for a in board.active.iter_mut() {
                if matches!(&a.injection, Injection::PodKill { pod: p, .. } if *p == pod) {
                    a.restart_at = None;
                }
            }
        }
        for id in expired {
            self.revert(&id).await?;
        }
        Ok(())
    }

    /// A replacement for a killed pod: the same identity, address and config.
    async fn restart_pod(&self, pod: &str) -> Result<()> {
        let lp = self.pod(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
        if lp.agent.lock().expect("agent lock").is_none() {
            let config = lp.agent_config.clone();
            let agent = self
                .thread
                .run(crate::agent::Agent::start(config))
                .await??;
            *lp.agent.lock().expect("agent lock") = Some(agent);
        }
        if lp.proxy.exited().is_some() {
            lp.proxy.respawn(&self.thread).await?;
            let live = super::admin::wait_until(Duration::from_secs(20), || async {
                super::admin::is_live(&lp.proxy.admin).await
            })
            .await;
            if !live {
                bail!(
                    "the replacement of {pod} did not come up; its log:\n{}",
                    lp.proxy.log_tail()
                );
            }
        }
        Ok(())
    }

    /// An address for a fault proxy: none of the active faults' proxies, nor `taken` (those
    /// of the fault being built).
    fn free_fault_proxy_ip(&self, taken: &[IpAddr]) -> Result<IpAddr> {
        let board = self.board.lock().expect("board lock");
        let used: HashSet<IpAddr> = board
            .active
            .iter()
            .flat_map(|a| a.proxies.iter().map(|p| p.ip))
            .collect();
        (1..=250u8)
            .map(|n| IpAddr::V4(self.block.fault_proxy_ip(n)))
            .find(|ip| !used.contains(ip) && !taken.contains(ip))
            .ok_or_else(|| anyhow!("no free address for another fault proxy"))
    }

    /// The declared manifests with the active route faults written into their routes, and the
    /// endpoint, certificate and push changes of the other faults.
    pub(crate) fn overlay(&self, declared: &Manifests) -> (Manifests, Overlay) {
        let mut manifests = declared.clone();
        let mut overlay = Overlay::default();
        let board = self.board.lock().expect("board lock");
        for a in &board.active {
            match &a.injection {
                Injection::RouteFault {
                    virtual_service,
                    route,
                    delay_ms,
                    delay_percent,
                    abort_status,
                    abort_percent,
                } => {
                    for vs in manifests
                        .virtual_services
                        .iter_mut()
                        .filter(|vs| vs.name() == virtual_service)
                    {
                        if let Some(i) = route_index(&vs.spec.http, route) {
                            vs.spec.http[i].fault = Some(RouteFaultSpec {
                                delay: delay_ms.map(|ms| FaultDelay {
                                    percentage: Some(Percent {
                                        value: *delay_percent,
                                    }),
                                    fixed_delay: format!("{ms}ms"),
                                }),
                                abort: abort_status.map(|s| FaultAbort {
                                    percentage: Some(Percent {
                                        value: *abort_percent,
                                    }),
                                    http_status: s,
                                }),
                            });
                        }
                    }
                }
                Injection::Network { from, to, .. } => {
                    for (target, proxy) in to.iter().zip(&a.proxies) {
                        for caller in from {
                            overlay
                                .endpoints
                                .insert((caller.clone(), target.clone()), proxy.ip);
                        }
                    }
                }
                Injection::Certificate { pod, cert } => {
                    let stem = match cert {
                        CertFault::Expired => format!("{pod}.expired"),
                        CertFault::OtherIdentity => format!("{pod}.impostor"),
                    };
                    let dir = self.run.path.join("certs");
                    overlay.certs.insert(
                        pod.clone(),
                        CertFiles {
                            ca: dir.join("ca.crt"),
                            chain: dir.join(format!("{stem}.crt")),
                            key: dir.join(format!("{stem}.key")),
                        },
                    );
                }
                Injection::RejectedPush { proxy } => {
                    overlay.rejected.insert(proxy.clone());
                }
                Injection::DelayedPush { proxy, delay_ms } => {
                    overlay.delayed.insert(
                        proxy.clone(),
                        (Duration::from_millis(*delay_ms), a.held.clone()),
                    );
                }
                _ => {}
            }
        }
        (manifests, overlay)
    }
}

/// Faults that change the pushed config (the others act on processes).
fn needs_push(i: &Injection) -> bool {
    matches!(
        i,
        Injection::RouteFault { .. }
            | Injection::Network { .. }
            | Injection::Certificate { .. }
            | Injection::RejectedPush { .. }
    )
}

/// A route by name, or `#N` by index.
fn route_index(http: &[crate::manifest::istio::HttpRoute], route: &str) -> Option<usize> {
    match route.strip_prefix('#') {
        Some(n) => n.parse().ok().filter(|i: &usize| *i < http.len()),
        None => http.iter().position(|h| h.name.as_deref() == Some(route)),
    }
}

async fn rejected_updates(admin: &std::path::Path) -> u64 {
    super::admin::get(admin, "/stats?filter=listener_manager.lds.update_rejected")
        .await
        .ok()
        .and_then(|b| crate::envoy::stats::parse_stat(&b, "listener_manager.lds.update_rejected"))
        .unwrap_or(0)
}

/// Is the process stopped (SIGSTOP)? State `T` in /proc/PID/stat.
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}
