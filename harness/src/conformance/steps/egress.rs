//! Sidecar egress: a call to a service outside the caller's `Sidecar` egress hosts does not get
//! the mesh. REGISTRY_ONLY answers it with the caller's own 502; ALLOW_ANY lets it out as it
//! came, in plaintext, so a STRICT callee refuses it.

use cucumber::then;

use super::common::{callee_port, observed};
use crate::conformance::world::MeshWorld;
use crate::outcome::Outcome;
use crate::{broken, promise, unchecked};

#[then(
    "the caller's sidecar answers 502 itself, as REGISTRY_ONLY does for a host outside its egress"
)]
async fn blocked_by_caller(w: &mut MeshWorld) {
    let (desc, o) = observed(w);
    let Outcome::Response { status, body, .. } = o else {
        unchecked!("{desc}: {}; REGISTRY_ONLY answers 502", o.summary());
    };
    // A reply from an upstream carries Envoy's x-envoy-upstream-service-time; the block_all
    // route's direct response has neither an upstream nor a body.
    let upstream = o.header("x-envoy-upstream-service-time").is_some();
    promise!(
        *status == 502 && body.is_empty() && !upstream,
        "{desc}: expected the caller's sidecar to answer 502 itself (REGISTRY_ONLY), got {}{}",
        o.summary(),
        if upstream {
            " from an upstream: the caller's sidecar let the call through"
        } else {
            ""
        }
    );
    w.evidence(format!(
        "n=1: {desc}: 502 with no body and no upstream (the caller's own block_all answer)"
    ));
}

#[then(
    "the call leaves the caller's sidecar in plaintext, and the callee's STRICT mTLS refuses it"
)]
async fn passthrough_refused(w: &mut MeshWorld) {
    let (desc, _) = observed(w);
    let desc = desc.to_string();
    let Some(call) = w.last_call.clone() else {
        unchecked!("no call was made before this step");
    };
    let model = crate::declared::model(w.target.manifests());
    let Some((pods, port)) = callee_port(&model, &call.to) else {
        unchecked!("no pod or service {} in the mesh", call.to);
    };
    // A plaintext connection to a STRICT port matches none of its filter chains: Envoy counts
    // it, per listener, as the callee's proof that plaintext arrived (and that it is alive).
    let stat = format!(r"^listener\.[0-9a-f.:\[\]]+_{port}\.no_filter_chain_match$");
    let plaintext = || async {
        let mut sum = 0;
        for p in &pods {
            let body = crate::target::stats_matching(w.target.as_ref(), p, &stat)
                .await
                .unwrap_or_else(|e| unchecked!("reading {p}'s listener counters: {e:#}"));
            sum += crate::envoy::stats::sum_counters(&body);
        }
        sum
    };
    let before = plaintext().await;
    let o = w
        .target
        .call(&call)
        .await
        .unwrap_or_else(|e| unchecked!("repeating the call: {e:#}"));
    let after = plaintext().await;
    if let Outcome::Response { status, body, .. } = &o
        && *status != 503
    {
        broken!(
            "{desc}: expected the callee to refuse the caller's plaintext, but the call was answered {status} ({}): the caller's sidecar reached it over mTLS or the callee accepts plaintext",
            body.chars().take(80).collect::<String>()
        );
    }
    let reset = matches!(&o, Outcome::Response { status: 503, body, .. } if body.contains("reset before headers"));
    if !reset || after <= before {
        unchecked!(
            "{desc}: repeated, the call got {} and the callee's plaintext-refusal counter went {before} -> {after}: the refusal is not the callee's STRICT mTLS",
            o.summary()
        );
    }
    w.evidence(format!(
        "n=1: {desc}: {} (repeated), and {}'s listener on port {port} counted {} plaintext connection(s) matching no filter chain",
        o.summary(),
        pods.join(","),
        after - before
    ));
}
