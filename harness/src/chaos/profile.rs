//! Chaos profiles: the YAML an SRE writes (steady state, load, a timeline of faults with what
//! each must show, abort rules), parsed and checked against the mesh before anything starts, so
//! a typo is exit 2 with file:line:field, never a half-run experiment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::error::InputError;
use crate::manifest::{Origin, parse_yaml};
use crate::model::MeshModel;
use crate::token::Tier;

/// A duration written as in Istio and `meshtest load` ("5s", "200ms", "2m").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        meshtest_load::duration::parse(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A percentage written with its sign ("5%", "0.5%"): a bare number could be a fraction or a
/// percent, and guessing wrong would move a guardrail by 100x.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Pct(pub f64);

impl Pct {
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl<'de> Deserialize<'de> for Pct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pct, D::Error> {
        let text = String::deserialize(d)?;
        let number = text.trim().strip_suffix('%').ok_or_else(|| {
            serde::de::Error::custom(format!("'{text}' is not a percentage (write e.g. 5%)"))
        })?;
        match number.trim().parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(Pct(v)),
            _ => Err(serde::de::Error::custom(format!(
                "'{text}' is not a percentage between 0% and 100%"
            ))),
        }
    }
}

/// A whole profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// What the experiment expects to learn, in a sentence (shown in plans and the retro).
    #[serde(default)]
    pub hypothesis: String,
    /// Seed for the random choices of `mode: one|fixed|percent` (`--seed` overrides it).
    #[serde(default)]
    pub seed: Option<u64>,
    pub load: Spanned<LoadSpec>,
    #[serde(default)]
    pub steady_state: SteadyState,
    #[serde(default)]
    pub phases: Phases,
    pub method: Vec<Spanned<Step>>,
    #[serde(default)]
    pub abort: AbortRules,
    /// Alerts of the mesh's PrometheusRules that must fire (and how soon), or must not.
    #[serde(default)]
    pub alerts: super::alerts::AlertSpec,
    /// Observers' questions to answer in the retro (game days).
    #[serde(default)]
    pub questions: Vec<String>,
    #[serde(skip)]
    pub file: PathBuf,
}

/// What keeps traffic flowing: an open loop through the ingress.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Requests per second, all routes together.
    pub rate: f64,
    /// Each request's timeout (longer than the longest route timeout a fault may reach).
    #[serde(default = "default_request_timeout")]
    pub timeout: Dur,
    pub routes: Vec<Spanned<LoadRoute>>,
}

fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// One stream of the load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRoute {
    pub path: String,
    /// How reports and expectations name it (default: the path).
    #[serde(default)]
    pub name: Option<String>,
    /// Its share of `rate` (default 1).
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JWT minted for this tenant (made unique per run, so buckets are the run's own).
    #[serde(default)]
    pub token: Option<TokenFor>,
}

impl LoadRoute {
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.path)
    }
}

fn one() -> f64 {
    1.0
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFor {
    pub tenant: String,
    #[serde(default = "enterprise")]
    pub tier: String,
}

fn enterprise() -> String {
    "enterprise".into()
}

/// What "working" means, checked before the first fault, during every fault (on the routes it
/// is not expected to hurt) and after the last revert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteadyState {
    #[serde(default = "default_error_rate")]
    pub error_rate_below: Pct,
    #[serde(default = "default_p99")]
    pub p99_below: Dur,
    #[serde(default)]
    pub probes: Vec<Spanned<Probe>>,
    /// After the last revert, the steady state must be back within this (else REVERT_FAILED).
    #[serde(default = "default_recover")]
    pub recover_within: Dur,
}

impl Default for SteadyState {
    fn default() -> Self {
        SteadyState {
            error_rate_below: default_error_rate(),
            p99_below: default_p99(),
            probes: vec![],
            recover_within: default_recover(),
        }
    }
}

/// The seed's alerts: error rate above 5% and p99 above 1 s page someone.
fn default_error_rate() -> Pct {
    Pct(5.0)
}

