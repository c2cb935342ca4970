//! The agent's identity: its key, its `node:<name>` certificate and the cluster CA, kept in
//! `D/identity/`. Joining is needed once; a restart with the same data dir keeps the identity
//! (and the key the server bound the node name to). Certificates are rotated at two thirds
//! of their lifetime with a fresh key, without stopping anything.

use std::path::{Path, PathBuf};

use infraos_api::Time;
use infraos_api::agent_protocol::{CertificateRequest, CertificateResponse, JoinRequest};
use infraos_api::kinds::{AgentInfo, Tier};
use infraos_client::{Client, ClientConfig, ClientIdentity};

use crate::{AgentError, write_atomic};

const KEY: &str = "node.key";
const CERT: &str = "node.crt";
const CA: &str = "ca.crt";

/// A loaded identity.
#[derive(Clone)]
pub struct Identity {
    pub node: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub not_before: Time,
    pub not_after: Time,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &self.node)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// When to rotate: two thirds into the certificate's life.
    pub fn rotate_at(&self) -> Time {
        let life = self.not_after.unix_millis() - self.not_before.unix_millis();
        Time::from_unix_millis(self.not_before.unix_millis() + life * 2 / 3)
    }

    pub fn client(&self, server: &str) -> Result<Client, AgentError> {
        Ok(Client::new(&ClientConfig {
            server: server.to_string(),
            ca_pem: Some(self.ca_pem.as_bytes().to_vec()),
            token: None,
            identity: Some(ClientIdentity {
                cert_pem: self.cert_pem.as_bytes().to_vec(),
                key_pem: self.key_pem.as_bytes().to_vec(),
            }),
        })?)
    }
}

/// A fresh key and a CSR naming `node:<name>`.
pub fn new_key_and_csr(node: &str) -> Result<(String, String), AgentError> {
    let err = |e: rcgen::Error| AgentError::Certificate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("node:{node}"));
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(err)?))
}

/// The validity window and common name of a PEM certificate.
pub fn describe(cert_pem: &str) -> Result<(Time, Time, String), AgentError> {
    let bad = |why: String| AgentError::Certificate(why);
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let validity = cert.validity();
    Ok((
        Time::from_unix_millis(validity.not_before.timestamp() * 1000),
        Time::from_unix_millis(validity.not_after.timestamp() * 1000),
        cn,
    ))
}

fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join(KEY), dir.join(CERT), dir.join(CA))
}

/// The identity in `dir`, if there is one for `node` that has not expired.
pub fn load(dir: &Path, node: &str, now: Time) -> Result<Option<Identity>, AgentError> {
    let (key, cert, ca) = files(dir);
    if !cert.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| AgentError::io(p, e));
    let cert_pem = read(&cert)?;
    let (not_before, not_after, cn) = describe(&cert_pem)?;
    if cn != format!("node:{node}") {
        return Err(AgentError::Config(format!(
            "{} holds the identity {cn:?}, not node:{node}; use another data dir or --name",
            dir.display()
        )));
    }
    if now >= not_after {
        return Ok(None);
    }
    Ok(Some(Identity {
        node: node.to_string(),
        cert_pem,
        key_pem: read(&key)?,
        ca_pem: read(&ca)?,
        not_before,
        not_after,
    }))
}

fn store(
    dir: &Path,
    node: &str,
    key_pem: String,
    answer: CertificateResponse,
) -> Result<(Identity, Vec<Tier>), AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let (key, cert, ca) = files(dir);
    let (not_before, not_after, _) = describe(&answer.certificate)?;
    // The key first: a crash between the two writes leaves an old cert with a new key,
    // which fails the handshake and sends the agent back to joining, never a mismatch in use.
    write_atomic(&key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert, answer.certificate.as_bytes(), 0o644)?;
    write_atomic(&ca, answer.ca.as_bytes(), 0o644)?;
    if let Some(signing_key) = &answer.signing_key {
        pin_signing_key(dir, signing_key);
    }
    Ok((
        Identity {
            node: node.to_string(),
            cert_pem: answer.certificate,
            key_pem,
            ca_pem: answer.ca,
            not_before,
            not_after,
        },
        answer.tiers,
    ))
}

const SIGNING_KEY: &str = "server-signing.pub";

