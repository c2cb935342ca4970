//! Server signatures, the verifying half: the algorithms, the text form of public keys and
//! signatures, and the domain-separated messages that get signed (DESIGN §6).
//!
//! ```text
//!   public key   ed25519:BASE64(32 bytes)      slh-dsa-sha2-128s:BASE64(32 bytes)
//!   signature    ed25519:BASE64(64 bytes)      slh-dsa-sha2-128s:BASE64(7856 bytes)
//!   signed       DOMAIN(purpose) ‖ body        e.g. "infraos-audit-checkpoint-v1\0" ‖ seq ‖ hash
//! ```
//! Verification is pure so that the CLI (offline, from an export file) and the agent can use
//! it with nothing but a pinned public key. Signing needs the private key and randomness, and
//! lives in the server (`infraos_server::signing`).
//!
//! Every message carries a fixed prefix naming its purpose, and [`verify`] takes the purpose,
//! so a signature made for one purpose (an audit checkpoint) never verifies as another (an
//! instruction to an agent), whatever the bytes after the prefix.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A signature algorithm the server can sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Ed25519 (RFC 8032): 64-byte signatures, tens of microseconds to sign or verify.
    #[default]
    Ed25519,
    /// SLH-DSA-SHA2-128s (FIPS 205), hash-based and believed to resist quantum computers. The
    /// "s" (small) set over "f" (fast): 7,856-byte signatures instead of 17,088 and faster
    /// verification, paid for with slower signing, which the server does rarely (a checkpoint
    /// every N records or T seconds) while every verifier checks every checkpoint.
    SlhDsaSha2_128s,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Ed25519, Algorithm::SlhDsaSha2_128s];

    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::SlhDsaSha2_128s => "slh-dsa-sha2-128s",
        }
    }

    /// Length of a public key in bytes.
    pub const fn public_key_len(self) -> usize {
        match self {
            Algorithm::Ed25519 => 32,
            Algorithm::SlhDsaSha2_128s => 32,
        }
    }

    /// Length of a signature in bytes.
    pub const fn signature_len(self) -> usize {
        match self {
            Algorithm::Ed25519 => 64,
            Algorithm::SlhDsaSha2_128s => 7856,
        }
    }

    fn known() -> String {
        Algorithm::ALL.map(Algorithm::name).join(", ")
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| SignatureError::UnknownAlgorithm {
                name: s.to_string(),
                known: Algorithm::known(),
            })
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Algorithm {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SignatureAlgorithm".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": ["ed25519", "slh-dsa-sha2-128s"]})
    }
}

/// What a signature is for. Each purpose has its own prefix in the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A checkpoint record in the audit chain: "record `seq` hashes to `hash`".
    AuditCheckpoint,
    /// The chain's head at a moment, served for exports: "at `time` the head was `seq`, `hash`".
    AuditHead,
    /// An instruction the agent verifies before acting (approved high-risk operations).
    Instruction,
}

impl Purpose {
    /// The prefix of every message signed for this purpose. Never change one: old signatures
    /// would stop verifying. A new layout gets a new version suffix.
    pub const fn domain(self) -> &'static [u8] {
        match self {
            Purpose::AuditCheckpoint => b"infraos-audit-checkpoint-v1\0",
            Purpose::AuditHead => b"infraos-audit-head-v1\0",
            Purpose::Instruction => b"infraos-instruction-v1\0",
        }
    }
}

/// The exact bytes signed for `purpose` over `body`.
pub fn signed_message(purpose: Purpose, body: &[u8]) -> Vec<u8> {
    let domain = purpose.domain();
    let mut out = Vec::with_capacity(domain.len() + body.len());
    out.extend_from_slice(domain);
    out.extend_from_slice(body);
    out
}

/// Why a key or signature did not parse, or a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{what}: expected ALGORITHM:BASE64 (e.g. ed25519:…), found no ':'")]
    MissingAlgorithm { what: &'static str },
    #[error("unknown signature algorithm {name:?} (known: {known})")]
    UnknownAlgorithm { name: String, known: String },
    #[error("{what}: the part after '{algorithm}:' is not base64: {reason}")]
    Base64 {
        what: &'static str,
        algorithm: Algorithm,
        reason: String,
    },
    #[error("{what}: {algorithm} needs {expected} bytes, found {found}")]
    Length {
        what: &'static str,
        algorithm: Algorithm,
        expected: usize,
        found: usize,
    },
    #[error("public key: not a valid {algorithm} key")]
    InvalidKey { algorithm: Algorithm },
    #[error("the signature is {signature} but the public key is {key}")]
    AlgorithmMismatch {
        key: Algorithm,
        signature: Algorithm,
    },
    #[error("the signature does not verify with public key {key_id}")]
    Invalid { key_id: String },
}

