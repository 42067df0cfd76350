//! Derived JWT refusals: on a gateway whose RequestAuthentication reads the bearer token, every
//! route refuses an expired, tampered, badly signed or foreign-issuer token with 401 (Istio
//! rejects an invalid token whatever the AuthorizationPolicies say; a missing one is theirs to
//! decide, which ingress.feature checks).

use super::{Feature, header, ingress_paths, table};
use crate::model::MeshModel;

/// The token kinds a step can mint, as the step words them.
const INVALID: [&str; 4] = [
    "an expired",
    "a tampered",
    "a badly signed",
    "a wrong-issuer",
];

pub(super) fn jwt(model: &MeshModel, source: &str) -> Option<Feature> {
    let rules: Vec<_> = model
        .request_authentications_for(&model.ingress)
        .flat_map(|r| r.spec.jwt_rules.iter())
        .collect();
    // A rule reading the token from another header never sees the step's bearer token.
    if rules.is_empty() || rules.iter().any(|r| !r.from_headers.is_empty()) {
        return None;
    }
    let issuer = &rules[0].issuer;
    let paths = ingress_paths(model)?.paths;
    let rows: Vec<Vec<String>> = paths
        .iter()
        .flat_map(|(path, _)| INVALID.map(|kind| vec![path.clone(), kind.to_string()]))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut text = header(
        "The gateway refuses invalid tokens as its RequestAuthentication declares",
        "Every gateway route answers 401 to a token that is expired, tampered with, badly signed or from an issuer the gateway does not trust.",
        source,
    );
    text.push_str(&format!(
        "\n  Scenario Outline: <path> through the ingress refuses <token> token with 401\n    Given the gateway trusts tokens from issuer {issuer}\n    And <token> token for tenant derived-1 on the pro tier\n    When the client calls <path> through the ingress\n    Then the response status is 401\n\n    Examples:\n"
    ));
    let scenarios = rows.len();
    text.push_str(&table(&["path", "token"], rows));
    Some(Feature {
        file: "jwt.feature".into(),
        text,
        scenarios,
    })
}
