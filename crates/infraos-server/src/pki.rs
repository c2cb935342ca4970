//! The cluster CA at work: signs agents' certificate requests (identity `node:<name>`) and the
//! server's own client certificate for calling agents (identity `system:server`).
//!
//! Node certificates are short-lived (`agentCertTtl`, 24 h by default) and carry both client
//! and server usage: the agent presents the same certificate when it serves logs to the
//! control plane, under the DNS name [`node_dns_name`].

use std::path::Path;
use std::sync::Arc;

use infraos_api::Time;
use sha2::{Digest, Sha256};

use infraos_control::datadir::{CA_CERT, CA_KEY};

pub const NODE_PREFIX: &str = "node:";
pub const SERVER_CLIENT_CN: &str = "system:server";

/// The DNS name a node's certificate is valid for; the server dials agents by it.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}.nodes.infraos.internal")
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the CA cannot be loaded from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("csr: the certificate request is not valid: {0}")]
    BadCsr(String),
    #[error("csr: the request names {found:?}, but it must name {expected:?}")]
    WrongSubject { expected: String, found: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signed certificate and what the server remembers of it.
#[derive(Clone, Debug)]
pub struct Signed {
    pub pem: String,
    /// SHA-256 of the certified public key, hex: ties a node name to the key that joined.
    pub key_fingerprint: String,
    pub not_after: Time,
}

pub struct Ca {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

pub type SharedCa = Arc<Ca>;

impl Ca {
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| PkiError::Load {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read(CA_CERT)?;
        let key = rcgen::KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| PkiError::Load {
            path: dir.join(CA_KEY).display().to_string(),
            reason: e.to_string(),
        })?;
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Load {
                path: dir.join(CA_CERT).display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a node's CSR. The CSR's common name must be `node:<name>`; everything else the
    /// CSR asks for (SANs, usages) is ignored and set here.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        node: &str,
        now: Time,
        ttl: std::time::Duration,
    ) -> Result<Signed, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let expected = format!("{NODE_PREFIX}{node}");
        let found = csr
            .params
            .distinguished_name
            .get(&rcgen::DnType::CommonName)
            .and_then(dn_text)
            .unwrap_or_default();
        if found != expected {
            return Err(PkiError::WrongSubject { expected, found });
        }
        let mut params = rcgen::CertificateParams::new(vec![node_dns_name(node)])
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, expected);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "infraos:nodes");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let not_after = shift(now, ttl_ms);
        // A little slack backwards for agents whose clock runs behind ours: a tenth of the
        // lifetime, at most five minutes, so that two thirds of the whole window (when the
        // agent rotates) still lies ahead of now.
        params.not_before = to_offset(shift(now, -(ttl_ms / 10).min(300_000)))?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        use rcgen::PublicKeyData;
        let key_fingerprint = hex::encode(Sha256::digest(csr.public_key.der_bytes()));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        Ok(Signed {
            pem: cert.pem(),
            key_fingerprint,
            not_after,
        })
    }

    /// A fresh key and certificate for the server's own calls to agents.
    pub fn issue_server_client(&self, now: Time) -> Result<(String, String), PkiError> {
        let key = rcgen::KeyPair::generate().map_err(|e| PkiError::Sign(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_CLIENT_CN);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(shift(now, -300_000))?;
        params.not_after = to_offset(shift(now, 365 * 86_400_000))?;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn dn_text(value: &rcgen::DnValue) -> Option<String> {
    match value {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::TeletexString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn random_serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = *uuid::Uuid::new_v4().as_bytes();
    }
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn shift(t: Time, ms: i64) -> Time {
    Time::from_unix_millis(t.unix_millis().saturating_add(ms))
}

fn to_offset(t: Time) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.unix_millis().div_euclid(1000))
        .map_err(|e| PkiError::Sign(format!("time {t} out of range: {e}")))
}

/// The common name of a DER certificate's subject.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// SHA-256 of a DER certificate's public key, hex.
pub fn key_fingerprint(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.public_key();
    Some(hex::encode(Sha256::digest(
        spki.subject_public_key.data.as_ref(),
    )))
}
