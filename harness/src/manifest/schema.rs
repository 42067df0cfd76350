//! The CRD schemas the API server validates Istio and Gateway API resources with (compiled in
//! from harness/crds), applied to each manifest before it is translated, so a typo or a wrong
//! type is reported as `kubectl apply` would report it, with the file and line.
//!
//! The structural OpenAPI v3 subset Kubernetes uses is checked: types (and int-or-string),
//! properties and unknown fields (kubectl's strict field validation), required, enum,
//! string lengths and patterns, numeric bounds, item and property counts, and the
//! oneOf/anyOf/allOf/not combinations Istio uses for mutually exclusive fields. CEL rules
//! (`x-kubernetes-validations`) and `format` are not evaluated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use super::Origin;
use crate::error::InputError;

const ISTIO: &str = include_str!("../../crds/istio-crd-all.gen.yaml");
const GATEWAY_API: &str = include_str!("../../crds/gateway-api-crd.yaml");

/// The CRD file that defines `group`'s kinds, if meshtest carries it.
fn crd_file(group: &str) -> Option<&'static str> {
    let defines = |file: &str| file.contains(&format!("\n  group: {group}\n"));
    // install.istio.io (IstioOperator) is istioctl's input, not a CRD the cluster serves.
    [ISTIO, GATEWAY_API].into_iter().find(|f| defines(f))
}

type Key = (String, String, String);
type Cache = Mutex<HashMap<Key, Option<Arc<Value>>>>;

/// The `openAPIV3Schema` of `kind` in `group`/`version`, parsed once per run. None: the CRDs
/// define no such kind in that version.
fn schema_of(file: &str, group: &str, version: &str, kind: &str) -> Option<Arc<Value>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (group.to_string(), version.to_string(), kind.to_string());
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(hit) = cache.lock().ok()?.get(&key) {
        return hit.clone();
    }
    let found = find_schema(file, group, version, kind).map(Arc::new);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, found.clone());
    }
    found
}

fn find_schema(file: &str, group: &str, version: &str, kind: &str) -> Option<Value> {
    // Only the one CRD is parsed: the files hold dozens, a few megabytes in all.
    let (group_line, kind_line) = (
        format!("\n  group: {group}\n"),
        format!("\n    kind: {kind}\n"),
    );
    let doc = file
        .split("\n---\n")
        .find(|d| d.contains(&group_line) && d.contains(&kind_line))?;
    let crd: Value = serde_saphyr::from_str(doc).ok()?;
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
}

/// Validates one document of `kind` in `api_version` against its CRD, if meshtest carries the
/// CRDs of its group. The first violation is the error, at the document's line.
pub fn validate(
    origin: &Origin,
    api_version: &str,
    kind: &str,
    doc: &str,
) -> Result<(), InputError> {
    let Some((group, version)) = api_version.split_once('/') else {
        return Ok(());
    };
    let Some(file) = crd_file(group) else {
        return Ok(());
    };
    let Some(schema) = schema_of(file, group, version, kind) else {
        return Err(origin.error(
            "apiVersion",
            format!("no matches for kind \"{kind}\" in version \"{api_version}\": the cluster's CRDs define no such kind in that version"),
        ));
    };
    let value: Value = serde_saphyr::from_str(doc)
        .map_err(|e| origin.error("", format!("not a YAML document: {e}")))?;
    let mut errors = Vec::new();
    // metadata is the API server's own; status is the controller's.
    if let Some(spec_schema) = schema["properties"].get("spec") {
        check(spec_schema, &value["spec"], "spec", &mut errors);
    }
    match errors.into_iter().next() {
        None => Ok(()),
        Some(Violation { path, message }) => {
            let name = value["metadata"]["name"].as_str().unwrap_or("");
            let line = line_of(doc, &path).map_or(origin.line, |l| origin.line + l - 1);
            Err(origin
                .error(
                    &path,
                    format!("{kind}.{group} \"{name}\" is invalid: {path}: {message}"),
                )
                .at_line(line))
        }
    }
}

/// Indentation of a line, a list item's `- ` counted as indentation.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '-']).len()
}

