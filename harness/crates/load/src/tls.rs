//! rustls client configuration (aws-lc-rs) with an explicit SPIFFE hostname fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{LoadError, Result};

/// Builds the client config: roots from `ca_pem`, optional client cert for mTLS,
/// ALPN h2 or http/1.1.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
    http2: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
    client_config_with(ca_pem, client, alpn, true)
}

/// The same, with explicit ALPN values, and a say in whether skipping the hostname check (for
/// a SPIFFE-only certificate) is announced on stderr.
pub fn client_config_with(
    ca_pem: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
    alpn: &[&[u8]],
    warn_on_skipped_hostname: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| LoadError::input(format!("--cacert: bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| LoadError::input(format!("--cacert: bad certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(LoadError::input("--cacert: no certificate found in file"));
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| LoadError::Tls(format!("server verifier: {e}")))?;
    let verifier = Arc::new(ChainOnlyWhenNameMissing {
        inner,
        warned: AtomicBool::new(!warn_on_skipped_hostname),
    });

    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| LoadError::input(format!("--cert: bad PEM: {e}")))?;
            if chain.is_empty() {
                return Err(LoadError::input("--cert: no certificate found in file"));
            }
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| LoadError::input(format!("--key: bad private key PEM: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| LoadError::input(format!("--cert/--key: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Verifies the server chain against --cacert, and the hostname too when the
/// certificate has a matching DNS/IP SAN.
///
/// Mesh leaf certificates carry only a SPIFFE URI SAN, so the hostname check
/// can never pass for them. webpki checks the chain *before* the name, so a
/// `NotValidForName` error means the chain was already found valid: only then do
/// we accept, and say once on stderr which check was skipped.
#[derive(Debug)]
struct ChainOnlyWhenNameMissing {
    inner: Arc<WebPkiServerVerifier>,
    warned: AtomicBool,
}

impl ServerCertVerifier for ChainOnlyWhenNameMissing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "meshtest load: TLS chain verified against --cacert; hostname check skipped for \
                         {server_name:?} (server certificate has no matching DNS/IP SAN, e.g. a SPIFFE-only mesh leaf)"
                    );
                }
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server name for SNI; IP literals are sent as IP names (no SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        LoadError::input(format!(
            "URL host '{host}': not a valid TLS server name: {e}"
        ))
    })
}
