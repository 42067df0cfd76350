//! What the AuthorizationPolicies decide for one request, read from the manifests the way
//! Istio's documentation defines it (DENY first, then ALLOW; no ALLOW policy allows all; an
//! ALLOW policy without rules allows nothing). Independent of the Envoy RBAC translation, so a
//! suite derived from it checks that translation instead of repeating it.

use crate::manifest::istio::{
    AuthorizationPolicySpec, AuthzAction, AuthzOperation, AuthzRule, AuthzSource,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: by the ALLOW policy named (ns/name), or because none applies.
    Allowed { by: Option<String> },
    /// Denied: by a DENY policy's rule, or because ALLOW policies apply and none matched.
    Denied { by: String },
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
        }
    }
}

pub fn decide(manifests: &Manifests, workload: &Workload, caller: &Caller, ask: &Ask) -> Decision {
    let applicable: Vec<&Resource<AuthorizationPolicySpec>> = manifests
        .authorization_policies
        .iter()
        .filter(|p| {
            workload.selected_by(
                p.namespace(),
                p.spec.selector.as_ref().map(|s| &s.match_labels),
            )
        })
        // A dry-run policy decides nothing (translation refuses a bad annotation value).
        .filter(|p| !crate::translate::authorization_policy::dry_run(p).unwrap_or(false))
        .collect();
    let name = |p: &Resource<AuthorizationPolicySpec>| format!("{}/{}", p.namespace(), p.name());
    let of = |action: AuthzAction| {
        applicable
            .iter()
            .filter(move |p| p.spec.action.unwrap_or(AuthzAction::Allow) == action)
    };
    if let Some(p) =
        of(AuthzAction::Deny).find(|p| matches(&p.spec, AuthzAction::Deny, caller, ask))
    {
        return Decision::Denied {
            by: format!("denied by {}", name(p)),
        };
    }
    let allows: Vec<_> = of(AuthzAction::Allow).collect();
    if allows.is_empty() {
        return Decision::Allowed { by: None };
    }
    match allows
        .iter()
        .find(|p| matches(&p.spec, AuthzAction::Allow, caller, ask))
    {
        Some(p) => Decision::Allowed { by: Some(name(p)) },
        None => Decision::Denied {
            by: format!(
                "no rule of {} matches",
                allows
                    .iter()
                    .map(|p| name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Does any rule match? (No rules: none does.)
fn matches(
    spec: &AuthorizationPolicySpec,
    action: AuthzAction,
    caller: &Caller,
    ask: &Ask,
) -> bool {
    spec.rules.iter().flatten().any(|rule| {
        let needs_http = rule.to.iter().any(|t| {
            let o = &t.operation;
            !(o.paths.is_empty()
                && o.not_paths.is_empty()
                && o.methods.is_empty()
                && o.not_methods.is_empty())
        }) || rule.from.iter().any(|f| {
            !(f.source.request_principals.is_empty() && f.source.not_request_principals.is_empty())
        });
        if ask.tcp && needs_http {
            if action == AuthzAction::Allow {
                return false;
            }
            let mut r = rule.clone();
            for t in &mut r.to {
                let o = &mut t.operation;
                (o.paths, o.not_paths, o.methods, o.not_methods) = Default::default();
            }
            for f in &mut r.from {
                f.source.request_principals.clear();
                f.source.not_request_principals.clear();
            }
            return rule_matches(&r, caller, ask);
        }
        rule_matches(rule, caller, ask)
    })
}

fn rule_matches(rule: &AuthzRule, caller: &Caller, ask: &Ask) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source(&f.source, caller)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation(&t.operation, ask)))
}

fn source(s: &AuthzSource, caller: &Caller) -> bool {
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
