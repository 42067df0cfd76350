//! RequestAuthentication -> envoy.filters.http.jwt_authn: a present token must verify; a missing
//! one passes (Istio's allow_missing) and is left to AuthorizationPolicy requestPrincipals.

use serde_json::{Map, Value, json};

use crate::error::InputError;
use crate::manifest::Manifests;
use crate::model::Workload;

pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where the verified payload lands in dynamic metadata (RBAC's requestPrincipals read it).
pub const PAYLOAD_METADATA_KEY: &str = "payload";

/// The jwt_authn filter for a workload, or None when no RequestAuthentication selects it.
pub fn jwt_filter(manifests: &Manifests, workload: &Workload) -> Result<Option<Value>, InputError> {
    let mut providers = Map::new();
    for ra in manifests.request_authentications.iter().filter(|r| {
        workload.selected_by(
            r.namespace(),
            r.spec.selector.as_ref().map(|s| &s.match_labels),
        )
    }) {
        for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
            let field = format!("spec.jwtRules[{i}]");
            let jwks = rule.jwks.as_ref().ok_or_else(|| {
                ra.origin.error(
                    &format!("{field}.jwks"),
                    "the embedded mesh needs the JWKS inline (`jwks`); it does not fetch jwksUri",
                )
            })?;
            serde_json::from_str::<Value>(jwks)
                .ok()
                .filter(|v| v["keys"].is_array())
                .ok_or_else(|| {
                    ra.origin.error(
                        &format!("{field}.jwks"),
                        "not a JSON Web Key Set ({\"keys\": [...]})",
                    )
                })?;
            let mut provider = json!({
                "issuer": rule.issuer,
                "local_jwks": {"inline_string": jwks},
                "forward": rule.forward_original_token,
                "payload_in_metadata": PAYLOAD_METADATA_KEY,
            });
            if !rule.audiences.is_empty() {
                provider["audiences"] = json!(rule.audiences);
            }
            if !rule.output_claim_to_headers.is_empty() {
                provider["claim_to_headers"] = rule
                    .output_claim_to_headers
                    .iter()
                    .map(|c| json!({"header_name": c.header, "claim_name": c.claim}))
                    .collect();
            }
            if !rule.from_headers.is_empty() {
                provider["from_headers"] = rule
                    .from_headers
                    .iter()
                    .map(|h| json!({"name": h.name, "value_prefix": h.prefix.clone().unwrap_or_default()}))
                    .collect();
            }
            providers.insert(format!("origins-{}", providers.len()), provider);
        }
    }
    if providers.is_empty() {
        return Ok(None);
    }
    let mut requirements: Vec<Value> = providers
        .keys()
        .map(|k| json!({"provider_name": k}))
        .collect();
    requirements.push(json!({"allow_missing": {}}));
    Ok(Some(json!({
        "name": JWT_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": requirements}}}],
            "bypass_cors_preflight": true,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifests(yaml: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), yaml).unwrap();
        m
    }

    #[test]
    fn inline_jwks_becomes_a_provider_with_allow_missing() {
        let m = manifests(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules:\n  - issuer: pyairtable-auth\n    jwks: '{\"keys\":[]}'\n    outputClaimToHeaders: [{header: x-tenant-id, claim: tenant}]\n",
        );
        let f = jwt_filter(&m, &Workload::ingress_gateway())
            .unwrap()
            .unwrap();
        let cfg = &f["typed_config"];
        assert_eq!(cfg["providers"]["origins-0"]["issuer"], "pyairtable-auth");
        assert_eq!(
            cfg["providers"]["origins-0"]["claim_to_headers"][0]["header_name"],
            "x-tenant-id"
        );
        assert_eq!(
            cfg["rules"][0]["requires"]["requires_any"]["requirements"][1],
            json!({"allow_missing": {}})
        );
        let pod = Workload {
            namespace: "pyairtable".into(),
            labels: Default::default(),
        };
        assert!(jwt_filter(&m, &pod).unwrap().is_none());
    }

    #[test]
    fn jwks_uri_is_refused_with_the_field() {
        let mut m = Manifests::default();
        let err = m
            .add_text(Path::new("t.yaml"), "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: x}\nspec:\n  jwtRules:\n  - issuer: a\n    jwksUri: http://auth/jwks\n")
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("jwksUri"));
    }

    #[test]
    fn missing_jwks_names_the_field() {
        let m = manifests(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: x}\nspec:\n  jwtRules:\n  - issuer: a\n",
        );
        let w = Workload {
            namespace: "x".into(),
            labels: Default::default(),
        };
        let err = jwt_filter(&m, &w).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].jwks"));
    }
}
