//! Client TLS for calls from outside the mesh: mesh leaf certificates carry only a SPIFFE URI
//! SAN, so the server name check is replaced by an optional SPIFFE identity check.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Installs aws-lc-rs as the process's rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Verifies the chain against `roots`; accepts a certificate not valid for the host name
/// (SPIFFE leaves have none) and then, if `expect_uri` is set, demands that URI SAN.
#[derive(Debug)]
struct SpiffeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect_uri: Option<String>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => {
                if let Some(uri) = &self.expect_uri {
                    let pem = pem_of(end_entity);
                    let sans = crate::pki::uri_sans(&pem).unwrap_or_default();
                    if !sans.iter().any(|s| s == uri) {
                        return Err(rustls::Error::General(format!(
                            "server identity {sans:?} is not {uri}"
                        )));
                    }
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
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
    expect_uri: Option<String>,
    alpn: &[&str],
) -> Result<Arc<rustls::ClientConfig>> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("bad CA certificate PEM")?)
            .context("adding CA")?;
    }
    let inner = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .context("building the verifier")?;
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier { inner, expect_uri }));
    let mut config = match identity {
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .context("bad client certificate PEM")?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .context("bad client key PEM")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