/// `ALGORITHM:BASE64` into its parts, checking the length the algorithm needs.
fn parse_text(
    what: &'static str,
    text: &str,
    len: fn(Algorithm) -> usize,
) -> Result<(Algorithm, Vec<u8>), SignatureError> {
    let text = text.trim();
    let (name, b64) = text
        .split_once(':')
        .ok_or(SignatureError::MissingAlgorithm { what })?;
    let algorithm: Algorithm = name.parse()?;
    let bytes = BASE64
        .decode(b64.trim())
        .map_err(|e| SignatureError::Base64 {
            what,
            algorithm,
            reason: e.to_string(),
        })?;
    if bytes.len() != len(algorithm) {
        return Err(SignatureError::Length {
            what,
            algorithm,
            expected: len(algorithm),
            found: bytes.len(),
        });
    }
    Ok((algorithm, bytes))
}

/// A server's public key. Constructing one checks that it is a usable key of its algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl PublicKey {
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, SignatureError> {
        if bytes.len() != algorithm.public_key_len() {
            return Err(SignatureError::Length {
                what: "public key",
                algorithm,
                expected: algorithm.public_key_len(),
                found: bytes.len(),
            });
        }
        let valid = match algorithm {
            Algorithm::Ed25519 => <[u8; 32]>::try_from(bytes)
                .ok()
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .is_some(),
            Algorithm::SlhDsaSha2_128s => {
                slh_dsa::VerifyingKey::<slh_dsa::Sha2_128s>::try_from(bytes).is_ok()
            }
        };
        if !valid {
            return Err(SignatureError::InvalidKey { algorithm });
        }
        Ok(PublicKey {
            algorithm,
            bytes: bytes.to_vec(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A short fingerprint, the first 8 bytes of SHA-256 over the text form, as hex: what
    /// signatures name so that a wrong key is reported as such, not as a bad signature.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.to_string().as_bytes());
        hex::encode(&digest[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, bytes) = parse_text("public key", s, Algorithm::public_key_len)?;
        PublicKey::from_bytes(algorithm, &bytes)
    }
}

/// A signature in its text form's parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl Signature {
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, SignatureError> {
        if bytes.len() != algorithm.signature_len() {
            return Err(SignatureError::Length {
                what: "signature",
                algorithm,
                expected: algorithm.signature_len(),
                found: bytes.len(),
            });
        }
        Ok(Signature {
            algorithm,
            bytes: bytes.to_vec(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({}, {} bytes)",
            self.algorithm,
            self.bytes.len()
        )
    }
}

impl FromStr for Signature {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, bytes) = parse_text("signature", s, Algorithm::signature_len)?;
        Ok(Signature { algorithm, bytes })
    }
}

macro_rules! serde_as_text {
    ($t:ty, $name:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "pattern": "^[a-z0-9-]+:[A-Za-z0-9+/=]+$"})
            }
        }
    };
}

serde_as_text!(PublicKey, "PublicKey");
serde_as_text!(Signature, "Signature");

