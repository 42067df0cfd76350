//! No manifest makes meshtest panic: arbitrary text, real manifests with a line replaced by
//! random text, and every numeric and duration field given arbitrary values are loaded, modelled
//! and translated into an `Ok` or an `InputError` naming the file, never a panic.

use std::path::{Path, PathBuf};

use meshtest::manifest::Manifests;
use meshtest::model::MeshModel;
use proptest::prelude::*;

fn mesh_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh/pyairtable")
}

/// The PyAirtable manifests as (file name, text).
fn files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(mesh_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Loads, models and translates; every error must be an input error naming a file.
fn load_all(files: &[(String, String)]) {
    let mut m = Manifests::default();
    for (name, text) in files {
        if let Err(e) = m.add_text(Path::new(name), text) {
            assert!(!e.file.as_os_str().is_empty(), "{e}");
            return;
        }
    }
    match MeshModel::build(m) {
        // Translation is quadratic in pods (every sidecar lists every endpoint): a value that
        // made hundreds of replicas is already proven harmless by building its model.
        Ok(model) if model.pods.len() <= 40 => {
            let _ = meshtest::translate::proxy::check(&model);
        }
        Ok(_) => {}
        Err(e) => assert!(!e.file.as_os_str().is_empty(), "{e}"),
    }
}

/// Values for numeric and duration fields: huge, negative, fractional, unit-less, garbage.
fn wild_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        "[0-9]{1,25}(\\.[0-9]{1,6})?(h|m|s|ms|us|µs|d|)",
        "-?[0-9]{0,5}\\.?[0-9]{0,5}[a-z]{0,3}",
        "\"[ -~]{0,12}\"",
        Just("99999999999999999999h".to_string()),
        Just("1e300".to_string()),
        Just("NaN".to_string()),
    ]
}

/// Every `key: value` line whose value is a number or a duration, as (file, line index, key).
fn numeric_lines(files: &[(String, String)]) -> Vec<(usize, usize, String)> {
    let re = regex::Regex::new(
        r"^(\s*-?\s*)([A-Za-z0-9_]+): (-?[0-9][0-9.]*[a-z]*|\x22[0-9][^\x22]*\x22)$",
    )
    .unwrap();
    let mut out = Vec::new();
    for (f, (_, text)) in files.iter().enumerate() {
        for (i, line) in text.lines().enumerate() {
            if let Some(c) = re.captures(line) {
                out.push((f, i, format!("{}{}", &c[1], &c[2])));
            }
        }
    }
    out
}

fn with_line(files: &[(String, String)], f: usize, i: usize, line: &str) -> Vec<(String, String)> {
    let mut out = files.to_vec();
    let text: Vec<&str> = files[f].1.lines().collect();
    let mut edited: Vec<String> = text.iter().map(|l| l.to_string()).collect();
    edited[i] = line.to_string();
    out[f].1 = edited.join("\n") + "\n";
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(25_000))]

    #[test]
    fn arbitrary_text_is_an_error_or_a_manifest(text in "(?s).{0,300}") {
        let mut m = Manifests::default();
        let _ = m.add_text(Path::new("any.yaml"), &text);
    }

    #[test]
    fn yaml_shaped_text_is_an_error_or_a_manifest(
        kind in prop::sample::select(vec!["Service", "Deployment", "DestinationRule", "VirtualService", "PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication", "Gateway", "EnvoyFilter", "ConfigMap"]),
        body in "([a-zA-Z]{1,10}: ([-0-9a-z\\[\\]{}\"*/.]{0,12})\n(  ){0,3}){0,8}",
    ) {
        let text = format!("apiVersion: networking.istio.io/v1beta1\nkind: {kind}\nmetadata:\n  name: x\n  namespace: ns\nspec:\n  {body}\n");
        let mut m = Manifests::default();
        let _ = m.add_text(Path::new("shaped.yaml"), &text);
    }
}

proptest! {
    // Each case models and translates the whole mesh: fewer, heavier cases.
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_value_in_any_numeric_field_never_panics(pick in any::<prop::sample::Index>(), value in wild_value()) {
        let files = files();
        let lines = numeric_lines(&files);
        let (f, i, key) = &lines[pick.index(lines.len())];
        load_all(&with_line(&files, *f, *i, &format!("{key}: {value}")));
    }

    #[test]
    fn any_line_replaced_by_noise_never_panics(file in any::<prop::sample::Index>(), line in any::<prop::sample::Index>(), noise in "[ -~]{0,40}") {
        let files = files();
        let f = file.index(files.len());
        let n = files[f].1.lines().count();
        load_all(&with_line(&files, f, line.index(n), &noise));
    }
}
