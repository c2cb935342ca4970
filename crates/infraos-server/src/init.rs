//! `infraos server init`: the data dir's CA, server certificate, admin token and signing key.
//! The layout is `infraos_control::datadir`'s:
//!
//! ```text
//!   D/ca.crt       the cluster CA (clients trust it; agents' certificates will chain to it)
//!   D/ca.key       0600
//!   D/server.crt   signed by the CA for localhost, 127.0.0.1, ::1, the host name and --san
//!   D/server.key   0600
//!   D/admin.token  0600, the admin bearer token in plain text (its SHA-256 is in the store)
//!   D/signing.key  0600, the server's signing key (see `signing`), of server.yaml's
//!                  `signatureAlgorithm` (ed25519 by default)
//!   D/signing.pub  0644, its public key, `ALGORITHM:BASE64`: what auditors and agents pin
//!   D/store.redb   the embedded store
//! ```
//! Initialising an initialised dir changes nothing and reveals no secret again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use infraos_store::{Compare, Store, Txn};

use crate::ServerError;
use crate::identity::{TokenRecord, token_key};
use crate::signing::ServerKey;

pub use infraos_control::datadir::{ADMIN_TOKEN, CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY};

#[derive(Debug)]
pub struct InitOutcome {
    /// The admin token, only when this call created it.
    pub admin_token: Option<String>,
    pub ca_cert: PathBuf,
    /// The server's public signing key, and whether this call created the pair.
    pub public_key: infraos_api::signature::PublicKey,
    pub signing_key_created: bool,
}

pub fn is_initialised(dir: &Path) -> bool {
    [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
        .iter()
        .all(|f| dir.join(f).exists())
}

/// Creates what is missing in `dir`. `extra_sans` are added to the server certificate.
pub async fn init_data_dir(dir: &Path, extra_sans: &[String]) -> Result<InitOutcome, ServerError> {
    std::fs::create_dir_all(dir).map_err(|e| ServerError::io(dir, e))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    // server.yaml, when written before init, chooses the signing algorithm.
    let config = crate::config::ServerConfig::load(dir)?;
    if !is_initialised(dir) {
        write_certificates(dir, extra_sans)?;
    }
    let (key, signing_key_created) = ServerKey::ensure(dir, config.signature_algorithm)?;
    let store = infraos_store::embedded::EmbeddedStore::open(
        &infraos_control::datadir::store_path(dir),
        Default::default(),
    )?;
    let admin_token = ensure_admin_token(dir, &store).await?;
    Ok(InitOutcome {
        admin_token,
        ca_cert: dir.join(CA_CERT),
        public_key: key.public_key().clone(),
        signing_key_created,
    })
}

fn write_certificates(dir: &Path, extra_sans: &[String]) -> Result<(), ServerError> {
    let cert_err = |e: rcgen::Error| ServerError::Cert(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "infraos-ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && !sans.iter().any(|s| s == host) {
            sans.push(host.to_string());
        }
    }
    sans.extend(extra_sans.iter().cloned());
    let server_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut server_params = rcgen::CertificateParams::new(sans).map_err(cert_err)?;
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "infraos-server");
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    server_params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(cert_err)?;

    write_file(&dir.join(CA_CERT), ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(SERVER_CERT), server_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &dir.join(SERVER_KEY),
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Makes sure the data dir's admin token is known to the store the server runs on (a fresh
/// etcd knows nothing of `server init`); idempotent.
pub async fn ensure_admin_record(dir: &Path, store: &dyn Store) -> Result<(), ServerError> {
    let path = dir.join(ADMIN_TOKEN);
    let Ok(token) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let token = token.trim();
    if token.is_empty() {
        return Ok(());
    }
    let record = TokenRecord {
        subject: "admin".into(),
        groups: vec!["system:masters".into()],
        ..Default::default()
    };
    let key = token_key(&crate::identity::hash_token(token));
    let value = serde_json::to_vec(&record).map_err(|e| ServerError::Cert(e.to_string()))?;
    store
        .txn(
            Txn::new()
                .when(Compare::absent(key.clone()))
                .put(key, value),
        )
        .await?;
    Ok(())
}

async fn ensure_admin_token(dir: &Path, store: &dyn Store) -> Result<Option<String>, ServerError> {
    let path = dir.join(ADMIN_TOKEN);
    if path.exists() {
        return Ok(None);
    }
    let token = crate::identity::generate_token()?;
    let record = TokenRecord {
        subject: "admin".into(),
        groups: vec!["system:masters".into()],
        ..Default::default()
    };
    let key = token_key(&crate::identity::hash_token(&token));
    let value = serde_json::to_vec(&record).map_err(|e| ServerError::Cert(e.to_string()))?;
    store
        .txn(
            Txn::new()
                .when(Compare::absent(key.clone()))
                .put(key, value),
        )
        .await?;
    write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(Some(token))
}

/// Writes a file atomically (temp file + rename) with the given mode from the start.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServerError> {
    infraos_control::datadir::write_file(path, contents, mode).map_err(|e| ServerError::Io {
        path: e.path,
        source: e.source,
    })
}
