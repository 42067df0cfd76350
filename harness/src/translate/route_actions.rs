//! The parts of a VirtualService http route beyond where it goes: rewrite, redirect, header
//! operations, CORS and mirroring, as Istio writes them onto the Envoy route
//! (pilot/pkg/networking/core/route).

use serde_json::{Value, json};

use crate::error::InputError;
use crate::manifest::istio::VirtualServiceSpec;
use crate::manifest::istio::{CorsPolicy, HeaderOperations, HttpRoute, StringMatch};
use crate::manifest::{Origin, Resource};
use crate::model::MeshModel;

use super::destination_rule::cluster_name;
use super::duration;

pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The CORS filter an HCM needs when any route declares a corsPolicy (per-route config alone
/// does nothing without it).
pub fn cors_filter() -> Value {
    json!({"name": CORS_FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}})
}

pub fn any_cors(model: &MeshModel) -> bool {
    model
        .manifests
        .virtual_services
        .iter()
        .flat_map(|vs| vs.spec.http.iter())
        .any(|h| h.cors_policy.is_some())
}

/// A redirect route's `redirect` action, if the route redirects.
pub fn redirect(
    http: &HttpRoute,
    origin: &Origin,
    field: &str,
) -> Result<Option<Value>, InputError> {
    let Some(r) = &http.redirect else {
        return Ok(None);
    };
    if !http.route.is_empty() {
        return Err(origin.error(
            &format!("{field}.redirect"),
            "a route cannot both redirect and route to a destination",
        ));
    }
    let mut out = json!({});
    if let Some(uri) = &r.uri {
        out["path_redirect"] = json!(uri);
    }
    if let Some(a) = &r.authority {
        out["host_redirect"] = json!(a);
    }
    if let Some(p) = r.port {
        out["port_redirect"] = json!(p);
    }
    if let Some(s) = &r.scheme {
        out["scheme_redirect"] = json!(s);
    }
    out["response_code"] = json!(match r.redirect_code.unwrap_or(301) {
        301 => "MOVED_PERMANENTLY",
        302 => "FOUND",
        303 => "SEE_OTHER",
        307 => "TEMPORARY_REDIRECT",
        308 => "PERMANENT_REDIRECT",
        other => {
            return Err(origin.error(
                &format!("{field}.redirect.redirectCode"),
                format!("{other} is not a redirect code Envoy sends (301, 302, 303, 307, 308)"),
            ));
        }
    });
    Ok(Some(out))
}

/// Adds rewrite and mirroring to a route action.
pub fn decorate_action(
    model: &MeshModel,
    vs: &Resource<VirtualServiceSpec>,
    http: &HttpRoute,
    field: &str,
    action: &mut Value,
) -> Result<(), InputError> {
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action["prefix_rewrite"] = json!(uri);
        }
        if let Some(a) = &rw.authority {
            action["host_rewrite_literal"] = json!(a);
        }
        if let Some(r) = &rw.uri_regex_rewrite {
            if rw.uri.is_some() {
                return Err(vs.origin.error(
                    &format!("{field}.rewrite"),
                    "uri and uriRegexRewrite cannot both be set",
                ));
            }
            action["regex_rewrite"] =
                json!({"pattern": {"regex": r.pattern}, "substitution": r.rewrite});
        }
    }
    if let Some(m) = &http.mirror {
        let service = model.resolve_host(&m.host, vs.namespace()).ok_or_else(|| {
            vs.origin.error(
                &format!("{field}.mirror.host"),
                format!("no Service {} in the mesh", m.host),
            )
        })?;
        let port = m
            .port
            .as_ref()
            .map_or(service.default_port().port, |p| p.number);
        // Istio mirrors 100% unless mirrorPercentage says otherwise.
        let percent = http.mirror_percentage.as_ref().map_or(100.0, |p| p.value);
        action["request_mirror_policies"] = json!([{
            "cluster": cluster_name(service, port, m.subset.as_deref()),
            "runtime_fraction": {"default_value": {"numerator": (percent * 10_000.0).round() as u64, "denominator": "MILLION"}},
        }]);
    }
    Ok(())
}

