//! Resolving RequestAuthentication jwksUris the way istiod does by default: an HTTP GET from
//! outside the mesh (istiod has no sidecar), so a key set behind STRICT mTLS or a denying
//! AuthorizationPolicy fails here exactly as it would in the cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use crate::client::{self, Dial, Request};
use crate::model::MeshModel;
use crate::outcome::Outcome;

/// istiod's default fetch timeout.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches every jwksUri of the model. `pod_ip` gives a pod's address; URIs naming a mesh
/// service are fetched from its first pod on the service port's target port. Returns the key
/// sets fetched and a warning for each URI that failed (it then verifies no token).
pub async fn resolve(
    model: &MeshModel,
    pod_ip: &(dyn Fn(&crate::model::Pod) -> std::net::IpAddr + Sync),
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut fetched = BTreeMap::new();
    let mut warnings = Vec::new();
    for uri in model.jwks_uris() {
        match fetch(model, pod_ip, &uri).await {
            Ok(jwks) => {
                fetched.insert(uri, jwks);
            }
            Err(why) => warnings.push(format!(
                "jwksUri {uri}: {why}; as istiod does, the proxies get a key set that verifies no token, so every presented token is refused (401)"
            )),
        }
    }
    (fetched, warnings)
}

async fn fetch(
    model: &MeshModel,
    pod_ip: &(dyn Fn(&crate::model::Pod) -> std::net::IpAddr + Sync),
    uri: &str,
) -> Result<String, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("not a URL ({e})"))?;
    if parsed.scheme_str() != Some("http") {
        return Err("only http:// key sets can be fetched by the embedded mesh".into());
    }
    let host = parsed.host().ok_or("the URL has no host")?;
    let port = parsed.port_u16().unwrap_or(80);
    let namespaces: Vec<&str> = model
        .manifests
        .request_authentications
        .iter()
        .map(|r| r.namespace())
        .collect();
    let service = namespaces
        .iter()
        .find_map(|ns| model.resolve_host(host, ns))
        .ok_or_else(|| {
            format!("{host} is not a service of the mesh (no network access to other hosts)")
        })?;
    let target = service
        .port(port)
        .ok_or_else(|| format!("service {} has no port {port}", service.name))?
        .target_port;
    let pod = model
        .pods_of(service)
        .next()
        .ok_or_else(|| format!("service {} has no pods", service.name))?;
    let mut req = Request::get(
        &format!("{host}:{port}"),
        parsed.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
    );
    req.timeout = FETCH_TIMEOUT;
    let dial = Dial::Tcp(SocketAddr::new(pod_ip(pod), target));
    match client::send(&dial, &req).await {
        Outcome::Response {
            status: 200, body, ..
        } => {
            let ok = serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v["keys"].is_array());
            if ok {
                Ok(body)
            } else {
                Err("the answer is not a JSON Web Key Set".into())
            }
        }
        other => Err(format!(
            "fetching it from outside the mesh (as istiod does) got {}",
            other.summary()
        )),
    }
}
