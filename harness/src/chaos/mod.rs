//! Chaos: profiles of faults run against a live mesh under load, each fault journaled before it
//! is applied, verified in the data plane, reverted whatever ends the run, and judged against
//! the steady state and what the profile expects (HOLDS / BROKEN / UNCHECKED, or ABORTED and
//! REVERT_FAILED).

pub mod alerts;
pub mod expect;
mod guard;
pub mod journal;
pub mod judge;
pub mod ledger;
pub mod live;
mod method;
pub mod observe;
mod phases;
pub mod plan;
pub mod profile;
pub mod report;
pub mod revert;
pub mod run;
pub mod timeline;
pub mod traffic;
pub mod validate;