/// Spaces before a line's first character.
fn leading(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Whether `line` writes `key:` (block style, or inside a flow mapping).
fn writes_key(line: &str, key: &str) -> bool {
    let body = line.trim_start_matches([' ', '-']);
    body.starts_with(&format!("{key}:"))
        || [
            format!("{{{key}:"),
            format!(", {key}:"),
            format!("{{ {key}:"),
        ]
        .iter()
        .any(|k| line.contains(k.as_str()))
}

/// The line (1-based, within the document) where `path` (`spec.http[0].route[0].weight`) is
/// written, found by following its keys in order and counting list items for its indexes.
/// None when the text is not laid out so simply (the document's line is used instead).
fn line_of(doc: &str, path: &str) -> Option<u64> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut at = 0usize;
    let mut floor = 0usize;
    for segment in path.split('.') {
        let (key, indexes) = segment.split_once('[').unwrap_or((segment, ""));
        at = (at..lines.len())
            .find(|&l| (l == at || indent(lines[l]) >= floor) && writes_key(lines[l], key))?;
        floor = indent(lines[at]);
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().ok()?;
            if lines[at].contains('[') {
                break; // a flow list on the key's own line
            }
            // The list's items: `- ` lines below the key, at the first item's indentation,
            // until the text returns to the key's level.
            let key_leading = leading(lines[at]);
            let block: Vec<usize> = (at + 1..lines.len())
                .take_while(|&l| {
                    let s = lines[l];
                    s.trim().is_empty()
                        || leading(s) > key_leading
                        || (leading(s) == key_leading && s.trim_start().starts_with("- "))
                })
                .filter(|&l| lines[l].trim_start().starts_with("- "))
                .collect();
            let item_leading = block.first().map(|&l| leading(lines[l]))?;
            at = *block
                .iter()
                .filter(|&&l| leading(lines[l]) == item_leading)
                .nth(i)?;
            floor = item_leading;
        }
    }
    Some(at as u64 + 1)
}

struct Violation {
    path: String,
    message: String,
}

fn violation(out: &mut Vec<Violation>, path: &str, message: String) {
    out.push(Violation {
        path: path.to_string(),
        message,
    });
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..57])
    } else {
        s
    }
}

/// Whether `v` satisfies `schema` (for oneOf/anyOf/not).
fn passes(schema: &Value, v: &Value, path: &str) -> bool {
    let mut errors = Vec::new();
    check(schema, v, path, &mut errors);
    errors.is_empty()
}

/// Checks `v` at `path` against `schema`, appending what is wrong to `out`.
fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<Violation>) {
    // An absent or null value is pruned by the API server, not rejected.
    if v.is_null() {
        return;
    }
    if !check_type(schema, v, path, out) {
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
        violation(
            out,
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                short(v),
                names.join(", ")
            ),
        );
    }
    check_combinations(schema, v, path, out);
    match v {
        Value::Object(map) => check_object(schema, map, path, out),
        Value::Array(items) => {
            check_count(schema, items.len(), "Items", path, out);
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(item, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::String(s) => check_string(schema, s, path, out),
        Value::Number(n) => check_bounds(schema, n.as_f64().unwrap_or(0.0), path, out),
        _ => {}
    }
}

/// The value's JSON type against the schema's `type`; false stops the checks below it.
fn check_type(schema: &Value, v: &Value, path: &str, out: &mut Vec<Violation>) -> bool {
    if schema["x-kubernetes-int-or-string"] == true {
        if v.is_string() || v.is_i64() || v.is_u64() {
            return true;
        }
        violation(
            out,
            path,
            format!(
                "Invalid value: {}: must be an integer or a string",
                short(v)
            ),
        );
        return false;
    }
    let Some(want) = schema["type"].as_str() else {
        return true;
    };
    let ok = match want {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        violation(
            out,
            path,
            format!(
                "Invalid value: {}: {path} in body must be of type {want}",
                short(v)
            ),
        );
    }
    ok
}

fn check_combinations(schema: &Value, v: &Value, path: &str, out: &mut Vec<Violation>) {
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(s, v, path, out);
        }
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(|s| passes(s, v, path))
    {
        violation(
            out,
            path,
            format!(
                "Invalid value: {}: must validate at least one schema (anyOf)",
                short(v)
            ),
        );
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let n = one.iter().filter(|s| passes(s, v, path)).count();
        if n != 1 {
            violation(
                out,
                path,
                format!(
                    "Invalid value: {}: must validate one and only one schema (oneOf); it validates {n}",
                    short(v)
                ),
            );
        }
    }
    if let Some(not) = schema.get("not")
        && passes(not, v, path)
    {
        violation(
            out,
            path,
            format!(
                "Invalid value: {}: must not validate the schema (not)",
                short(v)
            ),
        );
    }
}

fn check_object(
    schema: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    out: &mut Vec<Violation>,
) {
    check_count(schema, map.len(), "Properties", path, out);
    if let Some(required) = schema["required"].as_array() {
        for r in required.iter().filter_map(Value::as_str) {
            if map.get(r).is_none_or(Value::is_null) {
                violation(out, &format!("{path}.{r}"), "Required value".into());
            }
        }
    }
    let properties = schema["properties"].as_object();
    let additional = schema.get("additionalProperties");
    let open = schema["x-kubernetes-preserve-unknown-fields"] == true;
    for (k, x) in map {
        let at = format!("{path}.{k}");
        match (properties.and_then(|p| p.get(k)), additional) {
            (Some(s), _) => check(s, x, &at, out),
            (None, Some(Value::Bool(true))) => {}
            (None, Some(s)) if s.is_object() => check(s, x, &at, out),
            // A schema that declares neither keeps whatever it holds only if told to.
            (None, _) if open || (properties.is_none() && additional.is_none()) => {}
            (None, _) => violation(out, &at, format!("unknown field \"{at}\"")),
        }
    }
}

