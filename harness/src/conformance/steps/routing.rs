//! The seed's routing promises: timeouts, retries, and faults only for x-chaos-test traffic.

use cucumber::given;

use crate::conformance::world::MeshWorld;

#[given(regex = r"^the ingress route (\S+) times out after (\d+) ms for this test$")]
async fn lower_timeout(w: &mut MeshWorld, route: String, ms: u64) {
    let mut manifests = w.target.manifests();
    let mut found = false;
    for vs in &mut manifests.virtual_services {
        for http in
            vs.spec.http.iter_mut().filter(|h| {
                h.name.as_deref() == Some(route.as_str()) && !vs.spec.gateways.is_empty()
            })
        {
            http.timeout = Some(format!("{ms}ms"));
            found = true;
        }
    }
    assert!(
        found,
        "no gateway VirtualService has an http route named {route}"
    );
    w.manifests_changed = true;
    w.target
        .apply(manifests)
        .await
        .unwrap_or_else(|e| panic!("applying the shorter timeout: {e:#}"));
}

#[given(regex = r"^fault injection at the ingress is turned up to 100% for this test$")]
async fn faults_up(w: &mut MeshWorld) {
    // The declared 0.5% abort would need thousands of requests to see; the runtime override
    // changes only the percentage, not which requests the fault filter may touch.
    for (key, value) in [
        ("fault.http.abort.abort_percent", "100"),
        ("fault.http.delay.fixed_delay_percent", "0"),
    ] {
        w.runtime_overrides
            .push(("istio-ingressgateway".into(), key.into()));
        w.target
            .proxy_admin(
                "istio-ingressgateway",
                "POST",
                &format!("/runtime_modify?{key}={value}"),
            )
            .await
            .unwrap_or_else(|e| panic!("setting {key}: {e:#}"));
    }
}
