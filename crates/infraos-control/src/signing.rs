//! The server's signing key: what audit checkpoints, signed heads and (later) instructions to
//! agents are signed with (DESIGN §6). Verification is in `infraos_api::signature`.
//!
//! ```text
//!   D/signing.key   0600  ALGORITHM:BASE64(private key)   ed25519: the 32-byte seed;
//!                                                          slh-dsa-sha2-128s: FIPS 205's 64 bytes
//!   D/signing.pub   0644  ALGORITHM:BASE64(public key)    the text form auditors and agents pin
//!   store /coordination/signing-key = the public key      every replica must hold the same key
//! ```
//! `server init` creates the pair in the data dir, so replicas made by copying the data dir
//! share it, as they share the CA. A data dir initialised before signing existed gets its key
//! at the first start. The algorithm (`signatureAlgorithm` in server.yaml) is fixed when the
//! key is created: changing it later is a key rotation, which nothing supports yet, so the
//! server refuses to start rather than switch keys under the auditors' feet.

use std::path::Path;

use infraos_api::signature::{Algorithm, PublicKey, Purpose, Signature, signed_message};
use infraos_store::{Compare, Store, StoreError, Txn};

use crate::datadir::{FileError, write_file};
pub use crate::datadir::{SIGNING_KEY, SIGNING_PUB};

/// The cluster's public key in the store: the first replica records it, the others must match.
pub const STORE_KEY: &str = "/coordination/signing-key";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error(
        "{pub_path} does not hold the public key of {key_path}: restore the pair, or move both away to create a new key"
    )]
    PairMismatch { key_path: String, pub_path: String },
    #[error(
        "signatureAlgorithm: server.yaml asks for {configured} but {path} holds an {found} key; the algorithm is chosen when the key is created: move signing.key and signing.pub away to create a {configured} key (auditors and agents must then pin the new public key)"
    )]
    AlgorithmChanged {
        path: String,
        configured: Algorithm,
        found: Algorithm,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error(
        "this replica's signing key {local} is not the cluster's {cluster} (recorded at {STORE_KEY}): copy signing.key and signing.pub from another replica into {dir}"
    )]
    ClusterMismatch {
        local: String,
        cluster: String,
        dir: String,
    },
    #[error("recording the signing key: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// The private half, per algorithm.
enum Secret {
    Ed25519(ed25519_dalek::SigningKey),
    SlhDsa(slh_dsa::SigningKey<slh_dsa::Sha2_128s>),
}

/// The server's key pair. Signing always takes a [`Purpose`], so nothing can be signed
/// without its domain prefix.
pub struct ServerKey {
    secret: Secret,
    public: PublicKey,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], SigningError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| SigningError::Random(e.to_string()))?;
    Ok(bytes)
}

