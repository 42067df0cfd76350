//! What the AuthorizationPolicies decide for one request, read from the manifests the way
//! Istio's documentation defines it (DENY first, then ALLOW; no ALLOW policy allows all; an
//! ALLOW policy without rules allows nothing). Independent of the Envoy RBAC translation, so a
//! suite derived from it checks that translation instead of repeating it.

use crate::manifest::istio::{
    AuthorizationPolicySpec, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
};
use crate::manifest::{Manifests, Resource};
use crate::model::{TRUST_DOMAIN, Workload};

/// Who calls: a mesh identity (`cluster.local/ns/NS/sa/SA`) or a plaintext client (none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Option<String>,
}

impl Caller {
    pub fn workload(namespace: &str, service_account: &str) -> Caller {
        Caller {
            principal: Some(format!(
                "{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"
            )),
        }
    }

    fn namespace(&self) -> Option<&str> {
        let rest = self.principal.as_deref()?.split_once("/ns/")?.1;
        Some(rest.split_once('/').map_or(rest, |(ns, _)| ns))
    }
}

/// What is asked: the pod port, path and method (requests carry no token here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    pub port: u16,
    pub path: &'a str,
    pub method: &'a str,
    /// A TCP port: rules needing HTTP (paths, methods, request principals) never allow, and a
    /// DENY rule is read without them (Istio's reading for TCP).
    pub tcp: bool,
    /// The Host the request carries.
    pub host: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: by the ALLOW policy named (ns/name), or because none applies.
    Allowed { by: Option<String> },
    /// Denied: by a DENY policy's rule, or because ALLOW policies apply and none matched.
    Denied { by: String },
    /// A condition the manifests alone cannot settle (an IP block, a request header): the
    /// policy named decides at run time.
    Undecidable { why: String },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// Which policy decided, for a feature's "decided by" column.
    pub fn reason(&self) -> String {
        match self {
            Decision::Allowed { by: Some(p) } => format!("allowed by {p}"),
            Decision::Allowed { by: None } => "no ALLOW policy applies".into(),
            Decision::Denied { by } => by.clone(),
            Decision::Undecidable { why } => why.clone(),
        }
    }
}

