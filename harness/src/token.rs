//! meshtest's test JWT issuer: ES256 tokens the mesh's RequestAuthentication accepts (its JWKS
//! is the public half of the key below), and the broken tokens it must refuse.
//!
//! The private key is a test fixture committed on purpose: it signs tokens for test meshes only.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

const ISSUER_KEY_PEM: &str = include_str!("../testdata/jwt-issuer.key.pem");
/// The JWKS that goes inline into RequestAuthentication `jwks`.
pub const ISSUER_JWKS: &str = include_str!("../testdata/jwks.json");
pub const KEY_ID: &str = "meshtest-test-issuer-1";
pub const DEFAULT_ISSUER: &str = "pyairtable-auth";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        [Tier::Free, Tier::Pro, Tier::Enterprise]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// What a token should say, and how it should be broken (if at all).
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub tenant: String,
    pub tier: Tier,
    pub issuer: String,
    pub expired: bool,
    pub breakage: Breakage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    None,
    /// Signed by a key the mesh does not trust.
    BadSignature,
    /// A valid token whose payload was edited after signing (tier upgraded to enterprise).
    Tampered,
}

impl TokenSpec {
    pub fn new(tenant: &str, tier: Tier) -> TokenSpec {
        TokenSpec {
            tenant: tenant.into(),
            tier,
            issuer: DEFAULT_ISSUER.into(),
            expired: false,
            breakage: Breakage::None,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: String,
    tenant: &'a str,
    tier: &'a str,
    iat: u64,
    exp: u64,
}

/// Mints a token as `meshtest token` prints it.
pub fn mint(spec: &TokenSpec) -> Result<String> {
    if spec.tenant.is_empty()
        || !spec
            .tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "tenant `{}` must be non-empty ASCII letters, digits, - or _",
            spec.tenant
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let (iat, exp) = if spec.expired {
        (now - 7200, now - 3600)
    } else {
        (now, now + 3600)
    };
    let claims = Claims {
        iss: &spec.issuer,
        sub: format!("user@{}", spec.tenant),
        tenant: &spec.tenant,
        tier: spec.tier.as_str(),
        iat,
        exp,
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    let key = match spec.breakage {
        Breakage::BadSignature => {
            let foreign = rcgen::KeyPair::generate().context("generating a foreign signing key")?;
            EncodingKey::from_ec_pem(foreign.serialize_pem().as_bytes())?
        }
        _ => EncodingKey::from_ec_pem(ISSUER_KEY_PEM.as_bytes())
            .context("loading the test issuer key")?,
    };
    let token = jsonwebtoken::encode(&header, &claims, &key).context("signing the token")?;
    Ok(match spec.breakage {
        Breakage::Tampered => tamper(&token)?,
        _ => token,
    })
}

/// Rewrites the payload's tier to enterprise, keeping the original signature.
fn tamper(token: &str) -> Result<String> {
    let mut parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        bail!("not a JWT");
    }
    let payload = URL_SAFE_NO_PAD.decode(parts[1])?;
    let mut claims: serde_json::Value = serde_json::from_slice(&payload)?;
    claims["tier"] = "enterprise".into();
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    parts[1] = &forged;
    Ok(parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    fn verify(token: &str) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(ISSUER_JWKS).unwrap();
        let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[DEFAULT_ISSUER]);
        decode::<serde_json::Value>(token, &key, &v).map(|d| d.claims)
    }

    #[test]
    fn valid_token_verifies_against_the_committed_jwks() {
        let claims = verify(&mint(&TokenSpec::new("acme", Tier::Pro)).unwrap()).unwrap();
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["tier"], "pro");
    }

    #[test]
    fn broken_tokens_do_not_verify() {
        for (expired, breakage) in [
            (true, Breakage::None),
            (false, Breakage::BadSignature),
            (false, Breakage::Tampered),
        ] {
            let spec = TokenSpec {
                expired,
                breakage,
                ..TokenSpec::new("acme", Tier::Free)
            };
            assert!(
                verify(&mint(&spec).unwrap()).is_err(),
                "{breakage:?} expired={expired}"
            );
        }
        let spec = TokenSpec {
            issuer: "someone-else".into(),
            ..TokenSpec::new("acme", Tier::Free)
        };
        assert!(verify(&mint(&spec).unwrap()).is_err());
    }

    #[test]
    fn tenant_must_be_a_simple_name() {
        assert!(mint(&TokenSpec::new("a b", Tier::Free)).is_err());
    }
}
