//! `meshtest token`: mint a test JWT with the running mesh's issuer key.

use anyhow::Result;

use crate::error::exit;
use crate::token::{Breakage, Issuer, Tier, TokenSpec};

#[derive(clap::Args)]
pub struct TokenArgs {
    /// Tenant the token is for (claim `tenant`; the rate limit's key).
    #[arg(long)]
    tenant: String,
    /// Tier (claim `tier`): free, pro or enterprise.
    #[arg(long, value_enum)]
    tier: Tier,
    /// Already expired (the mesh must refuse it: 401 "Jwt is expired").
    #[arg(long)]
    expired: bool,
    /// Issuer claim [default: the mesh's, the first jwtRules issuer of its
    /// RequestAuthentications].
    #[arg(long)]
    issuer: Option<String>,
    /// Signed by a key the mesh does not trust.
    #[arg(long, conflicts_with = "tampered")]
    bad_signature: bool,
    /// Payload edited after signing (tier raised to enterprise).
    #[arg(long)]
    tampered: bool,
}

pub fn run(a: TokenArgs) -> Result<u8> {
    let breakage = if a.bad_signature {
        Breakage::BadSignature
    } else if a.tampered {
        Breakage::Tampered
    } else {
        Breakage::None
    };
    let spec = TokenSpec {
        tenant: a.tenant,
        tier: a.tier,
        issuer: a.issuer,
        expired: a.expired,
        breakage,
    };
    let token = running_issuer()?
        .mint(&spec)
        .map_err(|e| crate::error::InputError::new("--tenant", e.to_string()))?;
    println!("{token}");
    Ok(exit::OK)
}

/// The issuer of the mesh `meshtest up` runs (its key is in the mesh's private run directory,
/// its name in the mesh's RequestAuthentications).
pub fn running_issuer() -> Result<Issuer> {
    let state = super::mesh::read_running_state()?;
    let manifests = crate::manifest::Manifests::load_dir(&state.mesh_dir)?;
    Ok(Issuer::load(&state.issuer_key)?.named(crate::token::mesh_issuer(&manifests)))
}