/// Header operations and CORS on the route entry itself.
pub fn decorate_route(
    http: &HttpRoute,
    origin: &Origin,
    field: &str,
    route: &mut Value,
) -> Result<(), InputError> {
    if let Some(h) = &http.headers {
        if let Some(req) = &h.request {
            header_ops(req, "request", route);
        }
        if let Some(resp) = &h.response {
            header_ops(resp, "response", route);
        }
    }
    if let Some(c) = &http.cors_policy {
        route["typed_per_filter_config"][CORS_FILTER] = cors(c, origin, field)?;
    }
    Ok(())
}

fn header_ops(ops: &HeaderOperations, side: &str, route: &mut Value) {
    let mut add: Vec<Value> = Vec::new();
    for (k, v) in &ops.set {
        add.push(json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
    }
    for (k, v) in &ops.add {
        add.push(
            json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}),
        );
    }
    if !add.is_empty() {
        route[format!("{side}_headers_to_add")] = Value::Array(add);
    }
    if !ops.remove.is_empty() {
        route[format!("{side}_headers_to_remove")] = json!(ops.remove);
    }
}

fn cors(c: &CorsPolicy, origin: &Origin, field: &str) -> Result<Value, InputError> {
    let origins: Vec<Value> = c
        .allow_origins
        .iter()
        .map(|m| match m {
            StringMatch::Exact(v) => json!({"exact": v}),
            StringMatch::Prefix(v) | StringMatch::PathSeparatedPrefix(v) => json!({"prefix": v}),
            StringMatch::Regex(v) => json!({"safe_regex": {"regex": v}}),
        })
        .collect();
    let mut out = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
    });
    for (key, values) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        if !values.is_empty() {
            out[key] = json!(values.join(","));
        }
    }
    if let Some(age) = &c.max_age {
        let d = duration::parse(age).ok_or_else(|| {
            origin.error(
                &format!("{field}.corsPolicy.maxAge"),
                format!("`{age}` is not a duration"),
            )
        })?;
        out["max_age"] = json!(d.as_secs().to_string());
    }
    if let Some(cred) = c.allow_credentials {
        out["allow_credentials"] = json!(cred);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::translate::tests::model_of;
    use serde_json::json;

    #[test]
    fn rewrite_redirect_headers_cors_mirror_and_query_params_reach_the_routes() {
        let model = model_of(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: ns}\nspec:\n  hosts: [svc]\n  http:\n  - match: [{uri: {prefix: /old}}]\n    redirect: {uri: /new, redirectCode: 302}\n  - match: [{uri: {prefix: /v1/}, queryParams: {debug: {exact: '1'}}, ignoreUriCase: true}]\n    rewrite: {uri: /, authority: backend.local}\n    headers:\n      request: {set: {x-env: test}, remove: [x-secret]}\n      response: {add: {x-served-by: mesh}}\n    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET, POST], maxAge: 24h}\n    mirror: {host: svc}\n    mirrorPercentage: {value: 25}\n    route: [{destination: {host: svc}}]\n",
        );
        let hosts = crate::translate::tests::all_virtual_hosts(&model);
        let routes = hosts[0]["routes"].as_array().unwrap();
        assert_eq!(
            routes[0]["redirect"],
            json!({"path_redirect": "/new", "response_code": "FOUND"})
        );
        assert!(routes[0].get("route").is_none());
        let r = &routes[1];
        assert_eq!(r["match"]["query_parameters"][0]["name"], "debug");
        assert_eq!(r["match"]["case_sensitive"], false);
        assert_eq!(r["route"]["prefix_rewrite"], "/");
        assert_eq!(r["route"]["host_rewrite_literal"], "backend.local");
        assert_eq!(
            r["request_headers_to_add"][0]["append_action"],
            "OVERWRITE_IF_EXISTS_OR_ADD"
        );
        assert_eq!(r["request_headers_to_remove"], json!(["x-secret"]));
        assert_eq!(
            r["response_headers_to_add"][0]["header"]["key"],
            "x-served-by"
        );
        let cors = &r["typed_per_filter_config"][super::CORS_FILTER];
        assert_eq!(cors["allow_methods"], "GET,POST");
        assert_eq!(cors["max_age"], "86400");
        let mirror = &r["route"]["request_mirror_policies"][0];
        assert_eq!(mirror["cluster"], "outbound|8080||svc.ns.svc.cluster.local");
        assert_eq!(
            mirror["runtime_fraction"]["default_value"]["numerator"],
            250_000
        );
    }
}
