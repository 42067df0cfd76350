//! AuthorizationPolicy conditions beyond principals, paths and methods: `when` keys, IP blocks,
//! service accounts and hosts, into Envoy RBAC principals and permissions the way Istio's
//! authz builder does (pilot/pkg/security/authz/model). Unknown keys are refused with file:line.

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::Origin;
use crate::manifest::istio::{AuthzCondition, AuthzOperation, AuthzSource};

use super::request_authentication::{JWT_FILTER, PAYLOAD_METADATA_KEY};

/// Which side of an RBAC policy a condition matches on.
pub enum Side {
    Principal(Value),
    Permission(Value),
}

/// "10.0.0.0/8" or "10.1.2.3" as an Envoy CidrRange.
pub fn cidr(text: &str) -> Option<Value> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()?),
        None => (text, if text.contains(':') { 128 } else { 32 }),
    };
    addr.parse::<std::net::IpAddr>().ok()?;
    Some(json!({"address_prefix": addr, "prefix_len": len}))
}

/// Istio's wildcard on a string ("*" present, "p*", "*s", exact), with a prefix for exact and
/// prefix forms.
pub fn string_match(value: &str, prefix: &str) -> Value {
    if value == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(p) = value.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{p}")})
    } else if let Some(s) = value.strip_prefix('*') {
        json!({"suffix": s})
    } else {
        json!({"exact": format!("{prefix}{value}")})
    }
}

pub fn peer_principal(p: &str) -> Value {
    json!({"authenticated": {"principal_name": string_match(p, "spiffe://")}})
}

