//! Per-tenant rate limits at the edge: a tenant is limited at its tier's rate, and only itself.

use cucumber::{given, then, when};

use crate::conformance::steps::common::tally;
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::outcome::Outcome;
use crate::target::{Call, From};
use crate::token::{Tier, TokenSpec, mint};

fn unique(tenant: &str) -> String {
    // Buckets live as long as the proxy: a fresh id per scenario keeps reruns independent.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{tenant}-{}-{nanos:x}", std::process::id())
}

fn tenant_call(w: &MeshWorld, tenant: &str, path: &str) -> Call {
    let (id, tier) = w.tenants.get(tenant).unwrap_or_else(|| {
        panic!("tenant {tenant} was not introduced with `Given tenant {tenant} on the ... tier`")
    });
    let token = mint(&TokenSpec::new(id, *tier)).expect("minting a token");
    let mut call = Call::new(From::Ingress { https: false }, "api-gateway", path)
        .header("authorization", &format!("Bearer {token}"));
    call.timeout = CALL_TIMEOUT;
    call
}

#[given(regex = r"^tenant (\S+) on the (free|pro|enterprise) tier$")]
async fn tenant_on_tier(w: &mut MeshWorld, tenant: String, tier: String) {
    let id = unique(&tenant);
    w.tenants.insert(
        tenant,
        (id, Tier::parse(&tier).expect("tier from the regex")),
    );
}

/// Sends requests until the first non-2xx (counting every 2xx), at most `2 * limit + 10`: a token-bucket refill in
/// the middle can at most double what a tenant gets, so this bound always reaches a 429.
#[when(
    regex = r"^tenant (\S+) sends requests to (\S+) through the ingress(?: with header (\S+): (\S+))? until it is limited, at most twice its limit of (\d+)$"
)]
async fn until_limited(
    w: &mut MeshWorld,
    tenant: String,
    path: String,
    header: String,
    value: String,
    limit: u64,
) {
    let mut call = tenant_call(w, &tenant, &path);
    if !header.is_empty() {
        call = call.header(&header, &value);
    }
    let mut allowed = 0;
    let mut rejection = None;
    // Concurrent batches; every 2xx counts, and the batch holding the first refusal is the last.
    // 10 at a time: scenarios run side by side, and together they must stay under the seed's
    // connection pool (50 connections + 50 pending) or the mesh rightly sheds them with 503s.
    while rejection.is_none() && allowed <= 2 * limit + 10 {
        for o in super::common::batch(w.target.clone(), 10, 10, call.clone()).await {
            match o.status() {
                Some(s) if (200..300).contains(&s) => allowed += 1,
                _ if rejection.is_none() => rejection = Some(o),
                _ => {}
            }
        }
    }
    w.rate_limited.insert(tenant, (allowed, rejection));
}

#[when(regex = r"^tenant (\S+) sends (\d+) requests to (\S+) through the ingress$")]
async fn sends_n(w: &mut MeshWorld, tenant: String, n: usize, path: String) {
    let call = tenant_call(w, &tenant, &path);
    w.batch = super::common::batch(w.target.clone(), n, 10, call).await;
}

#[then(regex = r"^tenant (\S+) got at least (\d+) requests through before it was limited$")]
async fn got_at_least(w: &mut MeshWorld, tenant: String, limit: u64) {
    let (allowed, rejection) = w
        .rate_limited
        .get(&tenant)
        .unwrap_or_else(|| panic!("tenant {tenant} sent nothing"));
    let rejection = rejection
        .as_ref()
        .map(Outcome::summary)
        .unwrap_or_else(|| "no rejection".into());
    assert!(
        *allowed >= limit && *allowed <= 2 * limit,
        "tenant {tenant}: {allowed} requests were allowed before {rejection}; its tier allows {limit} per minute (at most {} with one refill)",
        2 * limit
    );
}

#[then(regex = r#"^tenant (\S+) was refused with 429 "local_rate_limited" and the (\S+) header$"#)]
async fn refused_with_429(w: &mut MeshWorld, tenant: String, header: String) {
    let (allowed, rejection) = w
        .rate_limited
        .get(&tenant)
        .unwrap_or_else(|| panic!("tenant {tenant} sent nothing"));
    let Some(o) = rejection else {
        panic!("tenant {tenant} was never limited: {allowed} requests all succeeded");
    };
    assert!(
        o.status() == Some(429)
            && o.body() == Some("local_rate_limited")
            && o.header(&header).is_some(),
        "tenant {tenant}: after {allowed} allowed requests expected 429 \"local_rate_limited\" with {header}, got {} (headers {:?})",
        o.summary(),
        match o {
            Outcome::Response { headers, .. } =>
                headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            _ => vec![],
        }
    );
}

#[then(regex = r"^all of tenant (\S+)'s requests succeed$")]
async fn all_succeed(w: &mut MeshWorld, tenant: String) {
    let ok = w
        .batch
        .iter()
        .filter(|o| o.status().is_some_and(|s| (200..300).contains(&s)))
        .count();
    assert_eq!(ok, w.batch.len(), "tenant {tenant}: {}", tally(&w.batch));
}