fn default_p99() -> Dur {
    Dur(Duration::from_secs(1))
}

fn default_recover() -> Dur {
    Dur(Duration::from_secs(15))
}

/// A check made once a second besides the load: a call, or an Envoy stat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    #[serde(default)]
    pub call: Option<CallProbe>,
    #[serde(default)]
    pub stat: Option<StatProbe>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallProbe {
    /// "ingress" (default) or a workload (service or pod) calling through its sidecar.
    #[serde(default = "ingress")]
    pub from: String,
    /// SERVICE[:PORT] for workload calls; ignored through the ingress.
    #[serde(default)]
    pub to: Option<String>,
    pub path: String,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub token: Option<TokenFor>,
}

fn ingress() -> String {
    "ingress".into()
}

fn ok() -> u16 {
    200
}

/// Holds while the stat's increase since the experiment began stays at or below `at_most`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatProbe {
    /// A pod name or "istio-ingressgateway".
    pub proxy: String,
    pub name: String,
    #[serde(default)]
    pub at_most: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    /// Steady state measured before the first fault.
    #[serde(default = "five_seconds")]
    pub before: Dur,
    /// Measured after the steady state is back.
    #[serde(default = "five_seconds")]
    pub after: Dur,
}

impl Default for Phases {
    fn default() -> Self {
        Phases {
            before: five_seconds(),
            after: five_seconds(),
        }
    }
}

fn five_seconds() -> Dur {
    Dur(Duration::from_secs(5))
}

/// One fault of the method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// When it starts, from the end of the `before` phase.
    #[serde(default = "zero")]
    pub at: Dur,
    pub duration: Dur,
    /// Which pods (workload, pod-kill, pod-pause, certificate, network `to`, rejected-push).
    #[serde(default)]
    pub target: Option<Selector>,
    pub fault: FaultSpec,
    #[serde(default)]
    pub expect: Vec<Spanned<Expect>>,
    /// Load routes (names or paths) the fault may push out of the steady state; every other
    /// route must keep it during the fault.
    #[serde(default)]
    pub affects: Vec<String>,
    /// How long the fault may take to show in the data plane (else "fault not effective");
    /// default 10 s, or the fault's duration if shorter.
    #[serde(default)]
    pub verify_within: Option<Dur>,
    /// An observer's note, added to the timeline when the fault starts (game days).
    #[serde(default)]
    pub note: Option<String>,
}

fn zero() -> Dur {
    Dur(Duration::ZERO)
}

impl Step {
    pub fn verify_within(&self) -> Duration {
        self.verify_within
            .map_or(self.duration.0.min(Duration::from_secs(10)), |d| d.0)
    }
}

/// Which pods a fault hits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Pods of this service (a Deployment's `app` label through its Service).
    #[serde(default)]
    pub service: Option<String>,
    /// ...or these pods by name; or `istio-ingressgateway` (network `from`, rejected-push).
    #[serde(default)]
    pub pods: Vec<String>,
    /// Only pods of this version label.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// `fixed`: how many pods; `percent`: what share of them (rounded up, at least one).
    #[serde(default)]
    pub value: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    One,
    All,
    Fixed,
    Percent,
}

/// The fault, by kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultSpec {
    /// The app misbehaves: status, delay, hang, close, slow body.
    Workload(WorkloadFault),
    /// SIGKILL of sidecar and app; a replacement comes after `backoff` (default: when the
    /// fault ends).
    PodKill(PodKillFault),
    /// SIGSTOP of the sidecar until the fault ends.
    PodPause(Empty),
    /// A VirtualService route injects delay and/or abort (live config; Istio's own API).
    RouteFault(RouteFaultSpec),
    /// TCP between pods through a fault proxy.
    Network(NetworkSpec),
    /// The target pods present a broken certificate.
    Certificate(CertificateSpec),
    /// A config push the target's Envoy must reject.
    RejectedPush(Empty),
    /// Config pushes to the target's Envoy arrive late (a slow control plane).
    DelayedPush(DelayedPushSpec),
}