pub fn namespace(ns: &str) -> Value {
    let regex = format!(".*/ns/{}/.*", crate::regex_literal::escape(ns));
    json!({"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}})
}

/// A JWT claim from jwt_authn's payload metadata, string or list (Istio matches either).
pub fn claim(path: &[&str], m: Value) -> Value {
    let mut keys = vec![json!({"key": PAYLOAD_METADATA_KEY})];
    keys.extend(path.iter().map(|k| json!({"key": k})));
    let matcher = |value: Value| json!({"sourced_metadata": {"metadata_matcher": {"filter": JWT_FILTER, "path": keys, "value": value}}});
    json!({"or_ids": {"ids": [
        matcher(json!({"string_match": m})),
        matcher(json!({"list_match": {"one_of": {"string_match": m}}})),
    ]}})
}

/// A request principal is "iss/sub" from the verified JWT.
pub fn request_principal(p: &str) -> Value {
    let one = |key: &str, m: Value| json!({"sourced_metadata": {"metadata_matcher": {"filter": JWT_FILTER, "path": [{"key": PAYLOAD_METADATA_KEY}, {"key": key}], "value": {"string_match": m}}}});
    if p == "*" {
        return one("iss", json!({"safe_regex": {"regex": ".+"}}));
    }
    match p.rsplit_once('/') {
        Some((iss, sub)) => {
            json!({"and_ids": {"ids": [one("iss", string_match(iss, "")), one("sub", string_match(sub, ""))]}})
        }
        None => one("iss", string_match(p, "")),
    }
}

fn service_account(sa: &str) -> Option<Value> {
    let (ns, name) = sa.split_once('/')?;
    Some(peer_principal(&format!(
        "{}/ns/{ns}/sa/{name}",
        crate::model::TRUST_DOMAIN
    )))
}

/// `[a][b]` of `request.auth.claims[a][b]`.
fn bracketed(rest: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let inner = s.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        out.push(name);
        s = after;
    }
    (!out.is_empty()).then_some(out)
}

/// One value of a condition as an RBAC matcher, and its side; None for an unknown key.
fn matcher(key: &str, v: &str) -> Option<Result<Side, String>> {
    let p = |x: Value| Some(Ok(Side::Principal(x)));
    let bad = |why: String| Some(Err(why));
    if let Some(rest) = key.strip_prefix("request.headers") {
        let name = bracketed(rest)?.first()?.to_ascii_lowercase();
        return p(json!({"header": {"name": name, "string_match": string_match(v, "")}}));
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        let path = bracketed(rest)?;
        return p(claim(&path, string_match(v, "")));
    }
    match key {
        "source.ip" | "remote.ip" => match cidr(v) {
            Some(c) if key == "source.ip" => p(json!({"direct_remote_ip": c})),
            Some(c) => p(json!({"remote_ip": c})),
            None => bad(format!("`{v}` is not an IP address or CIDR")),
        },
        "source.namespace" => p(namespace(v)),
        "source.principal" => p(peer_principal(v)),
        "source.serviceAccount" => match service_account(v) {
            Some(x) => p(x),
            None => bad(format!("`{v}` is not NAMESPACE/NAME")),
        },
        "request.auth.principal" => p(request_principal(v)),
        "request.auth.audiences" => p(claim(&["aud"], string_match(v, ""))),
        "request.auth.presenter" => p(claim(&["azp"], string_match(v, ""))),
        "destination.port" => match v.parse::<u32>() {
            Ok(port) => Some(Ok(Side::Permission(json!({"destination_port": port})))),
            Err(_) => bad(format!("`{v}` is not a port")),
        },
        "destination.ip" => match cidr(v) {
            Some(c) => Some(Ok(Side::Permission(json!({"destination_ip": c})))),
            None => bad(format!("`{v}` is not an IP address or CIDR")),
        },
        "connection.sni" => Some(Ok(Side::Permission(
            json!({"requested_server_name": string_match(v, "")}),
        ))),
        _ => None,
    }
}

/// The `when` conditions of a rule: (principal matchers, permission matchers), each condition
/// its values OR'd, its notValues negated; refused with file:line when a key is not Istio's.
pub fn conditions(
    when: &[AuthzCondition],
    origin: &Origin,
    field: &str,
) -> Result<(Vec<Value>, Vec<Value>), InputError> {
    let (mut principals, mut permissions) = (Vec::new(), Vec::new());
    for (i, c) in when.iter().enumerate() {
        let f = format!("{field}.when[{i}]");
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(origin.error(
                &format!("{f}.values"),
                "a condition needs values or notValues",
            ));
        }
        for (values, negate) in [(&c.values, false), (&c.not_values, true)] {
            if values.is_empty() {
                continue;
            }
            let mut sides = Vec::new();
            for v in values {
                match matcher(&c.key, v) {
                    Some(Ok(side)) => sides.push(side),
                    Some(Err(why)) => return Err(origin.error(&format!("{f}.values"), why)),
                    None => {
                        return Err(origin.error(
                            &format!("{f}.key"),
                            format!("condition key `{}` is not translated (request.headers[], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal/audiences/presenter/claims[], destination.ip, destination.port, connection.sni are)", c.key),
                        ));
                    }
                }
            }
            let principal_side = matches!(sides[0], Side::Principal(_));
            let items: Vec<Value> = sides
                .into_iter()
                .map(|s| match s {
                    Side::Principal(v) | Side::Permission(v) => v,
                })
                .collect();
            if principal_side {
                let any = json!({"or_ids": {"ids": items}});
                principals.push(if negate { json!({"not_id": any}) } else { any });
            } else {
                let any = json!({"or_rules": {"rules": items}});
                permissions.push(if negate {
                    json!({"not_rule": any})
                } else {
                    any
                });
            }
        }
    }
    Ok((principals, permissions))
}

/// A source's service accounts and IP blocks, as principal matchers to AND in.
pub fn source_extras(
    s: &AuthzSource,
    origin: &Origin,
    field: &str,
) -> Result<Vec<Value>, InputError> {
    let mut ands = Vec::new();
    let sa = |list: &[String]| -> Result<Vec<Value>, InputError> {
        list.iter()
            .map(|x| {
                service_account(x).ok_or_else(|| {
                    origin.error(
                        &format!("{field}.serviceAccounts"),
                        format!("`{x}` is not NAMESPACE/NAME"),
                    )
                })
            })
            .collect()
    };
    let ips = |list: &[String], key: &str| -> Result<Vec<Value>, InputError> {
        list.iter()
            .map(|x| {
                cidr(x).map(|c| json!({key: c})).ok_or_else(|| {
                    origin.error(
                        &format!("{field}.ipBlocks"),
                        format!("`{x}` is not an IP address or CIDR"),
                    )
                })
            })
            .collect()
    };
    let mut add = |items: Vec<Value>, negate: bool| {
        if !items.is_empty() {
            let any = json!({"or_ids": {"ids": items}});
            ands.push(if negate { json!({"not_id": any}) } else { any });
        }
    };
    add(sa(&s.service_accounts)?, false);
    add(sa(&s.not_service_accounts)?, true);
    add(ips(&s.ip_blocks, "direct_remote_ip")?, false);
    add(ips(&s.not_ip_blocks, "direct_remote_ip")?, true);
    add(ips(&s.remote_ip_blocks, "remote_ip")?, false);
    add(ips(&s.not_remote_ip_blocks, "remote_ip")?, true);
    Ok(ands)
}

