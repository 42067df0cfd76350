//! TLS: SPIFFE-only server certificates, mTLS and ALPN h2.

use std::sync::Arc;

use meshtest_load::{LoadArgs, LoadError, LoadPlan, run};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::{self, Behaviour};

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    server: (String, String),
}

fn leaf(issuer: &Issuer<'_, KeyPair>, spiffe: &str) -> (String, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    // Mesh leaves: a SPIFFE URI SAN and nothing a hostname could match.
    p.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn new_pki() -> (Pki, (String, String)) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server = leaf(&issuer, "spiffe://mesh.test/ns/default/sa/echo");
    let client = leaf(&issuer, "spiffe://mesh.test/ns/default/sa/meshtest");
    let dir = tempfile::tempdir().unwrap();
    (
        Pki {
            dir,
            ca_pem: ca_cert.pem(),
            server,
        },
        client,
    )
}

fn server_config(pki: &Pki, alpn_h2: bool) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_spiffe_only_server_cert() {
    let (pki, client) = new_pki();
    let write = |name: &str, text: &str| {
        let p = pki.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let cert = write("client.pem", &client.0);
    let key = write("client.key", &client.1);

    for h2 in [false, true] {
        let srv = server::start(Behaviour {
            http2: h2,
            tls: Some(server_config(&pki, h2)),
            ..Behaviour::default()
        })
        .await;
        let mut a = LoadArgs::for_url(format!("https://localhost:{}/", srv.addr.port()));
        a.no_progress = true;
        a.http2 = h2;
        a.cacert = Some(ca.clone());
        a.cert = Some(cert.clone());
        a.key = Some(key.clone());
        a.connections = Some(2);
        a.requests = Some(20);
        let r = run(&LoadPlan::from_args(&a).unwrap()).await.unwrap();
        assert_eq!(r.recorder.ok, 20, "h2={h2}: {:?}", r.recorder.errors);
    }

    // A CA that did not sign the server: the chain check still applies.
    let (other, _) = new_pki();
    let other_ca = write("other-ca.pem", &other.ca_pem);
    let srv = server::start(Behaviour {
        tls: Some(server_config(&pki, false)),
        ..Behaviour::default()
    })
    .await;
    let mut a = LoadArgs::for_url(format!("https://127.0.0.1:{}/", srv.addr.port()));
    a.no_progress = true;
    a.cacert = Some(other_ca);
    a.requests = Some(3);
    let r = run(&LoadPlan::from_args(&a).unwrap()).await.unwrap();
    assert_eq!(r.recorder.errors.get(meshtest_load::ErrorKind::Tls), 3);

    // Unreadable key file is an input error naming the flag.
    a.cert = Some(cert);
    a.key = Some(pki.dir.path().join("missing.key"));
    match LoadPlan::from_args(&a) {
        Err(LoadError::Input(m)) => assert!(m.contains("--key"), "{m}"),
        other => panic!("{other:?}"),
    }
}
