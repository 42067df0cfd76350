//! Which cluster a kube run may touch. The kubeconfig's current context (or `--context`) is
//! refused unless it is a kind cluster (`kind-*`) or the user named it a second time with
//! `--allow-context` (or `MESHTEST_ALLOW_CONTEXT`), so nobody runs chaos on production by
//! accident. Every refusal is bad input (exit 2), before anything connects.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InputError;

/// The flags a kube run takes, as given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeFlags {
    /// Kubeconfig context to use (default: the kubeconfig's current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Allow this non-kind context (name it exactly; kind-* contexts need no allowing).
    #[arg(long, env = "MESHTEST_ALLOW_CONTEXT")]
    pub allow_context: Option<String>,
}

/// The cluster a run was allowed to use.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterChoice {
    pub kubeconfig: PathBuf,
    pub context: String,
    pub cluster: String,
    pub server: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<ContextSpec>>,
    #[serde(default)]
    clusters: Vec<Named<ClusterSpec>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster")]
    context: Option<T>,
}

#[derive(Debug, Deserialize)]
struct ContextSpec {
    #[serde(default)]
    cluster: String,
}

#[derive(Debug, Deserialize)]
struct ClusterSpec {
    #[serde(default)]
    server: String,
}

/// Where kubectl would look: the first file of `$KUBECONFIG`, else `~/.kube/config`.
pub fn kubeconfig_path(kubeconfig_env: Option<&str>, home: Option<&Path>) -> Option<PathBuf> {
    match kubeconfig_env.filter(|v| !v.is_empty()) {
        Some(list) => list.split(':').find(|p| !p.is_empty()).map(PathBuf::from),
        None => home.map(|h| h.join(".kube").join("config")),
    }
}

/// Reads the kubeconfig and decides which context the run uses, refusing any it may not.
pub fn choose(flags: &KubeFlags) -> Result<ClusterChoice, InputError> {
    let env = std::env::var("KUBECONFIG").ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let Some(path) = kubeconfig_path(env.as_deref(), home.as_deref()) else {
        return Err(InputError::new(
            "--target",
            "the kube target needs a kubeconfig: KUBECONFIG and HOME are unset",
        ));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        InputError::new(
            &path,
            format!(
                "the kube target needs a kubeconfig and there is none here ({e}); for a local cluster: `kind create cluster --config kind-config.yaml`, or set KUBECONFIG"
            ),
        )
    })?;
    decide(&path, &text, flags)
}

/// The decision on a kubeconfig's text (separate from reading it, for tests).
pub fn decide(path: &Path, text: &str, flags: &KubeFlags) -> Result<ClusterChoice, InputError> {
    let config: Kubeconfig = serde_saphyr::from_str(text)
        .map_err(|e| InputError::new(path, format!("not a kubeconfig: {e}")))?;
    let context = match (&flags.context, &config.current_context) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) if !c.is_empty() => c.clone(),
        _ => {
            return Err(InputError::new(
                path,
                "no current-context: name one with --context",
            ));
        }
    };
    let Some(spec) = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
    else {
        let known: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
        return Err(InputError::new(
            "--context",
            format!(
                "context `{context}` is not in {} (it has: {})",
                path.display(),
                known.join(", ")
            ),
        ));
    };
    let allowed = context.starts_with("kind-") || flags.allow_context.as_deref() == Some(&context);
    if !allowed {
        return Err(InputError::new(
            "--allow-context",
            format!(
                "refusing context `{context}`: meshtest deploys, injects faults and sends load, so it only uses kind-* contexts unless the context is named again with --allow-context {context} (or MESHTEST_ALLOW_CONTEXT={context})"
            ),
        ));
    }
    let server = config
        .clusters
        .iter()
        .find(|c| c.name == spec.cluster)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.server.clone())
        .unwrap_or_default();
    Ok(ClusterChoice {
        kubeconfig: path.to_path_buf(),
        context,
        cluster: spec.cluster.clone(),
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: prod-eu-1\ncontexts:\n- name: prod-eu-1\n  context: {cluster: prod, user: admin}\n- name: kind-meshtest\n  context: {cluster: kind-meshtest, user: kind-meshtest}\nclusters:\n- name: prod\n  cluster: {server: 'https://prod.example:6443'}\n- name: kind-meshtest\n  cluster: {server: 'https://127.0.0.1:40000'}\nusers: []\n";

    fn flags(context: Option<&str>, allow: Option<&str>) -> KubeFlags {
        KubeFlags {
            context: context.map(str::to_string),
            allow_context: allow.map(str::to_string),
        }
    }

    #[test]
    fn a_production_context_is_refused_unless_named_twice() {
        let p = Path::new("/home/u/.kube/config");
        let e = decide(p, CONFIG, &flags(None, None)).unwrap_err();
        assert!(e.message.contains("refusing context `prod-eu-1`"), "{e}");
        assert!(e.message.contains("--allow-context prod-eu-1"), "{e}");
        let e = decide(p, CONFIG, &flags(None, Some("prod-eu-2"))).unwrap_err();
        assert!(e.message.contains("refusing"), "{e}");
        let ok = decide(p, CONFIG, &flags(Some("prod-eu-1"), Some("prod-eu-1"))).unwrap();
        assert_eq!(ok.server, "https://prod.example:6443");
    }

    #[test]
    fn a_kind_context_needs_no_allowing() {
        let p = Path::new("k");
        let ok = decide(p, CONFIG, &flags(Some("kind-meshtest"), None)).unwrap();
        assert_eq!(ok.cluster, "kind-meshtest");
        assert_eq!(ok.server, "https://127.0.0.1:40000");
    }

    #[test]
    fn an_unknown_context_or_none_at_all_is_bad_input() {
        let p = Path::new("k");
        let e = decide(p, CONFIG, &flags(Some("staging"), None)).unwrap_err();
        assert!(e.message.contains("prod-eu-1, kind-meshtest"), "{e}");
        let e = decide(p, "apiVersion: v1\nkind: Config\n", &flags(None, None)).unwrap_err();
        assert!(e.message.contains("--context"), "{e}");
    }

    #[test]
    fn the_kubeconfig_is_where_kubectl_looks() {
        assert_eq!(
            kubeconfig_path(Some(":/a/b:/c"), Some(Path::new("/h"))),
            Some(PathBuf::from("/a/b"))
        );
        assert_eq!(
            kubeconfig_path(None, Some(Path::new("/h"))),
            Some(PathBuf::from("/h/.kube/config"))
        );
        assert_eq!(kubeconfig_path(Some(""), None), None);
    }
}
