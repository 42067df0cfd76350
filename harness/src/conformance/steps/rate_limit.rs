//! Per-tenant rate limits at the edge: exactly a tier's declared bucket passes before the first
//! 429 (plus what refilled meanwhile, computed), and tenants never share a bucket.

use std::time::{Duration, Instant};

use cucumber::{given, then, when};

use crate::conformance::steps::common::{batch, judge_every, paced, table, unreachable};
use crate::conformance::steps::jwt::token;
use crate::conformance::world::{CALL_TIMEOUT, MeshWorld, RateLimited};
use crate::declared::rate_limit::{Bucket, ingress_bucket};
use crate::outcome::Outcome;
use crate::target::{Call, From};
use crate::token::{Tier, TokenSpec};
use crate::{promise, unchecked};

/// Requests sent at once while draining a bucket (the suite shares the seed's pool).
const CONCURRENCY: usize = 10;
/// No tenant drains its bucket for longer than this.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

fn unique(tenant: &str) -> String {
    // Buckets live as long as the proxy: a fresh id per scenario keeps reruns independent.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{tenant}-{}-{nanos:x}", std::process::id())
}

fn tenant(w: &MeshWorld, name: &str) -> (String, Tier) {
    w.tenants.get(name).cloned().unwrap_or_else(|| {
        unchecked!("tenant {name} was not introduced with `Given tenant {name} on the ... tier`")
    })
}

async fn tenant_call(w: &MeshWorld, name: &str, path: &str) -> Call {
    let (id, tier) = tenant(w, name);
    let token = token(w, &TokenSpec::new(&id, tier)).await;
    let mut call = Call::new(From::Ingress { https: false }, crate::target::INGRESS, path)
        .header("authorization", &format!("Bearer {token}"));
    call.timeout = CALL_TIMEOUT;
    call
}

fn bucket_of(w: &MeshWorld, tier: Tier) -> Bucket {
    let model = crate::declared::model(w.target.manifests());
    ingress_bucket(&model, tier.as_str()).unwrap_or_else(|| {
        crate::broken!(
            "no EnvoyFilter declares a local rate limit bucket for the {} tier at the ingress gateway",
            tier.as_str()
        )
    })
}

#[given(
    regex = r"^the (free|pro|enterprise) tier's declared bucket is (\d+) requests, refilled (\d+) per (\S+)$"
)]
async fn declared_bucket(
    w: &mut MeshWorld,
    tier: String,
    max: u64,
    per_fill: u64,
    interval: String,
) {
    let bucket = bucket_of(w, Tier::parse(&tier).expect("tier from the regex"));
    let interval = crate::translate::duration::parse(&interval)
        .unwrap_or_else(|| unchecked!("`{interval}` is not a duration"));
    promise!(
        bucket.max_tokens == max
            && bucket.tokens_per_fill == per_fill
            && bucket.fill_interval == interval,
        "the promise is a {tier} bucket of {max} refilled {per_fill} per {}; the mesh declares a {}",
        crate::declared::human(interval),
        bucket.describe()
    );
    w.evidence(format!("{tier} tier: {}", bucket.describe()));
}

#[then("the ingress rate limit declares these buckets:")]
async fn declared_buckets(w: &mut MeshWorld, step: &cucumber::gherkin::Step) {
    let (_, rows) = table(step, "| tier | requests | per |");
    let model = crate::declared::model(w.target.manifests());
    let mut lines = Vec::new();
    for row in rows {
        let [tier, requests, per] = &row[..] else {
            unchecked!("each row needs a tier, a number of requests and an interval");
        };
        let Some(b) = ingress_bucket(&model, tier) else {
            crate::broken!("no local rate limit bucket is declared for the {tier} tier");
        };
        let interval = crate::translate::duration::parse(per)
            .unwrap_or_else(|| unchecked!("`{per}` is not a duration"));
        promise!(
            b.max_tokens.to_string() == *requests
                && b.tokens_per_fill.to_string() == *requests
                && b.fill_interval == interval,
            "the promise is {requests} requests per {per} for the {tier} tier; the mesh declares a {}",
            b.describe()
        );
        lines.push(format!("{tier}: {}", b.describe()));
    }
    w.evidence(lines.join("; "));
}

#[given(regex = r"^tenant (\S+) on the (free|pro|enterprise) tier$")]
async fn tenant_on_tier(w: &mut MeshWorld, tenant: String, tier: String) {
    let id = unique(&tenant);
    w.tenants.insert(
        tenant,
        (id, Tier::parse(&tier).expect("tier from the regex")),
    );
}

