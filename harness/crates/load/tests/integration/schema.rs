//! A small JSON Schema checker for the keywords summary.schema.json uses.
//!
//! The `jsonschema` crate pulls in regex engines, IDNA and more; the committed
//! schema sticks to type/enum/required/properties/additionalProperties/items/
//! minimum/pattern(unchecked)/$ref, which this validates exactly.

use serde_json::Value;

pub fn validate(schema: &Value, doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, schema, doc, "$", &mut errors);
    errors
}

fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let path = r.strip_prefix("#/").expect("only local refs");
            path.split('/').fold(root, |v, k| &v[k])
        }
        None => s,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        other => panic!("schema uses unsupported type {other}"),
    }
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let s = resolve(root, schema);
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
            _ => panic!("bad type keyword"),
        };
        if !ok {
            errors.push(format!("{at}: expected type {t}, got {v}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errors.push(format!("{at}: {v} not in {e:?}"));
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && x < min
    {
        errors.push(format!("{at}: {x} < minimum {min}"));
    }
    if let Some(obj) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                errors.push(format!("{at}: missing required {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let path = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, val, &path, errors),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{path}: not allowed")),
                    Some(ap @ Value::Object(_)) => check(root, ap, val, &path, errors),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

#[test]
fn checker_rejects_bad_documents() {
    let schema: Value = serde_json::from_str(
        r#"{"type":"object","required":["a"],"additionalProperties":false,
            "properties":{"a":{"type":"integer","minimum":0},"b":{"type":["string","null"]}}}"#,
    )
    .unwrap();
    assert!(validate(&schema, &serde_json::json!({"a": 1, "b": null})).is_empty());
    assert_eq!(validate(&schema, &serde_json::json!({"b": "x"})).len(), 1);
    assert_eq!(validate(&schema, &serde_json::json!({"a": -1})).len(), 1);
    assert_eq!(validate(&schema, &serde_json::json!({"a": 1.5})).len(), 1);
    assert_eq!(
        validate(&schema, &serde_json::json!({"a": 1, "c": 2})).len(),
        1
    );
}