impl ServerKey {
    /// A new key from the operating system's randomness.
    pub fn generate(algorithm: Algorithm) -> Result<Self, SigningError> {
        let secret = match algorithm {
            Algorithm::Ed25519 => {
                Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&random::<32>()?))
            }
            Algorithm::SlhDsaSha2_128s => {
                // FIPS 205 slh_keygen (Algorithm 21) is three n-byte seeds from an approved
                // RBG fed to slh_keygen_internal; drawing them here makes a failing RNG an
                // error instead of a panic inside the crate's `new`.
                let seeds = random::<48>()?;
                Secret::SlhDsa(
                    slh_dsa::SigningKey::<slh_dsa::Sha2_128s>::slh_keygen_internal(
                        &seeds[..16],
                        &seeds[16..32],
                        &seeds[32..],
                    ),
                )
            }
        };
        Self::from_secret(secret).map_err(|reason| SigningError::Malformed {
            path: "generated key".into(),
            reason,
        })
    }

    fn from_secret(secret: Secret) -> Result<Self, String> {
        let public = match &secret {
            Secret::Ed25519(sk) => {
                PublicKey::from_bytes(Algorithm::Ed25519, sk.verifying_key().as_bytes())
            }
            Secret::SlhDsa(sk) => {
                PublicKey::from_bytes(Algorithm::SlhDsaSha2_128s, &sk.as_ref().to_bytes())
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(ServerKey { secret, public })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `body` for `purpose` (the purpose's prefix is prepended here).
    pub fn sign(&self, purpose: Purpose, body: &[u8]) -> Result<Signature, SigningError> {
        let message = signed_message(purpose, body);
        let bytes = match &self.secret {
            Secret::Ed25519(sk) => {
                use ed25519_dalek::Signer as _;
                sk.sign(&message).to_bytes().to_vec()
            }
            // Hedged signing (FIPS 205's randomised variant): fresh randomness per signature.
            Secret::SlhDsa(sk) => sk
                .try_sign_with_context(&message, &[], Some(&random::<16>()?))
                .map_err(|e| SigningError::Sign(e.to_string()))?
                .to_vec(),
        };
        Signature::from_bytes(self.algorithm(), &bytes)
            .map_err(|e| SigningError::Sign(e.to_string()))
    }

    /// `ALGORITHM:BASE64` of the private key, as in `signing.key`.
    fn secret_text(&self) -> String {
        use base64::Engine as _;
        let bytes = match &self.secret {
            Secret::Ed25519(sk) => sk.to_bytes().to_vec(),
            Secret::SlhDsa(sk) => sk.to_vec(),
        };
        format!(
            "{}:{}\n",
            self.algorithm(),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn parse_secret(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let (name, b64) = text
            .trim()
            .split_once(':')
            .ok_or("expected ALGORITHM:BASE64, found no ':'")?;
        let algorithm: Algorithm = name
            .parse()
            .map_err(|e: infraos_api::signature::SignatureError| e.to_string())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("the part after '{algorithm}:' is not base64: {e}"))?;
        let secret = match algorithm {
            Algorithm::Ed25519 => {
                let seed = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    format!("an ed25519 private key is 32 bytes, found {}", bytes.len())
                })?;
                Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            Algorithm::SlhDsaSha2_128s => Secret::SlhDsa(
                slh_dsa::SigningKey::<slh_dsa::Sha2_128s>::try_from(bytes.as_slice()).map_err(
                    |_| {
                        format!(
                            "an {algorithm} private key is 64 bytes, found {}",
                            bytes.len()
                        )
                    },
                )?,
            ),
        };
        Self::from_secret(secret)
    }

    /// The data dir's key, if it has one; `signing.pub` is rewritten when missing and must
    /// match when present.
    pub fn load(dir: &Path) -> Result<Option<Self>, SigningError> {
        let key_path = dir.join(SIGNING_KEY);
        let text = match std::fs::read_to_string(&key_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::new(&key_path, e).into()),
        };
        let key = Self::parse_secret(&text).map_err(|reason| SigningError::Malformed {
            path: key_path.display().to_string(),
            reason,
        })?;
        let pub_path = dir.join(SIGNING_PUB);
        match std::fs::read_to_string(&pub_path) {
            Ok(text) => {
                if text.trim().parse::<PublicKey>().ok().as_ref() != Some(&key.public) {
                    return Err(SigningError::PairMismatch {
                        key_path: key_path.display().to_string(),
                        pub_path: pub_path.display().to_string(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => key.write_public(dir)?,
            Err(e) => return Err(FileError::new(&pub_path, e).into()),
        }
        Ok(Some(key))
    }

    fn write_public(&self, dir: &Path) -> Result<(), SigningError> {
        Ok(write_file(
            &dir.join(SIGNING_PUB),
            format!("{}\n", self.public).as_bytes(),
            0o644,
        )?)
    }

    /// The data dir's key, created with `algorithm` when there is none. Returns whether it was
    /// created. An existing key of another algorithm is an error (see the module comment).
    pub fn ensure(dir: &Path, algorithm: Algorithm) -> Result<(Self, bool), SigningError> {
        if let Some(key) = Self::load(dir)? {
            if key.algorithm() != algorithm {
                return Err(SigningError::AlgorithmChanged {
                    path: dir.join(SIGNING_KEY).display().to_string(),
                    configured: algorithm,
                    found: key.algorithm(),
                });
            }
            return Ok((key, false));
        }
        let key = Self::generate(algorithm)?;
        // The private key first: a crash in between leaves a key whose public half the next
        // load writes, never a public key without its private half.
        write_file(&dir.join(SIGNING_KEY), key.secret_text().as_bytes(), 0o600)?;
        key.write_public(dir)?;
        Ok((key, true))
    }
}

/// `signatureAlgorithm` in server.yaml, with the field named in the error (the YAML parser
/// names the line, not the key).
pub fn algorithm_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(d)?;
    name.parse()
        .map_err(|e| serde::de::Error::custom(format!("signatureAlgorithm: {e}")))
}

/// Records the public key in the store, or checks it against the one recorded: replicas that
/// each created their own key (old data dirs upgraded one by one) would sign the one chain
/// with different keys, and no pinned key would verify it.
pub async fn register(store: &dyn Store, key: &PublicKey, dir: &Path) -> Result<(), SigningError> {
    let text = key.to_string();
    let outcome = store
        .txn(
            Txn::new()
                .when(Compare::absent(STORE_KEY))
                .put(STORE_KEY, text.clone()),
        )
        .await?;
    if outcome.succeeded {
        return Ok(());
    }
    let recorded = store
        .get(STORE_KEY)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_default();
    if recorded == text {
        return Ok(());
    }
    Err(SigningError::ClusterMismatch {
        local: key.to_string(),
        cluster: recorded,
        dir: dir.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use infraos_api::signature::verify;

    #[test]
    fn keys_are_created_once_with_their_modes_and_reload() {
        for algorithm in Algorithm::ALL {
            let dir = tempfile::tempdir().unwrap();
            let (key, created) = ServerKey::ensure(dir.path(), algorithm).unwrap();
            assert!(created);
            let mode = |f: &str| {
                std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!((mode(SIGNING_KEY), mode(SIGNING_PUB)), (0o600, 0o644));
            let (again, created) = ServerKey::ensure(dir.path(), algorithm).unwrap();
            assert!(!created);
            assert_eq!(again.public_key(), key.public_key());
            let pinned: PublicKey = std::fs::read_to_string(dir.path().join(SIGNING_PUB))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(&pinned, key.public_key());

            let sig = again.sign(Purpose::AuditCheckpoint, b"body").unwrap();
            verify(&pinned, Purpose::AuditCheckpoint, b"body", &sig).unwrap();
            assert!(verify(&pinned, Purpose::Instruction, b"body", &sig).is_err());

            // A lost public half is written again; a foreign one is refused.
            std::fs::remove_file(dir.path().join(SIGNING_PUB)).unwrap();
            ServerKey::load(dir.path()).unwrap().unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.path().join(SIGNING_PUB)).unwrap(),
                format!("{pinned}\n")
            );
            let other = ServerKey::generate(algorithm).unwrap();
            other.write_public(dir.path()).unwrap();
            let err = ServerKey::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("does not hold the public key"), "{err}");
        }
    }

    #[test]
    fn the_algorithm_is_fixed_when_the_key_is_made() {
        let dir = tempfile::tempdir().unwrap();
        ServerKey::ensure(dir.path(), Algorithm::Ed25519).unwrap();
        let err = ServerKey::ensure(dir.path(), Algorithm::SlhDsaSha2_128s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("signatureAlgorithm: server.yaml asks for slh-dsa-sha2-128s but"),
            "{err}"
        );
    }

    #[test]
    fn malformed_key_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SIGNING_KEY), "ed25519:AAAA\n").unwrap();
        let err = ServerKey::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("signing.key: an ed25519 private key is 32 bytes, found 3"),
            "{err}"
        );
        std::fs::write(dir.path().join(SIGNING_KEY), "rsa:AAAA\n").unwrap();
        let err = ServerKey::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown signature algorithm \"rsa\""), "{err}");
    }

    #[tokio::test]
    async fn replicas_must_share_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = infraos_store::embedded::EmbeddedStore::open(
            &dir.path().join("store.redb"),
            Default::default(),
        )
        .unwrap();
        let a = ServerKey::generate(Algorithm::Ed25519).unwrap();
        let b = ServerKey::generate(Algorithm::Ed25519).unwrap();
        register(&store, a.public_key(), dir.path()).await.unwrap();
        register(&store, a.public_key(), dir.path()).await.unwrap();
        let err = register(&store, b.public_key(), dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the cluster's"), "{err}");
    }
}