/// `delayed-push: {delay: 5s}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayedPushSpec {
    pub delay: Dur,
}

impl FaultSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Workload(_) => "workload",
            FaultSpec::PodKill(_) => "pod-kill",
            FaultSpec::PodPause(_) => "pod-pause",
            FaultSpec::RouteFault(_) => "route-fault",
            FaultSpec::Network(_) => "network",
            FaultSpec::Certificate(_) => "certificate",
            FaultSpec::RejectedPush(_) => "rejected-push",
            FaultSpec::DelayedPush(_) => "delayed-push",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFault {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub delay: Option<Dur>,
    #[serde(default)]
    pub hang: bool,
    #[serde(default)]
    pub close: bool,
    #[serde(default)]
    pub slow_body: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodKillFault {
    #[serde(default)]
    pub backoff: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFaultSpec {
    pub virtual_service: String,
    /// The route's name, or `#N` for the N-th (from 0) of an unnamed list.
    pub route: String,
    #[serde(default)]
    pub delay: Option<RouteDelay>,
    #[serde(default)]
    pub abort: Option<RouteAbort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDelay {
    pub fixed: Dur,
    #[serde(default = "all_of_them")]
    pub percent: Pct,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAbort {
    pub status: u16,
    #[serde(default = "all_of_them")]
    pub percent: Pct,
}

fn all_of_them() -> Pct {
    Pct(100.0)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The callers whose traffic to the target pods is faulted.
    pub from: Selector,
    #[serde(default)]
    pub latency: Option<Dur>,
    #[serde(default)]
    pub jitter: Option<Dur>,
    /// Bytes per second each way.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    #[serde(default)]
    pub reset: bool,
    /// Nothing comes back: a partition.
    #[serde(default)]
    pub blackhole: bool,
    #[serde(default)]
    pub slow_close: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// `expired` or `other-identity`.
    pub cert: String,
}

/// What a fault must show while it is in force.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// No load request of these routes (default: all) fails.
    NoClientErrors(RouteScope),
    /// The failed share of these routes' requests stays at or below `value`.
    ErrorRateAtMost {
        value: Pct,
        #[serde(default)]
        routes: Vec<String>,
    },
    /// The failed share stays at or below the declared weight of `subset` on the route the
    /// load takes (one-sided binomial test): a bad canary hurts only its own share.
    ErrorRateAtMostWeight {
        subset: String,
        #[serde(default)]
        routes: Vec<String>,
    },
    /// No proxy saw a 5xx from `subset` of `service` (and some traffic reached it).
    SubsetUnaffected { service: String, subset: String },
    /// The callers' circuit breakers for `service` shed load: Envoy counted pending-queue
    /// overflows (the 503s it sends with x-envoy-overloaded) while the fault was in force.
    ShedsLoad { service: String },
    /// The faulted pods are ejected by the proxies of `by` (a service) within `within`.
    EjectedWithin { within: Dur, by: String },
    /// These routes' p99 stays below `value`.
    P99Below {
        value: Dur,
        #[serde(default)]
        routes: Vec<String>,
    },
    /// Every request of these routes ends (answered or failed) within `within`, or within the
    /// route's declared timeout plus a margin when `within` is `declared`.
    RequestsEndWithin {
        within: String,
        #[serde(default)]
        routes: Vec<String>,
    },
    /// These routes' requests fail, and fail within `within` (no hanging on a dead backend).
    FailsFast { within: Dur, routes: Vec<String> },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteScope {
    #[serde(default)]
    pub routes: Vec<String>,
}

impl Expect {
    /// One line for plans and reports.
    pub fn describe(&self) -> String {
        let scope = |r: &[String]| {
            if r.is_empty() {
                "all routes".to_string()
            } else {
                r.join(", ")
            }
        };
        match self {
            Expect::NoClientErrors(s) => format!("no client request fails ({})", scope(&s.routes)),
            Expect::ErrorRateAtMost { value, routes } => {
                format!("error rate at most {}% ({})", value.0, scope(routes))
            }
            Expect::ErrorRateAtMostWeight { subset, routes } => {
                format!(
                    "error rate at most {subset}'s declared weight ({})",
                    scope(routes)
                )
            }
            Expect::SubsetUnaffected { service, subset } => {
                format!("{service} subset {subset} serves no 5xx")
            }
            Expect::ShedsLoad { service } => {
                format!(
                    "callers' circuit breakers for {service} shed load (503 + x-envoy-overloaded)"
                )
            }
            Expect::EjectedWithin { within, by } => format!(
                "{by}'s proxies eject the faulted pods within {}",
                meshtest_load::duration::human(within.0)
            ),
            Expect::P99Below { value, routes } => format!(
                "p99 below {} ({})",
                meshtest_load::duration::human(value.0),
                scope(routes)
            ),
            Expect::RequestsEndWithin { within, routes } => {
                format!("every request ends within {within} ({})", scope(routes))
            }
            Expect::FailsFast { within, routes } => format!(
                "{} fail within {}",
                scope(routes),
                meshtest_load::duration::human(within.0)
            ),
        }
    }
}

/// Guardrails, checked every second: when one trips, every fault is reverted at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRules {
    /// The whole load's error rate above this...
    #[serde(default)]
    pub error_rate_above: Option<Pct>,
    /// ...for this long (default 3s).
    #[serde(default)]
    pub r#for: Option<Dur>,
    /// A steady-state probe failing this long (default: `for`).
    #[serde(default)]
    pub probe_failing: Option<String>,
    /// More pods faulted at once than this.
    #[serde(default)]
    pub max_pods: Option<usize>,
    /// The experiment running longer than this.
    #[serde(default)]
    pub deadline: Option<Dur>,
}

/// Reads and checks a profile: YAML errors and unknown fields are file:line:field; names
/// (services, pods, virtual services, routes, subsets, load routes, probes) are checked
/// against the mesh; the timeline is checked for sense.
pub fn load(file: &Path, model: &MeshModel) -> Result<Profile, InputError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| InputError::new(file, format!("cannot read the profile: {e}")))?;
    let origin = Origin {
        file: file.to_path_buf(),
        line: 1,
    };
    let mut profile: Profile = parse_yaml(&origin, &text).map_err(|mut e| {
        // The manifest parser's wording is about translation; a profile field is just unknown.
        if let Some(rest) = e.message.split(" (unknown field").nth(1) {
            e.message = format!("unknown field{}", rest.trim_end_matches(')'));
        }
        e
    })?;
    profile.file = file.to_path_buf();
    super::validate::profile(&profile, model)?;
    Ok(profile)
}

/// Finds a profile: a file path, or NAME for `DIR/NAME.yaml` in the profile directory.
pub fn find(name_or_file: &str, dir: &Path) -> Result<PathBuf, InputError> {
    let as_file = Path::new(name_or_file);
    if as_file.is_file() {
        return Ok(as_file.to_path_buf());
    }
    let named = dir.join(format!("{name_or_file}.yaml"));
    if named.is_file() {
        return Ok(named);
    }
    let known: Vec<String> = list(dir).into_iter().map(|(n, _)| n).collect();
    Err(InputError::new(
        as_file,
        format!(
            "no such profile file, and no {} (profiles there: {})",
            named.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
    .field("--profile"))
}

/// The profiles in `dir`: (name, first line of the description).
pub fn list(dir: &Path) -> Vec<(String, String)> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        description: String,
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // Only the head is wanted; unknown fields are fine here.
        let head: Option<Head> = serde_saphyr::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok());
        let line = head
            .map(|h| h.description.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "(not a readable profile)".into());
        out.push((name, line));
    }
    out
}

/// The tier of a `token:` entry (checked by validation).
pub fn tier(t: &TokenFor) -> Tier {
    Tier::parse(&t.tier).unwrap_or(Tier::Enterprise)
}
