//! AuthorizationPolicy -> envoy.filters.http.rbac filters (DENY first, then ALLOW), as Istio
//! builds them (pilot/pkg/security/authz/builder), with stock-Envoy JWT metadata for
//! requestPrincipals.

use serde_json::{Map, Value, json};

use crate::error::InputError;
use crate::manifest::istio::{
    AuthorizationPolicySpec, AuthzAction, AuthzOperation, AuthzRule, AuthzSource,
};
use crate::manifest::{Manifests, Origin, Resource};
use crate::model::Workload;

use super::authz_conditions;

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The RBAC HTTP filters for a workload, in Istio's order: DENY, then ALLOW. No ALLOW policy
/// means no ALLOW filter (everything allowed); an ALLOW policy with no rules allows nothing.
pub fn rbac_filters(manifests: &Manifests, workload: &Workload) -> Result<Vec<Value>, InputError> {
    let configs = rbac_configs(manifests, workload, |_, rule| Some(rule.clone()))?;
    Ok(configs
        .into_iter()
        .map(|mut c| {
            c["@type"] = json!(RBAC_TYPE);
            json!({"name": "envoy.filters.http.rbac", "typed_config": c})
        })
        .collect())
}

/// The RBAC network filters for a TCP port, its rules read as [`for_tcp`] says.
pub fn rbac_network_filters(
    manifests: &Manifests,
    workload: &Workload,
    port: u16,
) -> Result<Vec<Value>, InputError> {
    let configs = rbac_configs(manifests, workload, for_tcp)?;
    Ok(configs
        .into_iter()
        .map(|mut c| {
            c["@type"] = json!(NETWORK_RBAC_TYPE);
            c["stat_prefix"] = json!(format!("tcp.inbound_{port}."));
            json!({"name": "envoy.filters.network.rbac", "typed_config": c})
        })
        .collect())
}

/// A rule as Istio reads it for a TCP port: an ALLOW rule that needs HTTP (paths, methods,
/// hosts, request principals, `request.*` conditions) can never match and is dropped; a DENY
/// rule loses those conditions and so denies more, never less.
pub fn for_tcp(action: AuthzAction, rule: &AuthzRule) -> Option<AuthzRule> {
    let http_only = |o: &AuthzOperation| {
        !(o.paths.is_empty()
            && o.not_paths.is_empty()
            && o.methods.is_empty()
            && o.not_methods.is_empty()
            && o.hosts.is_empty()
            && o.not_hosts.is_empty())
    };
    let needs_http = rule.to.iter().any(|t| http_only(&t.operation))
        || rule.from.iter().any(|f| {
            !(f.source.request_principals.is_empty() && f.source.not_request_principals.is_empty())
        })
        || rule.when.iter().any(|c| c.key.starts_with("request."));
    match (action, needs_http) {
        (_, false) => Some(rule.clone()),
        (AuthzAction::Allow | AuthzAction::Audit | AuthzAction::Custom, true) => None,
        (AuthzAction::Deny, true) => {
            let mut r = rule.clone();
            for t in &mut r.to {
                let o = &mut t.operation;
                (o.paths, o.not_paths, o.methods, o.not_methods) = Default::default();
                (o.hosts, o.not_hosts) = Default::default();
            }
            for f in &mut r.from {
                f.source.request_principals.clear();
                f.source.not_request_principals.clear();
            }
            r.when.retain(|c| !c.key.starts_with("request."));
            Some(r)
        }
    }
}

