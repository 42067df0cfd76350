//! The cluster operations of a kube run, through kube-rs: connect to the allowed context,
//! server-side apply (field manager `meshtest`, forced) with kinds resolved by discovery, wait
//! until every Deployment is complete and every pod Ready (the istio-proxy container
//! included), delete the run's namespace, and sweep what crashed runs left.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config};
use serde_json::Value;

use super::context::ClusterChoice;
use super::objects::{FIELD_MANAGER, MANAGED_BY, Run};

/// kube 5 sets no read timeout of its own: a hung API server must not hang a run.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled (always against a deadline).
const POLL: Duration = Duration::from_secs(1);

/// A client for the context the run was allowed to use.
pub async fn connect(choice: &ClusterChoice) -> Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&choice.kubeconfig)
        .with_context(|| format!("reading {}", choice.kubeconfig.display()))?;
    let options = kube::config::KubeConfigOptions {
        context: Some(choice.context.clone()),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("context {}", choice.context))?;
    config.read_timeout = Some(READ_TIMEOUT);
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config).with_context(|| format!("connecting to {}", choice.server))
}

fn describe(obj: &Value) -> String {
    format!(
        "{} {}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["namespace"].as_str().unwrap_or("-"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Groups whose kinds a cluster may lack without the mesh changing: applied when served,
/// noted when not (PrometheusRule needs the Prometheus operator).
const OPTIONAL_GROUPS: &[&str] = &["monitoring.coreos.com"];

/// Why `apply` did not apply an object the cluster does not serve (None: it did).
pub type Skipped = Option<String>;

/// Server-side applies `obj`, its kind resolved through discovery (so Istio's and the Gateway
/// API's kinds need no compiled-in types, and a cluster without them says so).
pub async fn apply(client: &Client, obj: &Value) -> Result<Skipped> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = match discovery::pinned_kind(client, &gvk).await {
        Ok(found) => found,
        Err(kube::Error::Discovery(_)) if OPTIONAL_GROUPS.contains(&group) => {
            return Ok(Some(format!(
                "{}: the cluster does not serve {kind} in {api_version}",
                describe(obj)
            )));
        }
        Err(kube::Error::Discovery(e)) => {
            bail!("the cluster does not serve {kind} in {api_version} ({e})")
        }
        Err(e) => return Err(e).context(format!("looking up {kind} in {api_version}")),
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {}", describe(obj)))?;
    Ok(None)
}

/// Creates the run's namespace and applies every object into it; returns what was skipped.
pub async fn deploy(client: &Client, run: &Run, objects: &[Value]) -> Result<Vec<String>> {
    apply(client, &run.namespace_object()).await?;
    let mut skipped = Vec::new();
    for obj in objects {
        skipped.extend(apply(client, obj).await?);
    }
    Ok(skipped)
}

/// What is not ready yet in `namespace`: Deployments short of their replicas, pods not Ready.
async fn not_ready(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in deployments.list(&ListParams::default()).await? {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        if ready < want || updated < want {
            pending.push(format!(
                "deployment {}: {ready}/{want} ready",
                d.metadata.name.unwrap_or_default()
            ));
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for p in pods.list(&ListParams::default()).await? {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            pending.push(format!(
                "pod {}: not Ready",
                p.metadata.name.unwrap_or_default()
            ));
        }
    }
    Ok(pending)
}

/// Polls (each second) until everything in `namespace` is ready, or fails at `deadline` saying
/// what was still waiting. Returns how long it took.
pub async fn wait_ready(client: &Client, namespace: &str, deadline: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let pending = not_ready(client, namespace).await?;
        if pending.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= deadline {
            bail!(
                "namespace {namespace} not ready after {} s: {}",
                deadline.as_secs(),
                pending.join("; ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes the run's namespace (and so everything the run applied into it).
pub async fn delete_run(client: &Client, run: &Run) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&run.namespace, &DeleteParams::default())
        .await
        .map(|_| ())
        .with_context(|| format!("deleting namespace {}", run.namespace))
}

/// The namespaces meshtest's runs created (or only run `run`'s), terminating ones included.
pub async fn runs(client: &Client, run: Option<&str>) -> Result<Vec<String>> {
    let selector = match run {
        Some(id) => Run::new(id, None).selector(),
        None => format!("{MANAGED_BY}={FIELD_MANAGER}"),
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let found = namespaces
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing meshtest's namespaces")?;
    found
        .into_iter()
        .map(|ns| {
            ns.metadata
                .name
                .ok_or_else(|| anyhow!("a namespace without a name"))
        })
        .collect()
}

/// Deletes every namespace meshtest created (or only run `run`'s): what crashed runs left.
pub async fn clean(client: &Client, run: Option<&str>) -> Result<Vec<String>> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut deleted = Vec::new();
    for name in runs(client, run).await? {
        namespaces
            .delete(&name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting namespace {name}"))?;
        deleted.push(name);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    //! Every API call the target makes, against tower-test's mock: the request it must send
    //! (method, path, query, body) and the answer the API server would give.

    use std::pin::pin;

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock::{self, Handle};

    use super::*;

    type Server = Handle<Request<Body>, Response<Body>>;

    fn client() -> (Client, Server) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    /// The next request: its method, path and query are checked; its body is returned.
    async fn expect(
        handle: &mut std::pin::Pin<&mut Server>,
        method: Method,
        path: &str,
        query: &[&str],
        answer: Value,
    ) -> Value {
        let (req, send) = handle
            .next_request()
            .await
            .expect("the target made no request");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert_eq!(req.uri().path(), path);
        let q = req.uri().query().unwrap_or("");
        for want in query {
            assert!(q.split('&').any(|p| p == *want), "{want} not in ?{q}");
        }
        let body = req.into_body().collect_bytes().await.unwrap();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        body
    }

    fn resource_list(group_version: &str, kind: &str, plural: &str, namespaced: bool) -> Value {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}]})
    }

    #[tokio::test]
    async fn deploy_creates_the_namespace_and_applies_each_object_server_side() {
        let (client, server) = client();
        let run = Run::new("abc", None);
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "meshtest-abc"}, "spec": {"hosts": ["a"]}});
        let objects = vec![vs.clone()];
        let api = tokio::spawn(async move {
            let mut h = pin!(server);
            let apply = ["fieldManager=meshtest", "force=true"];
            expect(
                &mut h,
                Method::GET,
                "/api/v1",
                &[],
                resource_list("v1", "Namespace", "namespaces", false),
            )
            .await;
            let ns = expect(&mut h, Method::PATCH, "/api/v1/namespaces/meshtest-abc", &apply, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshtest-abc"}})).await;
            assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled");
            assert_eq!(ns["metadata"]["labels"]["meshtest.io/run"], "abc");
            expect(
                &mut h,
                Method::GET,
                "/apis/networking.istio.io/v1",
                &[],
                resource_list(
                    "networking.istio.io/v1",
                    "VirtualService",
                    "virtualservices",
                    true,
                ),
            )
            .await;
            let body = expect(
                &mut h,
                Method::PATCH,
                "/apis/networking.istio.io/v1/namespaces/meshtest-abc/virtualservices/r",
                &apply,
                vs,
            )
            .await;
            assert_eq!(body["spec"]["hosts"][0], "a");
        });
        assert!(deploy(&client, &run, &objects).await.unwrap().is_empty());
        api.await.unwrap();
    }

    #[tokio::test]
    async fn a_kind_the_cluster_does_not_serve_is_named() {
        let (client, server) = client();
        let obj = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "h", "namespace": "n"}});
        let api = tokio::spawn(async move {
            let mut h = pin!(server);
            expect(
                &mut h,
                Method::GET,
                "/apis/gateway.networking.k8s.io/v1",
                &[],
                resource_list("gateway.networking.k8s.io/v1", "Gateway", "gateways", true),
            )
            .await;
        });
        let e = apply(&client, &obj).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("does not serve HTTPRoute in gateway.networking.k8s.io/v1"),
            "{e:#}"
        );
        api.await.unwrap();
    }

    #[tokio::test]
    async fn readiness_waits_for_every_replica_and_every_pod() {
        let (client, server) = client();
        let deployments = |ready: i32| {
            json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": [
            {"metadata": {"name": "api-gateway"}, "spec": {"replicas": 2, "selector": {}, "template": {}},
             "status": {"readyReplicas": ready, "updatedReplicas": 2}}]})
        };
        let pods = |ready: &str| {
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
            {"metadata": {"name": "api-gateway-7d9-x"}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}]})
        };
        let api = tokio::spawn(async move {
            let mut h = pin!(server);
            let d = "/apis/apps/v1/namespaces/meshtest-abc/deployments";
            let p = "/api/v1/namespaces/meshtest-abc/pods";
            expect(&mut h, Method::GET, d, &[], deployments(1)).await;
            expect(&mut h, Method::GET, p, &[], pods("False")).await;
            expect(&mut h, Method::GET, d, &[], deployments(2)).await;
            expect(&mut h, Method::GET, p, &[], pods("True")).await;
        });
        let took = wait_ready(&client, "meshtest-abc", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(took >= POLL, "it polled again after a second");
        api.await.unwrap();
    }

    #[tokio::test]
    async fn readiness_fails_at_its_deadline_saying_what_waits() {
        let (client, server) = client();
        let api = tokio::spawn(async move {
            let mut h = pin!(server);
            expect(&mut h, Method::GET, "/apis/apps/v1/namespaces/n/deployments", &[], json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": []})).await;
            expect(&mut h, Method::GET, "/api/v1/namespaces/n/pods", &[], json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                {"metadata": {"name": "p"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}]})).await;
        });
        let e = wait_ready(&client, "n", Duration::ZERO).await.unwrap_err();
        assert!(e.to_string().contains("pod p: not Ready"), "{e}");
        api.await.unwrap();
    }

    #[tokio::test]
    async fn clean_deletes_only_meshtests_namespaces_of_the_run() {
        let (client, server) = client();
        let api = tokio::spawn(async move {
            let mut h = pin!(server);
            expect(&mut h, Method::GET, "/api/v1/namespaces", &["labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmeshtest%2Cmeshtest.io%2Frun%3Dabc"],
                json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": [{"metadata": {"name": "meshtest-abc"}}]})).await;
            expect(&mut h, Method::DELETE, "/api/v1/namespaces/meshtest-abc", &[],
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshtest-abc"}})).await;
        });
        assert_eq!(clean(&client, Some("abc")).await.unwrap(), ["meshtest-abc"]);
        api.await.unwrap();
    }
}
