//! Derived fault gating: each named gateway route that injects a delay and an abort only into
//! requests carrying a header is judged at its declared rates with the header, and shown to
//! touch no request without it, as features/fault_injection.feature does for PyAirtable.

use crate::declared::authorization::{Ask, Caller, decide};
use crate::declared::routes::{RouteRequest, gateway_route, gateway_virtual_services};
use crate::manifest::istio::StringMatch;
use crate::model::MeshModel;

use super::{DEFAULT_PATH, Feature, header, ingress_paths, route_path};

pub(super) fn faults(model: &MeshModel, source: &str) -> Option<Feature> {
    let ingress = ingress_paths(model)?;
    let mut text = String::new();
    let mut scenarios = 0;
    for vs in gateway_virtual_services(model) {
        for http in &vs.spec.http {
            let (Some(name), Some(fault)) = (&http.name, &http.fault) else {
                continue;
            };
            let (Some(delay), Some(abort)) = (&fault.delay, &fault.abort) else {
                continue;
            };
            // The gate: one exact header on the route's only match.
            let [m] = http.matches.as_slice() else {
                continue;
            };
            let headers: Vec<_> = m.headers.iter().collect();
            let [(gate, StringMatch::Exact(value))] = headers.as_slice() else {
                continue;
            };
            let Some(path) = route_path(m.uri.as_ref()) else {
                continue;
            };
            let path = if path == "/" {
                DEFAULT_PATH.to_string()
            } else {
                path
            };
            // The gated request must take this route, and RBAC (before the fault filter) must
            // let it through without a token.
            let gated = RouteRequest::get(&path).header(gate, value);
            let takes = gateway_route(model, &ingress.host, &gated)
                .is_some_and(|r| &r.name == name && r.fault.is_some());
            let ask = Ask {
                port: ingress.port,
                path: &path,
                method: "GET",
                tcp: false,
                host: &ingress.host,
            };
            let allowed = decide(
                &model.manifests,
                &model.ingress,
                &Caller { principal: None },
                &ask,
            )
            .allowed();
            if !takes || !allowed {
                continue;
            }
            let pct =
                |p: &Option<crate::manifest::istio::Percent>| p.as_ref().map_or(0.0, |p| p.value);
            text.push_str(&format!(
                "\n  @serial\n  Scenario: With {gate}: {value}, the route {name}'s declared delay and abort rates hold\n    Given the ingress route {name} declares a {} delay for {}% and a {} abort for {}% of requests\n    When enough requests are sent through the ingress to {path} with header {gate}: {value} to judge the declared fault rates\n    Then the delayed and aborted shares are consistent with the declared rates\n",
                delay.fixed_delay,
                pct(&delay.percentage),
                abort.http_status,
                pct(&abort.percentage),
            ));
            scenarios += 1;
            let ungated = gateway_route(model, &ingress.host, &RouteRequest::get(&path));
            if ungated.is_some_and(|r| r.fault.is_none()) {
                text.push_str(&format!(
                    "\n  @serial\n  Scenario: Without {gate}, no request to {path} is delayed or aborted\n    When enough requests are sent through the ingress to {path} without the header to see a fault that applied to them\n    Then no request was delayed or aborted by the fault filter\n"
                ));
                scenarios += 1;
            }
        }
    }
    if scenarios == 0 {
        return None;
    }
    let mut feature = header(
        "Fault injection only where the routes declare it",
        "Each gateway route that injects faults into requests carrying a header: the declared delay and abort rates hold with the header (an exact binomial test at a false-alarm rate of 0.001), and no request without it is touched.",
        source,
    );
    feature.push_str(&text);
    Some(Feature {
        file: "faults.feature".into(),
        text: feature,
        scenarios,
    })
}
