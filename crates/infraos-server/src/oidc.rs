//! OIDC: bearer JWTs from one trusted issuer, checked against its JWKS (a file, or a URL the
//! server fetches at start and again when a token names a key it does not know: issuers
//! rotate keys). The token's claims map to a user and groups, with prefixes so that an OIDC
//! user can never pass for an API-token user of the same name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// `oidc:` in server.yaml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// Accepted `aud` values (a token must carry one of them).
    pub audiences: Vec<String>,
    /// The issuer's keys as a JWKS document on disk (relative: under the data dir)…
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// …or at a URL (https, or http on loopback for tests).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA certificates (PEM) to trust for `jwksUrl`; default the system's bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_prefix")]
    pub username_prefix: String,
    #[serde(default = "default_prefix")]
    pub groups_prefix: String,
    /// Tolerated clock difference with the issuer for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub clock_skew: infraos_api::Duration,
}

fn default_username_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_prefix() -> String {
    "oidc:".into()
}
fn default_leeway() -> infraos_api::Duration {
    infraos_api::Duration::from_secs(30)
}

impl OidcConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("oidc.issuer: must name the issuer (the tokens' iss)".into());
        }
        if self.audiences.is_empty() {
            return Err("oidc.audiences: name at least one accepted audience".into());
        }
        if self.jwks_file.is_some() == self.jwks_url.is_some() {
            return Err("oidc: give exactly one of jwksFile and jwksUrl".into());
        }
        Ok(())
    }
}

/// Why a JWT was refused; the message is what the caller reads in the 401.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the OIDC token is malformed: {0}")]
    Malformed(String),
    #[error("the OIDC token expired")]
    Expired,
    #[error("the OIDC token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the OIDC token's audience is not one this server accepts ({0})")]
    Audience(String),
    #[error("the OIDC token's issuer is not {0:?}")]
    Issuer(String),
    #[error("the OIDC token's signature does not verify")]
    Signature,
    #[error("the OIDC token names key {0:?}, which the issuer's JWKS does not have")]
    UnknownKey(String),
    #[error("the OIDC token's algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("the OIDC token has no {0:?} claim to name the user")]
    NoUsername(String),
    #[error("the issuer's keys could not be loaded: {0}")]
    Jwks(String),
}

/// Whether a bearer token is a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.matches('.').count() == 2
}

pub struct Oidc {
    config: OidcConfig,
    data_dir: PathBuf,
    keys: RwLock<Arc<JwkSet>>,
    last_fetch: RwLock<Option<Instant>>,
    /// Only for `jwksUrl`.
    http: Option<reqwest::Client>,
}

/// An HTTPS client for the issuer, trusting the given CA bundle.
fn http_client(ca_file: &std::path::Path) -> Result<reqwest::Client, OidcError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| OidcError::Jwks(format!("{}: {e}", ca_file.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| OidcError::Jwks(format!("{}: {e}", ca_file.display())))?;
        // A bundle may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Jwks(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| OidcError::Jwks(e.to_string()))
}

/// How often an unknown `kid` may make the server fetch the JWKS again.
const REFETCH_EVERY: Duration = Duration::from_secs(10);

impl Oidc {
    pub async fn new(config: OidcConfig, data_dir: PathBuf) -> Result<Oidc, OidcError> {
        let http = match &config.jwks_url {
            Some(_) => {
                let ca = match &config.jwks_ca_file {
                    Some(f) if f.is_absolute() => f.clone(),
                    Some(f) => data_dir.join(f),
                    None => PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
                };
                Some(http_client(&ca)?)
            }
            None => None,
        };
        let oidc = Oidc {
            config,
            data_dir,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            last_fetch: RwLock::new(None),
            http,
        };
        let keys = oidc.fetch().await?;
        *oidc.keys.write() = Arc::new(keys);
        *oidc.last_fetch.write() = Some(Instant::now());
        Ok(oidc)
    }

    async fn fetch(&self) -> Result<JwkSet, OidcError> {
        let bytes = if let Some(file) = &self.config.jwks_file {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                self.data_dir.join(file)
            };
            std::fs::read(&path).map_err(|e| OidcError::Jwks(format!("{}: {e}", path.display())))?
        } else if let Some(url) = &self.config.jwks_url {
            let http = self
                .http
                .as_ref()
                .ok_or_else(|| OidcError::Jwks("no HTTP client".into()))?;
            let response = http
                .get(url)
                .send()
                .await
                .map_err(|e| OidcError::Jwks(format!("{url}: {e}")))?;
            if !response.status().is_success() {
                return Err(OidcError::Jwks(format!(
                    "{url}: HTTP {}",
                    response.status()
                )));
            }
            response
                .bytes()
                .await
                .map_err(|e| OidcError::Jwks(format!("{url}: {e}")))?
                .to_vec()
        } else {
            return Err(OidcError::Jwks("no jwksFile or jwksUrl".into()));
        };
        serde_json::from_slice(&bytes).map_err(|e| OidcError::Jwks(format!("not a JWKS: {e}")))
    }

    /// Validates a JWT and maps it to an identity.
    pub async fn validate(&self, token: &str) -> Result<Identity, OidcError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| OidcError::Malformed(e.to_string()))?;
        if matches!(
            header.alg,
            jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512
        ) {
            // A shared-secret algorithm with a public key as the secret is the classic forgery.
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.key_for(&kid, header.alg) {
            Some(k) => k,
            None => {
                self.refetch().await?;
                self.key_for(&kid, header.alg)
                    .ok_or_else(|| OidcError::UnknownKey(kid.clone()))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.leeway = self.config.clock_skew.as_millis() / 1000;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => OidcError::Expired,
                    K::ImmatureSignature => OidcError::NotYetValid,
                    K::InvalidAudience => OidcError::Audience(self.config.audiences.join(", ")),
                    K::InvalidIssuer => OidcError::Issuer(self.config.issuer.clone()),
                    K::InvalidSignature => OidcError::Signature,
                    K::InvalidAlgorithm => OidcError::Algorithm(format!("{:?}", header.alg)),
                    K::MissingRequiredClaim(c) => OidcError::Malformed(format!("no {c:?} claim")),
                    _ => OidcError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        let username = claims
            .get(&self.config.username_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::NoUsername(self.config.username_claim.clone()))?;
        let groups = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str())
                .map(|g| format!("{}{g}", self.config.groups_prefix))
                .collect(),
            Some(serde_json::Value::String(g)) => vec![format!("{}{g}", self.config.groups_prefix)],
            _ => Vec::new(),
        };
        Ok(Identity {
            subject: format!("user:{}{username}", self.config.username_prefix),
            groups,
            token: None,
        })
    }

    fn key_for(&self, kid: &str, alg: jsonwebtoken::Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().clone();
        let jwk = if kid.is_empty() && keys.keys.len() == 1 {
            keys.keys.first()
        } else {
            keys.find(kid)
        }?;
        // A key published for one algorithm is not used with another.
        if let Some(key_alg) = &jwk.common.key_algorithm
            && format!("{key_alg:?}") != format!("{alg:?}")
        {
            return None;
        }
        DecodingKey::from_jwk(jwk).ok()
    }

    async fn refetch(&self) -> Result<(), OidcError> {
        if self
            .last_fetch
            .read()
            .is_some_and(|t| t.elapsed() < REFETCH_EVERY)
        {
            return Ok(());
        }
        *self.last_fetch.write() = Some(Instant::now());
        let keys = self.fetch().await?;
        *self.keys.write() = Arc::new(keys);
        Ok(())
    }
}