/// The server's signing key this node pinned, if any.
pub fn pinned_signing_key(dir: &Path) -> Option<infraos_api::signature::PublicKey> {
    let path = dir.join(SIGNING_KEY);
    let text = std::fs::read_to_string(&path).ok()?;
    match text.trim().parse() {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "the pinned signing key is unreadable");
            None
        }
    }
}

/// Pins the server's signing key on first sight. A different key later is refused (logged):
/// instructions signed with it will not run here until an operator removes the pin.
pub fn pin_signing_key(dir: &Path, key: &infraos_api::signature::PublicKey) -> bool {
    match pinned_signing_key(dir) {
        Some(pinned) if &pinned == key => true,
        Some(pinned) => {
            tracing::error!(
                pinned = %pinned.key_id(),
                offered = %key.key_id(),
                "the server offers another signing key than the one this node pinned; keeping the pinned one"
            );
            false
        }
        None => {
            let path = dir.join(SIGNING_KEY);
            match write_atomic(&path, format!("{key}\n").as_bytes(), 0o644) {
                Ok(()) => {
                    tracing::info!(key = %key.key_id(), "pinned the server's signing key");
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot pin the server's signing key");
                    false
                }
            }
        }
    }
}

const JOIN_ATTEMPTS: u32 = 6;

/// Whether a failed join may succeed if tried again: no answer, a lost race (409 on the
/// token's use count, not the name), or a server error.
fn retryable(e: &infraos_client::ClientError) -> bool {
    match e.code() {
        None => true,
        Some(409) => !e.to_string().contains("another key"),
        Some(code) => code >= 500 || code == 429,
    }
}

/// Joins with a token: the only call made without a client certificate. Returns the identity
/// and the tiers the node was granted.
pub async fn join(
    server: &str,
    ca_pem: &[u8],
    dir: &Path,
    node: &str,
    token: &str,
    labels: std::collections::BTreeMap<String, String>,
    agent: AgentInfo,
) -> Result<(Identity, Vec<Tier>), AgentError> {
    let client = Client::new(&ClientConfig {
        server: server.to_string(),
        ca_pem: Some(ca_pem.to_vec()),
        token: None,
        identity: None,
    })?;
    // Rejoining keeps the key the node was bound to, if there is one.
    let key_path = dir.join(KEY);
    let (key_pem, csr) = match std::fs::read_to_string(&key_path) {
        Ok(key_pem) => {
            let key = rcgen::KeyPair::from_pem(&key_pem)
                .map_err(|e| AgentError::Certificate(format!("{}: {e}", key_path.display())))?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .map_err(|e| AgentError::Certificate(e.to_string()))?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("node:{node}"));
            let csr = params
                .serialize_request(&key)
                .and_then(|c| c.pem())
                .map_err(|e| AgentError::Certificate(e.to_string()))?;
            (key_pem, csr)
        }
        Err(_) => new_key_and_csr(node)?,
    };
    let request = JoinRequest {
        token: token.to_string(),
        name: node.to_string(),
        csr,
        labels,
        agent,
    };
    // A server that is starting, briefly unreachable, or busy with a fleet's joins is worth
    // a few more tries; a refusal (bad token, name taken) is final.
    let mut pause = std::time::Duration::from_millis(500);
    let mut attempt = 1;
    let answer: CertificateResponse = loop {
        match client
            .send_json(reqwest::Method::POST, "/agent/v1/join", &request)
            .await
        {
            Ok(answer) => break answer,
            Err(e) if attempt < JOIN_ATTEMPTS && retryable(&e) => {
                tracing::warn!(error = %e, attempt, "join failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
                attempt += 1;
            }
            Err(e) => return Err(AgentError::Join(e.to_string())),
        }
    };
    store(dir, node, key_pem, answer)
}

/// Rotates the certificate (and key) over mTLS with the current identity. Returns the new
/// identity and the node's tiers.
pub async fn rotate(
    client: &Client,
    dir: &Path,
    node: &str,
) -> Result<(Identity, Vec<Tier>), AgentError> {
    let (key_pem, csr) = new_key_and_csr(node)?;
    let answer: CertificateResponse = client
        .send_json(
            reqwest::Method::POST,
            "/agent/v1/certificate",
            &CertificateRequest { csr },
        )
        .await?;
    store(dir, node, key_pem, answer)
}
