//! The mesh CA and its SPIFFE leaf certificates (real X.509, ECDSA P-256), like istiod's CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::translate::CertFiles;

/// A certificate authority: the mesh root, or (in tests) an impostor CA the mesh must reject.
pub struct MeshCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Mints a fresh root CA named `name` (its key never leaves memory and the run directory).
    pub fn generate(name: &str) -> Result<MeshCa> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshtest");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A workload leaf: SPIFFE URI SAN only (as istiod issues), client and server auth.
    pub fn issue_workload(&self, spiffe_id: &str) -> Result<Leaf> {
        let mut params = leaf_params()?;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().context("SPIFFE ID as a URI SAN")?,
        )];
        self.sign(params)
    }

    /// A workload leaf that expired yesterday (for the chaos certificate fault: peers must
    /// reject it).
    pub fn issue_expired_workload(&self, spiffe_id: &str) -> Result<Leaf> {
        let mut params = leaf_params()?;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().context("SPIFFE ID as a URI SAN")?,
        )];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        self.sign(params)
    }

    /// A server certificate for the ingress gateway's HTTPS listener.
    pub fn issue_server(&self, dns_names: &[&str], ips: &[IpAddr]) -> Result<Leaf> {
        let mut params = leaf_params()?;
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().context("DNS SAN")?));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Leaf> {
        let key = KeyPair::generate().context("generating a leaf key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a leaf")?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn leaf_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("leaf params")?;
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    Ok(params)
}

/// Writes a leaf as `<stem>.crt` / `<stem>.key` (0600) next to the CA's `ca.crt`.
pub fn write_leaf(dir: &Path, stem: &str, leaf: &Leaf, ca: &MeshCa) -> Result<CertFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_path = dir.join("ca.crt");
    if !ca_path.exists() {
        write_private(&ca_path, ca.cert_pem())?;
    }
    let chain = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    write_private(&chain, &leaf.cert_pem)?;
    write_private(&key, &leaf.key_pem)?;
    Ok(CertFiles {
        ca: ca_path,
        chain,
        key,
    })
}

pub fn write_private(path: &Path, contents: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The URI SANs of a PEM certificate (the SPIFFE identity of a mesh leaf).
pub fn uri_sans(cert_pem: &str) -> Result<Vec<String>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("bad certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                out.push(uri.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_leaf_carries_only_the_spiffe_uri() {
        let ca = MeshCa::generate("test").unwrap();
        let leaf = ca
            .issue_workload("spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa")
            .unwrap();
        assert_eq!(
            uri_sans(&leaf.cert_pem).unwrap(),
            ["spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa"]
        );
        assert!(format!("{leaf:?}").find("PRIVATE").is_none());
    }
}
