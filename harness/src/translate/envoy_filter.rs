//! EnvoyFilter -> patches to a proxy's HTTP filter chain. Only HTTP_FILTER patches anchored on
//! the http_connection_manager are supported; anything else is refused by field.

use serde_json::Value;

use crate::error::InputError;
use crate::manifest::Manifests;
use crate::model::Workload;

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// Which listener a filter chain belongs to, in EnvoyFilter's `match.context` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

impl Context {
    fn matches(self, context: Option<&str>) -> Option<bool> {
        Some(match context.unwrap_or("ANY") {
            "ANY" => true,
            "SIDECAR_INBOUND" => self == Context::SidecarInbound,
            "SIDECAR_OUTBOUND" => self == Context::SidecarOutbound,
            "GATEWAY" => self == Context::Gateway,
            _ => return None,
        })
    }
}

/// Applies every EnvoyFilter that selects `workload` to the HTTP filters of a `context` listener.
pub fn patch_http_filters(
    manifests: &Manifests,
    workload: &Workload,
    context: Context,
    filters: &mut Vec<Value>,
) -> Result<(), InputError> {
    for ef in &manifests.envoy_filters {
        let selector = ef.spec.workload_selector.as_ref().map(|s| &s.labels);
        // Validate every patch, even those that do not apply here: bad input is bad everywhere.
        for (i, patch) in ef.spec.config_patches.iter().enumerate() {
            let field = format!("spec.configPatches[{i}]");
            if patch.apply_to != "HTTP_FILTER" {
                return Err(ef.origin.error(
                    &format!("{field}.applyTo"),
                    format!("{} is not supported (only HTTP_FILTER)", patch.apply_to),
                ));
            }
            let applies_in_context = context
                .matches(patch.match_.context.as_deref())
                .ok_or_else(|| {
                    ef.origin.error(
                        &format!("{field}.match.context"),
                        format!("unknown context {:?}", patch.match_.context),
                    )
                })?;
            let filter = patch
                .match_
                .listener
                .as_ref()
                .and_then(|l| l.filter_chain.as_ref())
                .and_then(|c| c.filter.as_ref());
            let Some(filter) = filter.filter(|f| f.name == HCM) else {
                return Err(ef.origin.error(
                    &format!("{field}.match.listener.filterChain.filter.name"),
                    format!("must be {HCM}"),
                ));
            };
            if patch
                .match_
                .listener
                .as_ref()
                .and_then(|l| l.port_number)
                .is_some()
            {
                return Err(ef.origin.error(
                    &format!("{field}.match.listener.portNumber"),
                    "matching by port is not supported",
                ));
            }
            let sub = filter.sub_filter.as_ref().map(|s| s.name.as_str());
            if patch
                .patch
                .value
                .get("name")
                .and_then(Value::as_str)
                .is_none()
            {
                return Err(ef.origin.error(
                    &format!("{field}.patch.value.name"),
                    "the inserted filter needs a name",
                ));
            }
            let op = patch.patch.operation.as_str();
            if !matches!(op, "INSERT_BEFORE" | "INSERT_AFTER" | "INSERT_FIRST") {
                return Err(ef.origin.error(
                    &format!("{field}.patch.operation"),
                    format!("{op} is not supported (INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST)"),
                ));
            }
            if op != "INSERT_FIRST" && sub.is_none() {
                return Err(ef.origin.error(
                    &format!("{field}.match.listener.filterChain.filter.subFilter"),
                    format!("{op} needs a subFilter to anchor on"),
                ));
            }
            if !applies_in_context || !workload.selected_by(ef.namespace(), selector) {
                continue;
            }
            let position = |name: &str| filters.iter().position(|f| f["name"] == name);
            match (op, sub) {
                ("INSERT_FIRST", _) => filters.insert(0, patch.patch.value.clone()),
                (_, Some(anchor)) => {
                    // Istio skips a patch whose anchor is absent; so do we.
                    if let Some(at) = position(anchor) {
                        let at = if op == "INSERT_AFTER" { at + 1 } else { at };
                        filters.insert(at, patch.patch.value.clone());
                    }
                }
                _ => unreachable!("validated above"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn patch(yaml_patch: &str) -> Result<Vec<Value>, InputError> {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: rl, namespace: istio-system}}\nspec:\n  workloadSelector: {{labels: {{istio: ingressgateway}}}}\n  configPatches:\n{yaml_patch}"
        );
        let mut m = Manifests::default();
        m.add_text(Path::new("t.yaml"), &yaml)?;
        let mut filters = vec![
            json!({"name": "envoy.filters.http.rbac"}),
            json!({"name": "envoy.filters.http.router"}),
        ];
        let ingress = crate::model::Workload::ingress_gateway();
        patch_http_filters(&m, &ingress, Context::Gateway, &mut filters)?;
        Ok(filters)
    }

    #[test]
    fn inserts_before_the_router() {
        let f = patch("  - applyTo: HTTP_FILTER\n    match:\n      context: GATEWAY\n      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}\n    patch: {operation: INSERT_BEFORE, value: {name: envoy.filters.http.local_ratelimit}}\n").unwrap();
        let names: Vec<&str> = f.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.rbac",
                "envoy.filters.http.local_ratelimit",
                "envoy.filters.http.router"
            ]
        );
    }

    #[test]
    fn other_contexts_are_untouched() {
        let f = patch("  - applyTo: HTTP_FILTER\n    match:\n      context: SIDECAR_INBOUND\n      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}\n    patch: {operation: INSERT_BEFORE, value: {name: x}}\n").unwrap();
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn unsupported_apply_to_names_the_field() {
        let err = patch("  - applyTo: CLUSTER\n    match: {context: GATEWAY}\n    patch: {operation: MERGE, value: {}}\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.configPatches[0].applyTo"));
        assert_eq!(err.file, Path::new("t.yaml"));
    }
}
