//! Derived rate limits: the ingress's per-tier token buckets as a table, and each tier's tenant
//! getting exactly its bucket before the first 429, as features/rate_limit.feature does for
//! PyAirtable. The steps know the tiers free, pro and enterprise; a bucket above 1000 requests
//! takes a long run and is tagged @slow.

use crate::declared::rate_limit::ingress_bucket;
use crate::declared::{human, routes};
use crate::model::MeshModel;

use super::{DEFAULT_PATH, Feature, header, table};

const TIERS: [&str; 3] = ["free", "pro", "enterprise"];

pub(super) fn rate_limits(model: &MeshModel, source: &str) -> Option<Feature> {
    let buckets: Vec<_> = TIERS
        .iter()
        .filter_map(|t| Some((*t, ingress_bucket(model, t)?)))
        .collect();
    // The tenants call the gateway's /health: it must be routed.
    let host = routes::ingress_host(model);
    if buckets.is_empty()
        || routes::gateway_route(model, &host, &routes::RouteRequest::get(DEFAULT_PATH)).is_none()
    {
        return None;
    }
    let mut text = header(
        "Per-tenant rate limits as the ingress EnvoyFilter declares them",
        "Each tier's token bucket, and a tenant of each tier getting exactly its bucket (plus what refills while it sends) before the first 429.",
        source,
    );
    text.push_str("\n  Scenario: Every tier's bucket is declared as derived\n    Then the ingress rate limit declares these buckets:\n");
    let rows = buckets
        .iter()
        .map(|(t, b)| {
            vec![
                t.to_string(),
                b.tokens_per_fill.to_string(),
                human(b.fill_interval),
            ]
        })
        .collect();
    text.push_str(&table(&["tier", "requests", "per"], rows));
    let mut scenarios = 1;
    for (tier, b) in &buckets {
        let slow = if b.max_tokens > 1000 { "  @slow\n" } else { "" };
        let tenant = format!("derived-{tier}");
        let article = if tier.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "An"
        } else {
            "A"
        };
        text.push_str(&format!(
            "\n{slow}  Scenario: {article} {tier}-tier tenant gets exactly its bucket before the first 429\n    Given the {tier} tier's declared bucket is {} requests, refilled {} per {}\n    And tenant {tenant} on the {tier} tier\n    When tenant {tenant} sends requests to {DEFAULT_PATH} through the ingress until it is limited\n    Then tenant {tenant} got exactly its tier's bucket before the first 429\n",
            b.max_tokens,
            b.tokens_per_fill,
            human(b.fill_interval),
        ));
        scenarios += 1;
    }
    Some(Feature {
        file: "rate_limits.feature".into(),
        text,
        scenarios,
    })
}
