//! RequestAuthentication -> envoy.filters.http.jwt_authn: a present token must verify; a missing
//! one passes (Istio's allow_missing) and is left to AuthorizationPolicy requestPrincipals.
//!
//! A `jwksUri` is resolved as istiod does by default: the JWKS is fetched (by the target, see
//! `MeshModel::jwks`) and inlined; one that could not be fetched becomes a key set that verifies
//! no token, so every presented token is refused, as in Istio.

use serde_json::{Map, Value, json};

use crate::error::InputError;
use crate::model::{MeshModel, Workload};

pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where the verified payload lands in dynamic metadata (RBAC's requestPrincipals read it).
pub const PAYLOAD_METADATA_KEY: &str = "payload";

/// What a jwksUri that could not be fetched resolves to: a well-formed key set whose only key
/// (a public P-256 point whose private key was discarded when it was made) verifies no token.
pub const UNFETCHED_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"meshtest-unfetched","x":"T-rXBUbevKxbGoRiLwG9tx02Kg0pKcbIAVKBINOAQWQ","y":"Eudp9KQFDzYdL34fstaerSbyGCZfNFE3db9UQpKlxsc"}]}"#;

/// The jwt_authn filter for a workload, or None when no RequestAuthentication selects it.
pub fn jwt_filter(model: &MeshModel, workload: &Workload) -> Result<Option<Value>, InputError> {
    let mut providers = Map::new();
    for ra in model.request_authentications_for(workload) {
        for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
            let field = format!("spec.jwtRules[{i}]");
            let jwks = match (&rule.jwks, &rule.jwks_uri) {
                (Some(inline), _) => inline.as_str(),
                (None, Some(uri)) => model
                    .jwks
                    .get(uri)
                    .map(String::as_str)
                    .unwrap_or(UNFETCHED_JWKS),
                (None, None) => {
                    return Err(ra.origin.error(
                        &format!("{field}.jwksUri"),
                        "give the key set: `jwks` inline or `jwksUri` (OpenID discovery from the issuer is not supported)",
                    ));
                }
            };
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
    use crate::manifest::Manifests;
    use std::path::Path;

    fn model(yaml: &str) -> MeshModel {
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), yaml).unwrap();
        MeshModel::build(m).unwrap()
    }

    const EDGE: &str = "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules:\n  - issuer: pyairtable-auth\n";

    #[test]
    fn inline_jwks_becomes_a_provider_with_allow_missing() {
        let m = model(&format!(
            "{EDGE}    jwks: '{{\"keys\":[]}}'\n    outputClaimToHeaders: [{{header: x-tenant-id, claim: tenant}}]\n"
        ));
        let f = jwt_filter(&m, &m.ingress).unwrap().unwrap();
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
    fn a_jwks_uri_is_inlined_once_fetched_and_rejects_every_token_until_then() {
        let uri = "http://auth.ns.svc.cluster.local:8081/.well-known/jwks.json";
        let mut m = model(&format!("{EDGE}    jwksUri: {uri}\n"));
        assert_eq!(m.jwks_uris(), [uri]);
        let local = |m: &MeshModel| {
            jwt_filter(m, &m.ingress)
                .unwrap()
                .unwrap()["typed_config"]["providers"]["origins-0"]["local_jwks"]["inline_string"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(local(&m), UNFETCHED_JWKS);
        m.jwks
            .insert(uri.into(), r#"{"keys":[{"kty":"EC"}]}"#.into());
        assert_eq!(local(&m), r#"{"keys":[{"kty":"EC"}]}"#);
    }

    #[test]
    fn a_rule_without_keys_names_the_field() {
        let m = model(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: x}\nspec:\n  jwtRules:\n  - issuer: a\n",
        );
        let w = Workload {
            namespace: "x".into(),
            labels: Default::default(),
        };
        let err = jwt_filter(&m, &w).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.jwtRules[0].jwksUri"));
    }
}