/// An operation's hosts, as permission matchers on :authority (case-insensitive, as Istio).
pub fn operation_hosts(o: &AuthzOperation) -> Vec<Value> {
    let host = |h: &String| {
        let mut m = string_match(h, "");
        m["ignore_case"] = json!(true);
        json!({"header": {"name": ":authority", "string_match": m}})
    };
    let mut out = Vec::new();
    if !o.hosts.is_empty() {
        out.push(json!({"or_rules": {"rules": o.hosts.iter().map(host).collect::<Vec<_>>()}}));
    }
    if !o.not_hosts.is_empty() {
        out.push(json!({"not_rule": {"or_rules": {"rules": o.not_hosts.iter().map(host).collect::<Vec<_>>()}}}));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifests;
    use crate::model::Workload;
    use crate::translate::authorization_policy::rbac_filters;
    use serde_json::json;
    use std::path::Path;

    fn policy(spec: &str) -> Result<serde_json::Value, crate::error::InputError> {
        let mut m = Manifests::default();
        m.add_text(
            Path::new("p.yaml"),
            &format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"),
        )?;
        let w = Workload {
            namespace: "ns".into(),
            labels: Default::default(),
        };
        rbac_filters(&m, &w)
            .map(|f| f[0]["typed_config"]["rules"]["policies"]["ns[ns]-policy[p]-rule[0]"].clone())
    }

    #[test]
    fn when_conditions_ip_blocks_accounts_and_hosts_become_rbac_matchers() {
        let p = policy("  rules:\n  - from: [{source: {serviceAccounts: [ns/web], notIpBlocks: [10.0.0.0/8]}}]\n    to: [{operation: {hosts: ['*.example.com']}}]\n    when:\n    - {key: 'request.headers[X-Team]', values: [blue]}\n    - {key: 'request.auth.claims[groups]', notValues: [guests]}\n    - {key: destination.port, values: ['9090']}\n").unwrap();
        let principal = &p["principals"][0]["and_ids"]["ids"];
        let source = &principal[0]["or_ids"]["ids"][0]["and_ids"]["ids"];
        assert_eq!(
            source[0]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["exact"],
            "spiffe://cluster.local/ns/ns/sa/web"
        );
        assert_eq!(
            source[1]["not_id"]["or_ids"]["ids"][0]["direct_remote_ip"],
            json!({"address_prefix": "10.0.0.0", "prefix_len": 8})
        );
        assert_eq!(principal[1]["or_ids"]["ids"][0]["header"]["name"], "x-team");
        assert!(principal[2]["not_id"]["or_ids"]["ids"][0]["or_ids"]["ids"][1]["sourced_metadata"]["metadata_matcher"]["value"]["list_match"].is_object());
        let permission = &p["permissions"][0]["and_rules"]["rules"];
        assert_eq!(
            permission[1]["or_rules"]["rules"][0]["destination_port"],
            9090
        );
        let host = &permission[0]["or_rules"]["rules"][0]["and_rules"]["rules"][0]["or_rules"]["rules"]
            [0]["header"];
        assert_eq!(
            host["string_match"],
            json!({"suffix": ".example.com", "ignore_case": true})
        );
    }

    #[test]
    fn an_unknown_condition_key_is_refused_at_its_line() {
        let err =
            policy("  rules:\n  - when:\n    - {key: experimental.envoy.filters.x, values: [a]}\n")
                .unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("spec.rules[0].when[0].key"),
            "{err}"
        );
        assert_eq!(err.line, Some(1));
    }
}