pub fn decide(manifests: &Manifests, workload: &Workload, caller: &Caller, ask: &Ask) -> Decision {
    let applicable: Vec<&Resource<AuthorizationPolicySpec>> =
        crate::translate::authorization_policy::applicable(manifests, workload)
            // A dry-run policy decides nothing (translation refuses a bad annotation value).
            .filter(|p| !crate::translate::authorization_policy::dry_run(p).unwrap_or(false))
            .collect();
    let name = |p: &Resource<AuthorizationPolicySpec>| format!("{}/{}", p.namespace(), p.name());
    let of = |action: AuthzAction| {
        applicable
            .iter()
            .filter(move |p| p.spec.action.unwrap_or(AuthzAction::Allow) == action)
    };
    let unsure = |p: &Resource<AuthorizationPolicySpec>| Decision::Undecidable {
        why: format!(
            "{} has a condition only the running mesh can decide",
            name(p)
        ),
    };
    for p in of(AuthzAction::Deny) {
        match matches(&p.spec, AuthzAction::Deny, caller, ask) {
            Some(true) => {
                return Decision::Denied {
                    by: format!("denied by {}", name(p)),
                };
            }
            Some(false) => {}
            None => return unsure(p),
        }
    }
    let allows: Vec<_> = of(AuthzAction::Allow).collect();
    if allows.is_empty() {
        return Decision::Allowed { by: None };
    }
    for p in &allows {
        match matches(&p.spec, AuthzAction::Allow, caller, ask) {
            Some(true) => return Decision::Allowed { by: Some(name(p)) },
            Some(false) => {}
            None => return unsure(p),
        }
    }
    Decision::Denied {
        by: format!(
            "no rule of {} matches",
            allows
                .iter()
                .map(|p| name(p))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Does any rule match? (No rules: none does; None: a rule cannot be decided here.)
fn matches(
    spec: &AuthorizationPolicySpec,
    action: AuthzAction,
    caller: &Caller,
    ask: &Ask,
) -> Option<bool> {
    let mut unsure = false;
    for rule in spec.rules.iter().flatten() {
        let rule = if ask.tcp {
            match crate::translate::authorization_policy::for_tcp(action, rule) {
                Some(r) => r,
                None => continue,
            }
        } else {
            rule.clone()
        };
        match rule_matches(&rule, caller, ask) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unsure = true,
        }
    }
    if unsure { None } else { Some(false) }
}

fn rule_matches(rule: &AuthzRule, caller: &Caller, ask: &Ask) -> Option<bool> {
    let from = if rule.from.is_empty() {
        Some(true)
    } else {
        any_of(rule.from.iter().map(|f| source(&f.source, caller)))
    };
    let to = rule.to.is_empty() || rule.to.iter().any(|t| operation(&t.operation, ask));
    let when = all_of(rule.when.iter().map(|c| condition(c, caller, ask)));
    // A known mismatch settles it even when another part is unknown.
    all_of([from, Some(to), when].into_iter())
}

/// OR over answers some of which may be unknown: true if any is true, unknown if none is true
/// and one is unknown.
fn any_of(items: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for i in items {
        match i {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    if unknown { None } else { Some(false) }
}

fn all_of(items: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for i in items {
        match i {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

/// One `when` condition for a call without a token: keys on the caller's identity and the
/// port are decided; `request.auth.*` never match a call without a token; anything that needs
/// addresses or headers is unknown.
fn condition(c: &AuthzCondition, caller: &Caller, ask: &Ask) -> Option<bool> {
    let value: Option<String> = match c.key.as_str() {
        "source.principal" => caller.principal.clone(),
        "source.namespace" => caller.namespace().map(str::to_string),
        "source.serviceAccount" => account_of(caller),
        "destination.port" => Some(ask.port.to_string()),
        // No token: no request principal, audiences, presenter or claims.
        k if k.starts_with("request.auth.") => Some(String::new()),
        _ => return None,
    };
    let value = value.unwrap_or_default();
    let present = |list: &[String]| !value.is_empty() && list.iter().any(|p| wildcard(p, &value));
    Some((c.values.is_empty() || present(&c.values)) && !present(&c.not_values))
}

fn source(s: &AuthzSource, caller: &Caller) -> Option<bool> {
    let ip_blocks = !(s.ip_blocks.is_empty()
        && s.not_ip_blocks.is_empty()
        && s.remote_ip_blocks.is_empty()
        && s.not_remote_ip_blocks.is_empty());
    match (identity(s, caller), ip_blocks) {
        (false, _) => Some(false),
        // Addresses are the running mesh's: only it can say.
        (true, true) => None,
        (true, false) => Some(true),
    }
}

/// "NAMESPACE/NAME" of a mesh identity.
fn account_of(caller: &Caller) -> Option<String> {
    let (ns, sa) = caller
        .principal
        .as_deref()?
        .split_once("/ns/")?
        .1
        .split_once("/sa/")?;
    Some(format!("{ns}/{sa}"))
}

/// The parts of a source the caller's identity alone decides.
fn identity(s: &AuthzSource, caller: &Caller) -> bool {
    let account = account_of(caller);
    let in_accounts = |list: &[String]| account.as_ref().is_some_and(|a| list.contains(a));
    let principal = caller.principal.as_deref();
    let namespace = caller.namespace();
    let any_of = |values: &[String], v: Option<&str>| {
        v.is_some_and(|v| values.iter().any(|p| wildcard(p, v)))
    };
    (s.principals.is_empty() || any_of(&s.principals, principal))
        && !any_of(&s.not_principals, principal)
        && (s.namespaces.is_empty() || any_of(&s.namespaces, namespace))
        && !any_of(&s.not_namespaces, namespace)
        // A request without a token has no request principal: `requestPrincipals` never
        // match it, `notRequestPrincipals` always do.
        && s.request_principals.is_empty()
        && (s.service_accounts.is_empty() || in_accounts(&s.service_accounts))
        && !in_accounts(&s.not_service_accounts)
}

fn operation(o: &AuthzOperation, ask: &Ask) -> bool {
    let port = ask.port.to_string();
    let has =
        |values: &[String], v: &str, f: fn(&str, &str) -> bool| values.iter().any(|p| f(p, v));
    (o.ports.is_empty() || o.ports.contains(&port))
        && !o.not_ports.contains(&port)
        && (o.paths.is_empty() || has(&o.paths, ask.path, wildcard))
        && !has(&o.not_paths, ask.path, wildcard)
        && (o.methods.is_empty() || has(&o.methods, ask.method, |a, b| a == b))
        && !has(&o.not_methods, ask.method, |a, b| a == b)
        && (o.hosts.is_empty() || has(&o.hosts, ask.host, host_match))
        && !has(&o.not_hosts, ask.host, host_match)
}

fn host_match(pattern: &str, host: &str) -> bool {
    wildcard(&pattern.to_ascii_lowercase(), &host.to_ascii_lowercase())
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (anything present).
fn wildcard(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn manifests(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_text(Path::new("p.yaml"), yaml).unwrap();
        m
    }

    fn ratings() -> Workload {
        Workload {
            namespace: "default".into(),
            labels: BTreeMap::from([("app".to_string(), "ratings".to_string())]),
        }
    }

    const GET: Ask = Ask {
        port: 9080,
        path: "/ratings/0",
        method: "GET",
        tcp: false,
        host: "ratings:9080",
    };

    #[test]
    fn no_policy_allows_and_an_empty_allow_policy_denies() {
        let caller = Caller::workload("default", "bookinfo-reviews");
        assert!(decide(&manifests(""), &ratings(), &caller, &GET).allowed());
        let deny_all = manifests(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\nspec: {}\n",
        );
        let d = decide(&deny_all, &ratings(), &caller, &GET);
        assert_eq!(d.reason(), "no rule of default/deny-all matches");
    }

    #[test]
    fn principals_paths_methods_and_deny_first() {
        let m = manifests(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ratings, namespace: default}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  rules:\n  - from: [{source: {principals: ['cluster.local/ns/default/sa/bookinfo-reviews']}}]\n    to: [{operation: {methods: [GET], paths: ['/ratings/*']}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: ['*/admin']}}]}]\n",
        );
        let reviews = Caller::workload("default", "bookinfo-reviews");
        let d = decide(&m, &ratings(), &reviews, &GET);
        assert_eq!(
            d,
            Decision::Allowed {
                by: Some("default/ratings".into())
            }
        );
        let post = Ask {
            method: "POST",
            ..GET
        };
        assert!(!decide(&m, &ratings(), &reviews, &post).allowed());
        let admin = Ask {
            path: "/ratings/admin",
            ..GET
        };
        assert_eq!(
            decide(&m, &ratings(), &reviews, &admin).reason(),
            "denied by istio-system/no-admin"
        );
        let productpage = Caller::workload("default", "bookinfo-productpage");
        assert!(!decide(&m, &ratings(), &productpage, &GET).allowed());
        let plaintext = Caller { principal: None };
        assert!(!decide(&m, &ratings(), &plaintext, &GET).allowed());
    }

    #[test]
    fn conditions_only_the_running_mesh_settles_are_undecidable_unless_something_else_fails() {
        let m = manifests(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: team, namespace: default}\nspec:\n  rules:\n  - from: [{source: {serviceAccounts: [default/reviews], ipBlocks: [10.0.0.0/8]}}]\n    when: [{key: 'request.headers[x-team]', values: [blue]}, {key: destination.port, values: ['9080']}]\n",
        );
        let reviews = Caller::workload("default", "reviews");
        let d = decide(&m, &ratings(), &reviews, &GET);
        assert!(matches!(d, Decision::Undecidable { .. }), "{d:?}");
        let details = Caller::workload("default", "details");
        assert!(!decide(&m, &ratings(), &details, &GET).allowed());
        let other_port = Ask { port: 9081, ..GET };
        assert!(!decide(&m, &ratings(), &reviews, &other_port).allowed());
    }

    #[test]
    fn namespaces_and_negations() {
        let m = manifests(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ns, namespace: default}\nspec:\n  rules:\n  - from: [{source: {namespaces: ['default'], notPrincipals: ['*/sa/bookinfo-details']}}]\n    to: [{operation: {notPorts: ['9081']}}]\n",
        );
        assert!(decide(&m, &ratings(), &Caller::workload("default", "a"), &GET).allowed());
        assert!(!decide(&m, &ratings(), &Caller::workload("other", "a"), &GET).allowed());
        assert!(
            !decide(
                &m,
                &ratings(),
                &Caller::workload("default", "bookinfo-details"),
                &GET
            )
            .allowed()
        );
        let admin_port = Ask { port: 9081, ..GET };
        assert!(
            !decide(
                &m,
                &ratings(),
                &Caller::workload("default", "a"),
                &admin_port
            )
            .allowed()
        );
    }
}
