//! `meshtest load` and `meshtest report compare`: the load generator (crate meshtest-load),
//! with tenant tokens minted the way `meshtest token` mints them.

use anyhow::Result;
use meshtest_load::{CompareArgs, LoadArgs, LoadError};

use crate::error::{InputError, exit};
use crate::token::{Tier, TokenSpec};

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// Compare two load reports; exit 1 when CUR regressed (p99, error rate, throughput, or no
    /// successful response), 3 when BASE has no successful response to compare against.
    Compare(CompareArgs),
}

/// Input errors exit 2 (`InputError`); everything else, `LoadError::Unchecked` included, exits
/// 3 (could not check).
fn map_err(command: &'static str) -> impl Fn(LoadError) -> anyhow::Error {
    move |e| match e {
        LoadError::Input(msg) => InputError::new(command, msg).into(),
        other => anyhow::Error::new(other),
    }
}

pub async fn load(mut a: LoadArgs) -> Result<u8> {
    match (&a.tenant, &a.tier) {
        (Some(tenant), Some(tier)) => {
            let tier = Tier::parse(tier).ok_or_else(|| {
                InputError::new("--tier", format!("`{tier}` is not free, pro or enterprise"))
            })?;
            let token = super::token::running_issuer()?
                .mint(&TokenSpec::new(tenant, tier))
                .map_err(|e| InputError::new("--tenant", e.to_string()))?;
            a.headers.push(format!("authorization: Bearer {token}"));
        }
        (None, None) => {}
        _ => return Err(InputError::new("--tenant", "--tenant and --tier go together").into()),
    }
    // Exit 1 when a --threshold failed or was unchecked, or when no request got a response;
    // run_load has printed a `FAILED: ...` line saying which.
    let outcome = meshtest_load::run_load(a)
        .await
        .map_err(map_err("meshtest load"))?;
    Ok(if outcome.passed() {
        exit::OK
    } else {
        exit::FAILED
    })
}

pub fn report(cmd: ReportCommand) -> Result<u8> {
    match cmd {
        ReportCommand::Compare(args) => {
            let regressed =
                meshtest_load::run_compare(args).map_err(map_err("meshtest report compare"))?;
            Ok(if regressed { exit::FAILED } else { exit::OK })
        }
    }
}
