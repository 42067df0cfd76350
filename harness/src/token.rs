//! meshtest's test JWT issuer: ES256 tokens the mesh's RequestAuthentication accepts, and the
//! broken tokens it must refuse.
//!
//! The key pair is generated for each mesh run and kept in its private run directory; only the
//! public half leaves it (as the JWKS the workloads serve at their jwksUri). No signing key is
//! committed, so nobody can mint tokens for a cluster these manifests are applied to.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

pub const KEY_ID: &str = "meshtest-test-issuer";
/// The issuer claim of tokens for a mesh that declares no RequestAuthentication issuer.
pub const DEFAULT_ISSUER: &str = "meshtest";

/// The issuer the mesh trusts: the first `jwtRules[].issuer` of its RequestAuthentications
/// (tokens that name none carry it), else [`DEFAULT_ISSUER`].
pub fn mesh_issuer(manifests: &crate::manifest::Manifests) -> String {
    manifests
        .request_authentications
        .iter()
        .flat_map(|r| r.spec.jwt_rules.iter())
        .map(|r| r.issuer.clone())
        .next()
        .unwrap_or_else(|| DEFAULT_ISSUER.into())
}

/// A signing key and the JWKS of its public half.
pub struct Issuer {
    /// The `iss` claim of tokens whose spec names no issuer.
    iss: String,
    key_pem: String,
    key: EncodingKey,
    jwks: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl Issuer {
    /// A fresh ES256 (P-256) key pair.
    pub fn generate() -> Result<Issuer> {
        crate::tls::install_crypto_provider();
        let pair = rcgen::KeyPair::generate().context("generating the issuer key")?;
        Issuer::from_pem(&pair.serialize_pem())
    }

    /// The issuer whose PKCS#8 PEM key is `key_pem`.
    pub fn from_pem(key_pem: &str) -> Result<Issuer> {
        crate::tls::install_crypto_provider();
        let key = EncodingKey::from_ec_pem(key_pem.as_bytes()).context("loading the issuer key")?;
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256)
            .context("deriving the JWKS")?;
        jwk.common.key_id = Some(KEY_ID.into());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks = serde_json::to_string(&serde_json::json!({"keys": [jwk]}))?;
        Ok(Issuer {
            iss: DEFAULT_ISSUER.into(),
            key_pem: key_pem.to_string(),
            key,
            jwks,
        })
    }

    /// Reads the key a running mesh keeps in its run directory.
    pub fn load(path: &Path) -> Result<Issuer> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the mesh's issuer key {}", path.display()))?;
        Issuer::from_pem(&pem)
    }

    /// The same key, issuing as `iss` (the mesh's issuer, see [`mesh_issuer`]).
    pub fn named(self, iss: String) -> Issuer {
        Issuer { iss, ..self }
    }

    /// Writes the private key (0600).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::pki::write_private(path, &self.key_pem).map(|_| ())
    }

    /// The public JSON Web Key Set (`{"keys": [...]}`).
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Mints a token as `meshtest token` prints it.
    pub fn mint(&self, spec: &TokenSpec) -> Result<String> {
        mint_with(&self.key, &self.iss, spec)
    }
}

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
    /// None: the issuer's own name (the mesh's issuer).
    pub issuer: Option<String>,
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
            issuer: None,
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

fn mint_with(issuer_key: &EncodingKey, iss: &str, spec: &TokenSpec) -> Result<String> {
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
        iss: spec.issuer.as_deref().unwrap_or(iss),
        sub: format!("user@{}", spec.tenant),
        tenant: &spec.tenant,
        tier: spec.tier.as_str(),
        iat,
        exp,
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    let foreign;
    let key = match spec.breakage {
        Breakage::BadSignature => {
            let pair = rcgen::KeyPair::generate().context("generating a foreign signing key")?;
            foreign = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
            &foreign
        }
        _ => issuer_key,
    };
    let token = jsonwebtoken::encode(&header, &claims, key).context("signing the token")?;
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

    fn issuer() -> &'static Issuer {
        static ISSUER: std::sync::OnceLock<Issuer> = std::sync::OnceLock::new();
        ISSUER.get_or_init(|| Issuer::generate().unwrap())
    }

    fn mint(spec: &TokenSpec) -> Result<String> {
        issuer().mint(spec)
    }

    fn verify(token: &str) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(issuer().jwks()).unwrap();
        assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some(KEY_ID));
        let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[DEFAULT_ISSUER]);
        decode::<serde_json::Value>(token, &key, &v).map(|d| d.claims)
    }

    #[test]
    fn a_saved_key_mints_tokens_the_same_jwks_verifies() {
        let dir = tempfile::tempdir().unwrap();
        issuer().save(&dir.path().join("k.pem")).unwrap();
        let again = Issuer::load(&dir.path().join("k.pem")).unwrap();
        assert_eq!(again.jwks(), issuer().jwks());
        let other = Issuer::generate().unwrap();
        assert_ne!(other.jwks(), issuer().jwks());
        assert!(format!("{other:?}").find("PRIVATE").is_none());
    }

    #[test]
    fn valid_token_verifies_against_the_jwks() {
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
            issuer: Some("someone-else".into()),
            ..TokenSpec::new("acme", Tier::Free)
        };
        assert!(verify(&mint(&spec).unwrap()).is_err());
    }

    #[test]
    fn the_mesh_issuer_is_the_first_jwt_rule_issuer() {
        let mut m = crate::manifest::Manifests::default();
        assert_eq!(mesh_issuer(&m), DEFAULT_ISSUER);
        m.add_text(
            std::path::Path::new("ra.yaml"),
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: j, namespace: istio-system}\nspec:\n  jwtRules:\n  - issuer: testing@secure.istio.io\n",
        )
        .unwrap();
        assert_eq!(mesh_issuer(&m), "testing@secure.istio.io");
        let named = Issuer::generate().unwrap().named(mesh_issuer(&m));
        let token = named.mint(&TokenSpec::new("acme", Tier::Free)).unwrap();
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims["iss"], "testing@secure.istio.io");
    }

    #[test]
    fn tenant_must_be_a_simple_name() {
        assert!(mint(&TokenSpec::new("a b", Tier::Free)).is_err());
    }
}
