//! End-user JWTs at the edge: which tokens the ingress accepts, and how it refuses the rest.

use cucumber::{given, when};

use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::target::{Call, From};
use crate::token::{Breakage, Tier, TokenSpec, mint};

#[given(
    regex = r"^an? (valid|expired|tampered|badly signed|wrong-issuer) token for tenant (\S+) on the (free|pro|enterprise) tier$"
)]
async fn a_token(w: &mut MeshWorld, kind: String, tenant: String, tier: String) {
    let base = TokenSpec::new(&tenant, Tier::parse(&tier).expect("tier from the regex"));
    let spec = match kind.as_str() {
        "valid" => base,
        "expired" => TokenSpec {
            expired: true,
            ..base
        },
        "tampered" => TokenSpec {
            breakage: Breakage::Tampered,
            ..base
        },
        "badly signed" => TokenSpec {
            breakage: Breakage::BadSignature,
            ..base
        },
        _ => TokenSpec {
            issuer: "someone-else".into(),
            ..base
        },
    };
    w.token = Some(format!("Bearer {}", mint(&spec).expect("minting a token")));
}

#[given("a token that is not a JWT")]
async fn garbage_token(w: &mut MeshWorld) {
    w.token = Some("Bearer not-a-jwt".into());
}

#[given("no token")]
async fn no_token(w: &mut MeshWorld) {
    w.token = None;
}

/// An ingress call carrying the scenario's token (if any) and extra headers.
pub fn ingress_call(w: &MeshWorld, path: &str, headers: &[(String, String)]) -> Call {
    let mut call = Call::new(From::Ingress { https: false }, "api-gateway", path);
    call.timeout = CALL_TIMEOUT;
    if let Some(t) = &w.token {
        call = call.header("authorization", t);
    }
    for (k, v) in headers {
        call = call.header(k, v);
    }
    call
}

#[when(regex = r"^the client calls (\S+) through the ingress$")]
async fn calls_through_ingress(w: &mut MeshWorld, path: String) {
    let call = ingress_call(w, &path, &[]);
    w.call(format!("ingress {path}"), call).await;
}
