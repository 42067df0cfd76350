//! Client TLS for calls from outside the mesh. Mesh leaf certificates carry only a SPIFFE URI
//! SAN, so the chain is verified against the mesh CA and the hostname check is skipped: the
//! verifier is meshtest-load's, shared by `meshtest load` and `meshtest call`.

use std::sync::Arc;

use anyhow::Result;

/// Installs aws-lc-rs as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client identity (certificate chain + key, PEM) to present, if any.
pub struct ClientIdentity<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// A rustls client config trusting `ca_pem`, presenting `identity`, offering `alpn`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<ClientIdentity<'_>>,
    alpn: &[&str],
) -> Result<Arc<rustls::ClientConfig>> {
    install_crypto_provider();
    let client = identity.map(|id| {
        (
            id.cert_pem.as_bytes().to_vec(),
            id.key_pem.as_bytes().to_vec(),
        )
    });
    let alpn: Vec<&[u8]> = alpn.iter().map(|a| a.as_bytes()).collect();
    // Quiet: every outside call builds a config, and skipping the name check is the point here.
    Ok(meshtest_load::tls::client_config_with(
        ca_pem.as_bytes(),
        client,
        &alpn,
        false,
    )?)
}
