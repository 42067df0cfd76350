//! STRICT mTLS: plaintext and foreign or missing certificates are refused; identities travel.

use cucumber::{then, when};

use crate::conformance::world::{CALL_TIMEOUT, MeshWorld};
use crate::outcome::Outcome;
use crate::target::{Call, From, Transport};

fn transport(how: &str) -> Transport {
    match how {
        "plaintext" => Transport::Plaintext,
        "TLS without a client certificate" => Transport::TlsNoCert,
        "TLS with a certificate from another CA" => Transport::TlsForeignCert,
        other => panic!("unknown transport {other:?}"),
    }
}

#[when(
    regex = r"^a client outside the mesh calls (\S+) at (\S+) over (plaintext|TLS without a client certificate|TLS with a certificate from another CA)$"
)]
async fn outside_calls(w: &mut MeshWorld, to: String, path: String, how: String) {
    let mut call = Call::new(From::Outside(transport(&how)), &to, &path);
    call.timeout = CALL_TIMEOUT;
    w.call(format!("outside ({how}) -> {to} {path}"), call)
        .await;
}

#[then("the connection is refused without an HTTP response")]
async fn no_http_response(w: &mut MeshWorld) {
    let (desc, o) = w.last();
    assert!(
        o.status().is_none(),
        "{desc}: STRICT mTLS should refuse it, but it got {}",
        o.summary()
    );
}

#[then("the TLS handshake fails")]
async fn handshake_fails(w: &mut MeshWorld) {
    let (desc, o) = w.last();
    assert!(
        matches!(o, Outcome::Tls { .. }),
        "{desc}: expected a failed TLS handshake, got {}",
        o.summary()
    );
}

#[then(
    regex = r"^every pod refuses (plaintext|TLS without a client certificate|TLS with a certificate from another CA) from outside the mesh$"
)]
async fn every_pod_refuses(w: &mut MeshWorld, how: String) {
    let mut answered = Vec::new();
    let pods = w.target.pods();
    for pod in &pods {
        let mut call = Call::new(From::Outside(transport(&how)), &pod.name, "/health");
        call.timeout = CALL_TIMEOUT;
        let o = w
            .target
            .call(&call)
            .await
            .unwrap_or_else(|e| panic!("calling {}: {e:#}", pod.name));
        if o.status().is_some() {
            answered.push(format!("{} ({}): {}", pod.name, pod.address, o.summary()));
        }
    }
    assert!(
        answered.is_empty(),
        "{} of {} pods answered {how} from outside the mesh:\n  {}",
        answered.len(),
        pods.len(),
        answered.join("\n  ")
    );
}