/// Sends requests in batches until the first non-2xx, counting every 2xx; stops past what the
/// declared bucket could ever allow (plus a margin), so a missing limit ends too.
#[when(
    regex = r"^tenant (\S+) sends requests to (\S+) through the ingress(?: with header (\S+): (\S+))? until it is limited$"
)]
async fn until_limited(
    w: &mut MeshWorld,
    name: String,
    path: String,
    header: String,
    value: String,
) {
    let (_, tier) = tenant(w, &name);
    let bucket = bucket_of(w, tier);
    let mut call = tenant_call(w, &name, &path).await;
    if !header.is_empty() {
        call = call.header(&header, &value);
    }
    let started = Instant::now();
    let (mut allowed, mut sent) = (0u64, 0u64);
    let mut rejection = None;
    while rejection.is_none()
        && allowed <= bucket.most_within(started.elapsed()) + CONCURRENCY as u64
        && started.elapsed() < DRAIN_DEADLINE
    {
        for o in batch(w.target.clone(), CONCURRENCY, CONCURRENCY, call.clone())
            .await
            .outcomes
        {
            sent += 1;
            if let Some(why) = unreachable(&o) {
                unchecked!("tenant {name}: {why}");
            }
            match o.status() {
                Some(s) if (200..300).contains(&s) => allowed += 1,
                _ if rejection.is_none() => rejection = Some(o),
                _ => {}
            }
        }
    }
    w.marks.insert("traffic".into(), Instant::now());
    w.rate_limited.insert(
        name,
        RateLimited {
            allowed,
            sent,
            elapsed: started.elapsed(),
            rejection,
        },
    );
}

fn drained<'a>(w: &'a MeshWorld, name: &str) -> &'a RateLimited {
    match w.rate_limited.get(name) {
        Some(r) if r.sent > 0 => r,
        _ => unchecked!("tenant {name} sent no requests"),
    }
}

#[when(
    regex = r"^tenant (\S+) sends (\d+) requests to (\S+) through the ingress, one every (\d+) ms$"
)]
async fn sends_paced(w: &mut MeshWorld, name: String, n: usize, path: String, every_ms: u64) {
    let call = tenant_call(w, &name, &path).await;
    let every = Duration::from_millis(every_ms);
    w.batch = Some(paced(w.target.clone(), n, every, call).await);
    w.marks.insert("traffic".into(), Instant::now());
}

#[when(regex = r"^tenant (\S+) sends (\d+) requests to (\S+) through the ingress$")]
async fn sends_n(w: &mut MeshWorld, name: String, n: usize, path: String) {
    let call = tenant_call(w, &name, &path).await;
    w.batch = Some(batch(w.target.clone(), n, CONCURRENCY, call).await);
}

#[then(regex = r"^tenant (\S+) got exactly its tier's bucket before the first 429$")]
async fn exactly_the_bucket(w: &mut MeshWorld, name: String) {
    let (_, tier) = tenant(w, &name);
    let bucket = bucket_of(w, tier);
    let r = drained(w, &name);
    let most = bucket.most_within(r.elapsed);
    let why = r
        .rejection
        .as_ref()
        .map(Outcome::summary)
        .unwrap_or_else(|| "no refusal".into());
    promise!(
        r.allowed >= bucket.max_tokens && r.allowed <= most,
        "tenant {name} ({} tier) got {} requests through before {why}; its {} allows {} to {most} within the {:.2} s it took",
        tier.as_str(),
        r.allowed,
        bucket.describe(),
        bucket.max_tokens,
        r.elapsed.as_secs_f64()
    );
    let line = format!(
        "n={}: tenant {name} got {} through in {:.2} s, then {why}; declared {} -> between {} and {most}",
        r.sent,
        r.allowed,
        r.elapsed.as_secs_f64(),
        bucket.describe(),
        bucket.max_tokens
    );
    w.evidence(line);
}

#[then(regex = r#"^tenant (\S+) was refused with 429 "local_rate_limited" and the (\S+) header$"#)]
async fn refused_with_429(w: &mut MeshWorld, name: String, header: String) {
    let r = drained(w, &name);
    let Some(o) = &r.rejection else {
        crate::broken!(
            "tenant {name} was never limited: {} requests all succeeded",
            r.allowed
        );
    };
    promise!(
        o.status() == Some(429)
            && o.body() == Some("local_rate_limited")
            && o.header(&header).is_some(),
        "tenant {name}: after {} allowed requests expected 429 \"local_rate_limited\" with {header}, got {} (headers {:?})",
        r.allowed,
        o.summary(),
        match o {
            Outcome::Response { headers, .. } =>
                headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            _ => vec![],
        }
    );
    let line = format!("n=1: tenant {name} refused with 429 local_rate_limited and {header}");
    w.evidence(line);
}

#[then(regex = r"^all of tenant (\S+)'s requests succeed$")]
async fn all_succeed(w: &mut MeshWorld, name: String) {
    let line = judge_every(
        w.batch(),
        &format!("tenant {name}'s request succeeds"),
        |o| o.status().is_some_and(|s| (200..300).contains(&s)),
    );
    w.evidence(line);
}