const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// One RBAC config per action (DENY, then ALLOW) with the rules `keep` lets through (possibly
/// rewritten), enforced and dry-run (shadow) apart.
fn rbac_configs(
    manifests: &Manifests,
    workload: &Workload,
    keep: impl Fn(AuthzAction, &AuthzRule) -> Option<AuthzRule>,
) -> Result<Vec<Value>, InputError> {
    validate(manifests)?;
    let applicable: Vec<&Resource<AuthorizationPolicySpec>> =
        applicable(manifests, workload).collect();
    let mut configs = Vec::new();
    // AUDIT first, as Istio orders them; it only marks requests (Envoy's LOG action).
    for (action, name) in [
        (AuthzAction::Audit, "LOG"),
        (AuthzAction::Deny, "DENY"),
        (AuthzAction::Allow, "ALLOW"),
    ] {
        let of_action = |dry: bool| -> Result<Vec<&&Resource<_>>, InputError> {
            let mut out = Vec::new();
            for p in &applicable {
                if p.spec.action.unwrap_or(AuthzAction::Allow) == action && dry_run(p)? == dry {
                    out.push(p);
                }
            }
            Ok(out)
        };
        let (enforced, shadow) = (of_action(false)?, of_action(true)?);
        if enforced.is_empty() && shadow.is_empty() {
            continue;
        }
        let rules = |of: &[&&Resource<AuthorizationPolicySpec>]| -> Result<Value, InputError> {
            let mut policies = Map::new();
            for p in of {
                for (i, rule) in p.spec.rules.iter().flatten().enumerate() {
                    if let Some(rule) = keep(action, rule) {
                        let key = format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace(), p.name());
                        let field = format!("spec.rules[{i}]");
                        policies.insert(key, policy(&rule, &p.origin, &field)?);
                    }
                }
            }
            Ok(json!({"action": name, "policies": policies}))
        };
        let mut config = json!({});
        if !enforced.is_empty() {
            config["rules"] = rules(&enforced)?;
        }
        // Dry-run policies are evaluated and counted, never enforced (Istio's shadow rules).
        if !shadow.is_empty() {
            config["shadow_rules"] = rules(&shadow)?;
            config["shadow_rules_stat_prefix"] =
                json!(format!("istio_dry_run_{}_", name.to_ascii_lowercase()));
        }
        configs.push(config);
    }
    Ok(configs)
}

/// The AuthorizationPolicies that apply to `workload` (its namespace's, selecting it or
/// selector-less, and the root namespace's), in manifest order.
pub fn applicable<'a>(
    manifests: &'a Manifests,
    workload: &'a Workload,
) -> impl Iterator<Item = &'a Resource<AuthorizationPolicySpec>> + 'a {
    manifests.authorization_policies.iter().filter(|p| {
        workload.selected_by(
            p.namespace(),
            p.spec.selector.as_ref().map(|s| &s.match_labels),
        )
    })
}

/// The `istio.io/dry-run` annotation: "true" puts the policy in shadow mode.
pub fn dry_run(p: &Resource<AuthorizationPolicySpec>) -> Result<bool, InputError> {
    match p.metadata.annotations.get(DRY_RUN).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(p.origin.error(
            &format!("metadata.annotations.{DRY_RUN}"),
            format!("`{other}` is not \"true\" or \"false\""),
        )),
    }
}

pub const DRY_RUN: &str = "istio.io/dry-run";