fn check_count(schema: &Value, n: usize, what: &str, path: &str, out: &mut Vec<Violation>) {
    let n = n as u64;
    if let Some(min) = schema[format!("min{what}")].as_u64()
        && n < min
    {
        violation(
            out,
            path,
            format!(
                "Invalid value: {n}: must have at least {min} {}",
                what.to_lowercase()
            ),
        );
    }
    if let Some(max) = schema[format!("max{what}")].as_u64()
        && n > max
    {
        violation(
            out,
            path,
            format!(
                "Too many: {n}: must have at most {max} {}",
                what.to_lowercase()
            ),
        );
    }
}

fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<Violation>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        violation(
            out,
            path,
            format!("Invalid value: {s:?}: must be at least {min} characters"),
        );
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        violation(
            out,
            path,
            format!("Too long: may not be more than {max} characters"),
        );
    }
    if let Some(p) = schema["pattern"].as_str()
        && let Some(re) = pattern(p)
        && !re.is_match(s)
    {
        violation(
            out,
            path,
            format!("Invalid value: {s:?}: {path} in body should match '{p}'"),
        );
    }
}

/// A schema's pattern compiled once (None: a pattern the regex engine cannot run, skipped).
fn pattern(p: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().ok()?;
    c.entry(p.to_string())
        .or_insert_with(|| regex::Regex::new(p).ok())
        .clone()
}

fn check_bounds(schema: &Value, n: f64, path: &str, out: &mut Vec<Violation>) {
    if let Some(min) = schema["minimum"].as_f64() {
        let exclusive = schema["exclusiveMinimum"] == true;
        if n < min || (exclusive && n == min) {
            violation(
                out,
                path,
                format!(
                    "Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                ),
            );
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        let exclusive = schema["exclusiveMaximum"] == true;
        if n > max || (exclusive && n == max) {
            violation(
                out,
                path,
                format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            file: "t.yaml".into(),
            line: 3,
        }
    }

    fn check_doc(doc: &str) -> Result<(), InputError> {
        let api = doc
            .lines()
            .find_map(|l| l.strip_prefix("apiVersion: "))
            .unwrap();
        let kind = doc.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap();
        validate(&origin(), api, kind, doc)
    }

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 90\n";

    #[test]
    fn a_violation_is_reported_at_its_own_line() {
        let doc = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http:\n  - match:\n    - uri: {prefix: /a}\n    route:\n    - destination: {host: a}\n  - route:\n    - destination:\n        host: b\n      weight: 90\n";
        assert_eq!(line_of(doc, "spec.http[1].route[0].weight"), Some(14));
        assert_eq!(
            line_of(doc, "spec.http[0].route[0].destination.host"),
            Some(10)
        );
        assert_eq!(line_of(doc, "spec.hosts"), Some(5));
        assert_eq!(line_of(doc, "spec.nothing"), None);
    }

    #[test]
    fn a_valid_virtual_service_passes() {
        check_doc(VS).unwrap();
    }

    #[test]
    fn wrong_types_unknown_fields_and_enums_are_refused_as_the_api_server_would() {
        let e = check_doc(&VS.replace("weight: 90", "weight: ninety")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.http[0].route[0].weight"));
        assert!(e.message.contains("must be of type integer"), "{e}");
        assert_eq!(e.line, Some(3 + 8), "the weight's own line");
        let e = check_doc(&VS.replace("weight: 90", "wieght: 90")).unwrap_err();
        assert!(
            e.message
                .contains("unknown field \"spec.http[0].route[0].wieght\""),
            "{e}"
        );
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRIKT}\n";
        let e = check_doc(pa).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.mtls.mode"));
        assert!(e.message.contains("Unsupported value: \"STRIKT\""), "{e}");
    }

    #[test]
    fn required_fields_and_bounds_are_checked() {
        let e = check_doc(&VS.replace(
            "destination: {host: a}",
            "destination: {port: {number: 80}}",
        ))
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.http[0].route[0].destination.host")
        );
        assert!(e.message.contains("Required value"), "{e}");
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      warmup: {duration: 10s, minimumPercent: 150}\n";
        let e = check_doc(dr).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.trafficPolicy.loadBalancer.warmup.minimumPercent")
        );
        assert!(e.message.contains("less than or equal to 100"), "{e}");
    }

    #[test]
    fn an_unknown_kind_or_version_is_refused_and_other_groups_are_left_alone() {
        let e =
            check_doc(&VS.replace("networking.istio.io/v1", "networking.istio.io/v9")).unwrap_err();
        assert!(e.message.contains("no matches for kind"), "{e}");
        check_doc(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {nonsense: 1}\n",
        )
        .unwrap();
        let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: h}\nspec:\n  parentRefs: [{name: g}]\n  rules:\n  - backendRefs: [{name: s, port: 80, weight: -1}]\n";
        let e = check_doc(gw).unwrap_err();
        assert!(e.field.as_deref().unwrap().ends_with("weight"), "{e}");
    }
}
