//! Derived circuit breakers: every DestinationRule's traffic policy as a table, and, from a
//! caller the policies allow, each connection pool filled to exactly its declared limits and each
//! gateway-error ejection threshold checked on both sides, as features/circuit_breaker.feature
//! does for PyAirtable.

use crate::declared::authorization::{Ask, Caller, decide};
use crate::declared::traffic::{self, TABLE_COLUMNS};
use crate::model::{MeshModel, Pod, Service, Workload};
use crate::translate::destination_rule::rule_for;
use crate::translate::sidecar_scope::SidecarScope;

use super::{DEFAULT_PATH, Feature, header, table};

pub(super) fn circuit_breakers(model: &MeshModel, source: &str) -> Option<Feature> {
    let mut rows = Vec::new();
    let mut scenarios = String::new();
    let mut count = 0;
    for service in &model.services {
        let Ok(Some(rule)) = rule_for(model, service) else {
            continue;
        };
        // One row per service: a subset with its own policy would need a row of its own.
        let (top, _) = traffic::policy(model, service, None);
        let row = traffic::table_row(top.as_ref());
        let subsets_agree = rule.spec.subsets.iter().all(|s| {
            traffic::table_row(traffic::policy(model, service, Some(&s.name)).0.as_ref()) == row
        });
        if subsets_agree {
            let mut cells = vec![service.name.clone()];
            cells.extend(row);
            rows.push(cells);
        }
        let Some(caller) = allowed_caller(model, service) else {
            continue;
        };
        if let Some(s) = pool_scenario(model, service, caller) {
            scenarios.push_str(&s);
            count += 1;
        }
        if let Some(s) = ejection_scenario(model, service, caller) {
            scenarios.push_str(&s);
            count += 1;
        }
    }
    if rows.is_empty() && count == 0 {
        return None;
    }
    let mut text = header(
        "Circuit breakers as the DestinationRules declare them",
        "Each DestinationRule's connection pool and outlier detection, checked at the declared values in the caller's own Envoy, from a caller the policies allow.",
        source,
    );
    if !rows.is_empty() {
        text.push_str("\n  Scenario: Every DestinationRule declares these traffic policies\n    Then the DestinationRules declare these traffic policies:\n");
        let mut headers = vec!["service"];
        headers.extend(TABLE_COLUMNS);
        text.push_str(&table(&headers, rows));
        count += 1;
    }
    text.push_str(&scenarios);
    Some(Feature {
        file: "circuit_breakers.feature".into(),
        text,
        scenarios: count,
    })
}

/// A pod of another service whose identity the policies let call `service` at /health on its
/// first port, and whose proxy is programmed for it.
fn allowed_caller<'a>(model: &'a MeshModel, service: &Service) -> Option<&'a Pod> {
    let port = service.default_port();
    let callee = Workload::of(model.pods_of(service).next()?);
    if !port.protocol.is_http() {
        return None;
    }
    let host = format!("{}:{}", service.name, port.port);
    model.pods.iter().find(|p| {
        let ask = Ask {
            port: port.target_port,
            path: DEFAULT_PATH,
            method: "GET",
            tcp: false,
            host: &host,
        };
        p.service != service.name
            && SidecarScope::of(model, &Workload::of(p)).is_ok_and(|s| s.sees(service, port.port))
            && decide(
                &model.manifests,
                &callee,
                &Caller::workload(&p.namespace, &p.service_account),
                &ask,
            )
            .allowed()
    })
}

fn pool_scenario(model: &MeshModel, service: &Service, caller: &Pod) -> Option<String> {
    let pool = traffic::pool(model, service).value;
    let (c, p) = (pool.max_connections?, pool.http1_max_pending_requests?);
    let (svc, from) = (&service.name, &caller.name);
    Some(format!(
        "\n  @serial\n  Scenario: {svc}'s connection pool takes exactly its declared connections and pending requests, and sheds the next\n    Given {svc}'s DestinationRule allows {c} connections and {p} pending requests\n    And every {svc} replica holds every request until released\n    When {from} fills {svc}'s connection pool one request at a time\n    Then exactly {svc}'s declared connections are active on {from} and its declared pending requests wait\n    And one more request from {from} to {svc} is shed with 503 and x-envoy-overloaded\n    And once {svc} is released every held request is answered 200\n"
    ))
}

/// Only where the gateway-error threshold is what ejects (a lower consecutive-5xx threshold
/// would eject first) and at least one of the replicas may be ejected.
fn ejection_scenario(model: &MeshModel, service: &Service, caller: &Pod) -> Option<String> {
    let o = traffic::outlier(model, service).value?;
    let n = o.consecutive_gateway_errors?;
    let replicas: Vec<&Pod> = model.pods_of(service).collect();
    if o.consecutive_5xx_errors.is_some_and(|x| x < n)
        || replicas.len() < 2
        || o.max_ejected(replicas.len() as u32) == 0
    {
        return None;
    }
    let (svc, from, pod) = (&service.name, &caller.name, &replicas[0].name);
    Some(format!(
        "\n  @serial\n  Scenario: A replica of {svc} is ejected at exactly its declared {n} consecutive gateway errors\n    Given {svc}'s DestinationRule ejects a replica after {n} consecutive gateway errors\n    And {pod} answers every request with status 503\n    When {from} sends requests to {svc} until {pod} has failed one time fewer than the ejection threshold\n    Then Envoy on {from} has not ejected {pod} from {svc}\n    When {from} sends requests to {svc} until {pod} has failed as often as the ejection threshold\n    Then Envoy on {from} has ejected {pod} from {svc}\n"
    ))
}