/// Ports in rules must be port numbers (Istio's validation); CUSTOM is refused.
fn validate(manifests: &Manifests) -> Result<(), InputError> {
    for p in &manifests.authorization_policies {
        if p.spec.action == Some(AuthzAction::Custom) {
            return Err(p.origin.error(
                "spec.action",
                "CUSTOM delegates to an ext_authz provider (meshConfig.extensionProviders), which meshtest does not translate; the policy is refused rather than ignored",
            ));
        }
        if p.spec.provider.is_some() {
            return Err(p.origin.error(
                "spec.provider",
                "a provider belongs to a CUSTOM policy, which meshtest does not translate",
            ));
        }
        for (i, rule) in p.spec.rules.iter().flatten().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                let o = &to.operation;
                for port in o.ports.iter().chain(o.not_ports.iter()) {
                    if !port.parse::<u16>().is_ok_and(|n| n > 0) {
                        return Err(p.origin.error(
                            &format!("spec.rules[{i}].to[{j}].operation.ports"),
                            format!("`{port}` is not a port number (1-65535)"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn policy(rule: &AuthzRule, origin: &Origin, field: &str) -> Result<Value, InputError> {
    let (when_principals, when_permissions) =
        authz_conditions::conditions(&rule.when, origin, field)?;
    let mut principal = if rule.from.is_empty() {
        json!({"any": true})
    } else {
        let mut sources = Vec::new();
        for (i, f) in rule.from.iter().enumerate() {
            let extras = authz_conditions::source_extras(
                &f.source,
                origin,
                &format!("{field}.from[{i}].source"),
            )?;
            sources.push(source(&f.source, extras));
        }
        or_ids(sources)
    };
    if !when_principals.is_empty() {
        let mut ids = vec![principal];
        ids.extend(when_principals);
        principal = json!({"and_ids": {"ids": ids}});
    }
    let mut permission = if rule.to.is_empty() {
        json!({"any": true})
    } else {
        or_rules(rule.to.iter().map(|t| operation(&t.operation)).collect())
    };
    if !when_permissions.is_empty() {
        let mut rules = vec![permission];
        rules.extend(when_permissions);
        permission = json!({"and_rules": {"rules": rules}});
    }
    Ok(json!({"permissions": [permission], "principals": [principal]}))
}

fn source(s: &AuthzSource, extras: Vec<Value>) -> Value {
    let mut ands = extras;
    if !s.principals.is_empty() {
        ands.push(or_ids(
            s.principals.iter().map(|p| peer_principal(p)).collect(),
        ));
    }
    if !s.not_principals.is_empty() {
        ands.push(
            json!({"not_id": or_ids(s.not_principals.iter().map(|p| peer_principal(p)).collect())}),
        );
    }
    if !s.namespaces.is_empty() {
        ands.push(or_ids(s.namespaces.iter().map(|n| namespace(n)).collect()));
    }
    if !s.not_namespaces.is_empty() {
        ands.push(
            json!({"not_id": or_ids(s.not_namespaces.iter().map(|n| namespace(n)).collect())}),
        );
    }
    if !s.request_principals.is_empty() {
        ands.push(or_ids(
            s.request_principals
                .iter()
                .map(|p| request_principal(p))
                .collect(),
        ));
    }
    if !s.not_request_principals.is_empty() {
        ands.push(json!({"not_id": or_ids(s.not_request_principals.iter().map(|p| request_principal(p)).collect())}));
    }
    if ands.is_empty() {
        return json!({"any": true});
    }
    json!({"and_ids": {"ids": ands}})
}

fn operation(o: &AuthzOperation) -> Value {
    let mut ands = Vec::new();
    let port = |p: &String| json!({"destination_port": p.parse::<u32>().unwrap_or(0)});
    if !o.ports.is_empty() {
        ands.push(or_rules(o.ports.iter().map(port).collect()));
    }
    if !o.not_ports.is_empty() {
        ands.push(json!({"not_rule": or_rules(o.not_ports.iter().map(port).collect())}));
    }
    if !o.paths.is_empty() {
        ands.push(or_rules(o.paths.iter().map(|p| path(p)).collect()));
    }
    if !o.not_paths.is_empty() {
        ands.push(json!({"not_rule": or_rules(o.not_paths.iter().map(|p| path(p)).collect())}));
    }
    if !o.methods.is_empty() {
        ands.push(or_rules(o.methods.iter().map(|m| method(m)).collect()));
    }
    if !o.not_methods.is_empty() {
        ands.push(json!({"not_rule": or_rules(o.not_methods.iter().map(|m| method(m)).collect())}));
    }
    ands.extend(authz_conditions::operation_hosts(o));
    if ands.is_empty() {
        return json!({"any": true});
    }
    json!({"and_rules": {"rules": ands}})
}

fn or_ids(ids: Vec<Value>) -> Value {
    json!({"or_ids": {"ids": ids}})
}

fn or_rules(rules: Vec<Value>) -> Value {
    json!({"or_rules": {"rules": rules}})
}

use authz_conditions::{namespace, peer_principal, request_principal, string_match};

fn path(p: &str) -> Value {
    json!({"url_path": {"path": string_match(p, "")}})
}

fn method(m: &str) -> Value {
    json!({"header": {"name": ":method", "string_match": {"exact": m}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn filters(yaml: &str, app: &str) -> Vec<Value> {
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), yaml).unwrap();
        let w = Workload {
            namespace: "pyairtable".into(),
            labels: [("app".to_string(), app.to_string())].into(),
        };
        rbac_filters(&m, &w).unwrap()
    }

    const AUTH_ONLY_FROM_GATEWAY: &str = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: auth-service-access, namespace: pyairtable}\nspec:\n  selector: {matchLabels: {app: auth-service}}\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/pyairtable/sa/api-gateway-sa\"]\n";

    #[test]
    fn principal_becomes_spiffe_exact_match() {
        let f = filters(AUTH_ONLY_FROM_GATEWAY, "auth-service");
        assert_eq!(f.len(), 1);
        let rules = &f[0]["typed_config"]["rules"];
        assert_eq!(rules["action"], "ALLOW");
        let p = &rules["policies"]["ns[pyairtable]-policy[auth-service-access]-rule[0]"];
        assert_eq!(p["permissions"], json!([{"any": true}]));
        let id = &p["principals"][0]["or_ids"]["ids"][0]["and_ids"]["ids"][0]["or_ids"]["ids"][0];
        assert_eq!(
            id["authenticated"]["principal_name"]["exact"],
            "spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa"
        );
    }

    #[test]
    fn policy_does_not_apply_to_other_workloads() {
        assert!(filters(AUTH_ONLY_FROM_GATEWAY, "llm-orchestrator").is_empty());
    }

    #[test]
    fn allow_without_rules_allows_nothing() {
        let f = filters(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: pyairtable}\nspec: {}\n",
            "x",
        );
        assert_eq!(f[0]["typed_config"]["rules"]["policies"], json!({}));
    }

    #[test]
    fn empty_rule_allows_all() {
        let f = filters(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: pyairtable}\nspec: {rules: [{}]}\n",
            "x",
        );
        let p =
            &f[0]["typed_config"]["rules"]["policies"]["ns[pyairtable]-policy[allow-all]-rule[0]"];
        assert_eq!(
            p,
            &json!({"permissions": [{"any": true}], "principals": [{"any": true}]})
        );
    }

    #[test]
    fn a_dry_run_policy_is_shadowed_never_enforced() {
        let f = filters(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: pyairtable, annotations: {istio.io/dry-run: \"true\"}}\nspec: {}\n",
            "auth-service",
        );
        let config = &f[0]["typed_config"];
        assert!(config.get("rules").is_none(), "{config}");
        assert_eq!(config["shadow_rules"]["action"], "ALLOW");
        assert_eq!(config["shadow_rules_stat_prefix"], "istio_dry_run_allow_");
    }

    #[test]
    fn audit_only_marks_and_custom_is_refused() {
        let f = filters(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: audit, namespace: pyairtable}\nspec: {action: AUDIT, rules: [{}]}\n",
            "auth-service",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["typed_config"]["rules"]["action"], "LOG");
        let mut m = Manifests::default();
        m.add_text(
            Path::new("t.yaml"),
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: pyairtable}\nspec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n",
        )
        .unwrap();
        let w = Workload::ingress_gateway();
        let err = rbac_filters(&m, &w).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.action"), "{err}");
    }

    #[test]
    fn deny_comes_before_allow() {
        let f = filters(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: pyairtable}\nspec: {rules: [{}]}\n---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: pyairtable}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]}\n",
            "x",
        );
        assert_eq!(f[0]["typed_config"]["rules"]["action"], "DENY");
        assert_eq!(f[1]["typed_config"]["rules"]["action"], "ALLOW");
        let perm = &f[0]["typed_config"]["rules"]["policies"]["ns[pyairtable]-policy[d]-rule[0]"]["permissions"]
            [0];
        assert_eq!(
            perm["or_rules"]["rules"][0]["and_rules"]["rules"][0]["or_rules"]["rules"][0]["url_path"]
                ["path"]["prefix"],
            "/admin/"
        );
    }

    #[test]
    fn wildcards_and_request_principals() {
        assert_eq!(
            string_match("*", "spiffe://"),
            json!({"safe_regex": {"regex": ".+"}})
        );
        assert_eq!(
            string_match("cluster.local/*", "spiffe://"),
            json!({"prefix": "spiffe://cluster.local/"})
        );
        assert_eq!(string_match("*-sa", "spiffe://"), json!({"suffix": "-sa"}));
        let rp = request_principal("*");
        assert_eq!(
            rp["sourced_metadata"]["metadata_matcher"]["path"],
            json!([{"key": "payload"}, {"key": "iss"}])
        );
        let rp = request_principal("pyairtable-auth/tenant-a");
        assert_eq!(
            rp["and_ids"]["ids"][1]["sourced_metadata"]["metadata_matcher"]["value"]["string_match"]
                ["exact"],
            "tenant-a"
        );
        assert_eq!(
            namespace("pyairtable")["authenticated"]["principal_name"]["safe_regex"]["regex"],
            ".*/ns/pyairtable/.*"
        );
    }
}