/// Checks that `signature` was made by `key`'s private half over `body` for `purpose`.
pub fn verify(
    key: &PublicKey,
    purpose: Purpose,
    body: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    if key.algorithm != signature.algorithm {
        return Err(SignatureError::AlgorithmMismatch {
            key: key.algorithm,
            signature: signature.algorithm,
        });
    }
    let message = signed_message(purpose, body);
    let invalid = || SignatureError::Invalid {
        key_id: key.key_id(),
    };
    match key.algorithm {
        Algorithm::Ed25519 => {
            let bytes = <[u8; 32]>::try_from(key.bytes.as_slice()).map_err(|_| invalid())?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| invalid())?;
            let sig =
                ed25519_dalek::Signature::from_slice(&signature.bytes).map_err(|_| invalid())?;
            // Strict: rejects small-order keys and non-canonical signatures (malleability).
            vk.verify_strict(&message, &sig).map_err(|_| invalid())
        }
        Algorithm::SlhDsaSha2_128s => {
            use slh_dsa::signature::Verifier as _;
            let vk = slh_dsa::VerifyingKey::<slh_dsa::Sha2_128s>::try_from(key.bytes.as_slice())
                .map_err(|_| invalid())?;
            let sig =
                slh_dsa::Signature::<slh_dsa::Sha2_128s>::try_from(signature.bytes.as_slice())
                    .map_err(|_| invalid())?;
            vk.verify(&message, &sig).map_err(|_| invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    //! The signing half lives in the server; these tests sign with the crates directly.
    use super::*;

    /// Signs raw messages.
    type RawSigner = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// A key pair of `algorithm` from a fixed seed: (public key, a signer over raw messages).
    fn keypair(algorithm: Algorithm, seed: u8) -> (PublicKey, RawSigner) {
        match algorithm {
            Algorithm::Ed25519 => {
                use ed25519_dalek::Signer as _;
                let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
                let pk = PublicKey::from_bytes(algorithm, sk.verifying_key().as_bytes()).unwrap();
                (pk, Box::new(move |m| sk.sign(m).to_bytes().to_vec()))
            }
            Algorithm::SlhDsaSha2_128s => {
                let sk = slh_dsa::SigningKey::<slh_dsa::Sha2_128s>::slh_keygen_internal(
                    &[seed; 16],
                    &[seed.wrapping_add(1); 16],
                    &[seed.wrapping_add(2); 16],
                );
                let pk =
                    PublicKey::from_bytes(algorithm, &sk.as_ref().to_bytes()).expect("public key");
                (
                    pk,
                    Box::new(move |m| sk.try_sign_with_context(m, &[], None).unwrap().to_vec()),
                )
            }
        }
    }

    fn sign(
        signer: &dyn Fn(&[u8]) -> Vec<u8>,
        algorithm: Algorithm,
        purpose: Purpose,
        body: &[u8],
    ) -> Signature {
        Signature::from_bytes(algorithm, &signer(&signed_message(purpose, body))).unwrap()
    }

    #[test]
    fn both_algorithms_verify_and_reject_forgeries() {
        for algorithm in Algorithm::ALL {
            let (pk, signer) = keypair(algorithm, 7);
            let (other_pk, other_signer) = keypair(algorithm, 9);
            let body = b"seq and hash";
            let sig = sign(&*signer, algorithm, Purpose::AuditCheckpoint, body);
            verify(&pk, Purpose::AuditCheckpoint, body, &sig).unwrap();
            // Text forms round-trip.
            let again: Signature = sig.to_string().parse().unwrap();
            assert_eq!(again, sig);
            let pk_again: PublicKey = pk.to_string().parse().unwrap();
            assert_eq!(pk_again, pk);

            // Another body, another purpose, another key, a flipped bit: all refused.
            assert!(matches!(
                verify(&pk, Purpose::AuditCheckpoint, b"seq and hasH", &sig),
                Err(SignatureError::Invalid { .. })
            ));
            assert!(verify(&pk, Purpose::Instruction, body, &sig).is_err());
            assert!(verify(&pk, Purpose::AuditHead, body, &sig).is_err());
            let forged = sign(&*other_signer, algorithm, Purpose::AuditCheckpoint, body);
            verify(&other_pk, Purpose::AuditCheckpoint, body, &forged).unwrap();
            let err = verify(&pk, Purpose::AuditCheckpoint, body, &forged).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "the signature does not verify with public key {}",
                    pk.key_id()
                )
            );
            let mut flipped = sig.as_bytes().to_vec();
            flipped[10] ^= 1;
            let flipped = Signature::from_bytes(algorithm, &flipped).unwrap();
            assert!(verify(&pk, Purpose::AuditCheckpoint, body, &flipped).is_err());
        }
    }

    #[test]
    fn a_signature_is_bound_to_its_algorithm() {
        let (ed, ed_signer) = keypair(Algorithm::Ed25519, 1);
        let (slh, _) = keypair(Algorithm::SlhDsaSha2_128s, 1);
        let sig = sign(&*ed_signer, Algorithm::Ed25519, Purpose::AuditHead, b"x");
        verify(&ed, Purpose::AuditHead, b"x", &sig).unwrap();
        assert_eq!(
            verify(&slh, Purpose::AuditHead, b"x", &sig).unwrap_err(),
            SignatureError::AlgorithmMismatch {
                key: Algorithm::SlhDsaSha2_128s,
                signature: Algorithm::Ed25519
            }
        );
    }

    #[test]
    fn domains_differ_and_end_in_nul() {
        let all = [
            Purpose::AuditCheckpoint,
            Purpose::AuditHead,
            Purpose::Instruction,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.domain().ends_with(b"\0"));
            for b in &all[i + 1..] {
                // No prefix of another: a body can never make one purpose's message another's.
                assert!(!a.domain().starts_with(b.domain()) && !b.domain().starts_with(a.domain()));
            }
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<PublicKey>().unwrap_err().to_string();
        assert_eq!(
            err("AAAA"),
            "public key: expected ALGORITHM:BASE64 (e.g. ed25519:…), found no ':'"
        );
        assert_eq!(
            err("rsa:AAAA"),
            "unknown signature algorithm \"rsa\" (known: ed25519, slh-dsa-sha2-128s)"
        );
        assert!(
            err("ed25519:!!").starts_with("public key: the part after 'ed25519:' is not base64")
        );
        assert_eq!(
            err("ed25519:AAAA"),
            "public key: ed25519 needs 32 bytes, found 3"
        );
        assert_eq!(
            "slh-dsa-sha2-128s:AAAA"
                .parse::<Signature>()
                .unwrap_err()
                .to_string(),
            "signature: slh-dsa-sha2-128s needs 7856 bytes, found 3"
        );
        // Surrounding whitespace (a key file's newline) is fine.
        let (pk, _) = keypair(Algorithm::Ed25519, 3);
        assert_eq!(format!(" {pk}\n").parse::<PublicKey>().unwrap(), pk);
        assert_eq!(pk.key_id().len(), 16);
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), a);
        }
    }
}
