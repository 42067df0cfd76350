//! Local rate limits an EnvoyFilter declares for the ingress gateway: the token bucket each
//! descriptor gets (Envoy's local_ratelimit refills it continuously, at tokens_per_fill per
//! fill_interval, from full).

use std::time::Duration;

use serde_json::Value;

use crate::envoy::config_dump::parse_duration;
use crate::model::MeshModel;

use super::where_;

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
    pub at: String,
}

impl Bucket {
    /// Tokens refilled per second.
    pub fn rate(&self) -> f64 {
        self.tokens_per_fill as f64 / self.fill_interval.as_secs_f64()
    }

    /// The most requests a fresh bucket admits within `elapsed` of its first request: full,
    /// plus what refills in that time (one token of slack for where the clock edges fall).
    pub fn most_within(&self, elapsed: Duration) -> u64 {
        self.max_tokens + (elapsed.as_secs_f64() * self.rate()).floor() as u64 + 1
    }

    pub fn describe(&self) -> String {
        format!(
            "bucket of {} refilled {} per {} (declared at {})",
            self.max_tokens,
            self.tokens_per_fill,
            super::human(self.fill_interval),
            self.at
        )
    }
}

/// The bucket of the ingress gateway's local rate limit descriptor whose entries include the
/// value `value` (e.g. the tier "free"), if an EnvoyFilter declares one.
pub fn ingress_bucket(model: &MeshModel, value: &str) -> Option<Bucket> {
    let ingress = &model.ingress;
    for ef in &model.manifests.envoy_filters {
        let selector = ef.spec.workload_selector.as_ref().map(|s| &s.labels);
        if !ingress.selected_by(ef.namespace(), selector) {
            continue;
        }
        for patch in &ef.spec.config_patches {
            let config = &patch.patch.value["typed_config"];
            if patch.patch.value["name"] != "envoy.filters.http.local_ratelimit" {
                continue;
            }
            for d in config["descriptors"].as_array().into_iter().flatten() {
                let has = d["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["value"].as_str() == Some(value));
                if has && let Some(b) = bucket(&d["token_bucket"], &ef.origin) {
                    return Some(b);
                }
            }
        }
    }
    None
}

fn bucket(tb: &Value, origin: &crate::manifest::Origin) -> Option<Bucket> {
    let max_tokens = tb["max_tokens"].as_u64()?;
    Some(Bucket {
        max_tokens,
        tokens_per_fill: tb["tokens_per_fill"].as_u64().unwrap_or(1),
        fill_interval: tb["fill_interval"].as_str().and_then(parse_duration)?,
        at: where_(Some(origin)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::pyairtable_model;

    #[test]
    fn tiers_have_their_buckets() {
        let m = pyairtable_model();
        let free = ingress_bucket(&m, "free").unwrap();
        assert_eq!(free.max_tokens, 100);
        assert_eq!(free.fill_interval, Duration::from_secs(60));
        assert_eq!(free.most_within(Duration::from_secs(3)), 100 + 5 + 1);
        assert_eq!(ingress_bucket(&m, "pro").unwrap().max_tokens, 1000);
        assert!(ingress_bucket(&m, "platinum").is_none());
    }
}
