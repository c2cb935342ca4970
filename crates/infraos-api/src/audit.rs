//! The audit chain: records of who did what, each bound to its predecessor by a SHA-256 hash.
//!
//! ```text
//!   record n-1                     record n
//!   ┌──────────────────┐           ┌──────────────────────────────────────────────┐
//!   │ seq, entry, hash ├──────────►│ prevHash = hash(n-1)                          │
//!   └──────────────────┘           │ hash = H("infraos-audit-v1\0" ‖ seq ‖ prev ‖  │
//!                                  │          canonical_json(entry))               │
//!                                  └──────────────────────────────────────────────┘
//! ```
//! The payload is hashed in canonical JSON (object keys sorted, no whitespace) so a verifier
//! that parsed the record from any JSON rendering recomputes the same bytes. Changing,
//! removing or reordering a record breaks the hash of that record or of the next one.
//!
//! Hashes alone do not stop someone who can write the store from re-hashing the whole chain
//! after an edit, so the server signs it (DESIGN §6):
//!
//! ```text
//!   … record 999 ── record 1000 ── record 1001: checkpoint ──── record 1002 … record 1500
//!                   hash H₁₀₀₀      verb checkpoint, subject system:audit
//!                                   checkpoint {seq 1000, hash H₁₀₀₀, keyId, signature}
//!                                   signature over "infraos-audit-checkpoint-v1\0" ‖ 1000 ‖ H₁₀₀₀
//!
//!   export: records 1…1500, then {"kind": "AuditHead", seq 1500, hash H₁₅₀₀, time, signature}
//! ```
//! A checkpoint is itself a chain record, so dropping one breaks the chain, and it vouches for
//! every record up to the one it names. The records after the last checkpoint (the unsigned
//! tail) are vouched for only by a signed head, which the server makes on request for
//! `infraos audit export` and `infraos audit verify`; without it a truncated tail would go
//! unnoticed. [`SignedChainVerifier`] checks both with nothing but the server's public key.

use std::collections::VecDeque;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signature::{self, PublicKey, Purpose, Signature, SignatureError};
use crate::time::Time;

/// The hash that precedes the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
const DOMAIN: &[u8] = b"infraos-audit-v1\0";
/// The verb of checkpoint records.
pub const CHECKPOINT_VERB: &str = "checkpoint";
/// The subject of checkpoint records: the server's audit signer.
pub const CHECKPOINT_SUBJECT: &str = "system:audit";
/// The `kind` of a signed head.
pub const HEAD_KIND: &str = "AuditHead";

/// What an audit record names as its object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    // Fields in alphabetical order: see `AuditEntry::canonical_bytes`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The outcome of the audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditResult {
    /// HTTP-style status code: 2xx for success.
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One audited action. Never holds secrets: objects appear only as hashes.
///
/// Fields (here and in the nested types) are declared in alphabetical order of their JSON
/// names, so serializing the struct directly yields its canonical JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// SHA-256 (hex) of the stored object after the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_hash: Option<String>,
    /// SHA-256 (hex) of the stored object before the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_hash: Option<String>,
    /// Only in checkpoint records: the server's signature over an earlier record's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<AuditCheckpoint>,
    /// Where: the node concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub object: AuditObjectRef,
    pub result: AuditResult,
    /// The client's network address for API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who: `user:NAME`, `node:NAME`, `system:CONTROLLER`, or `anonymous` for a caller
    /// without credentials (a failed sign-in, a refused join), known only by `source`.
    pub subject: String,
    pub time: Time,
    /// What: create, update, patch, delete, renew, release, allocate, expire, …
    pub verb: String,
}

impl AuditEntry {
    /// The entry's canonical JSON, the bytes its chain hash covers. Equal to
    /// `canonical_json(&to_value(entry))` (a test holds it to that), without the detour.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The signed part of a checkpoint record: "record `seq` of this chain hashes to `hash`".
/// Through the chain, that vouches for every record up to `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditCheckpoint {
    // Fields in alphabetical order: see `AuditEntry::canonical_bytes`.
    /// The chain hash (hex) of record `seq`.
    pub hash: String,
    /// The signing key's [`PublicKey::key_id`]; not signed, it only makes a wrong key easy to
    /// tell from a changed record.
    pub key_id: String,
    pub seq: u64,
    /// Over [`checkpoint_body`] for [`Purpose::AuditCheckpoint`].
    pub signature: Signature,
}

/// The bytes a checkpoint signs (after its purpose's prefix): seq (u64 big-endian) ‖ hash.
pub fn checkpoint_body(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

/// The chain's head as the server saw it at `time`, signed: the last line of an export, and
/// what an online verification checks the records it fetched against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditHead {
    pub api_version: String,
    /// Always [`HEAD_KIND`]; it tells the head line of an export from the record lines.
    pub kind: String,
    pub seq: u64,
    /// The chain hash (hex) of record `seq` (zeros for an empty chain).
    pub hash: String,
    pub time: Time,
    pub key_id: String,
    /// Over [`head_body`] for [`Purpose::AuditHead`].
    pub signature: Signature,
}

/// The bytes a signed head signs (after its purpose's prefix):
/// seq (u64 big-endian) ‖ hash ‖ time in Unix milliseconds (i64 big-endian).
pub fn head_body(seq: u64, hash: &[u8; 32], time: Time) -> Vec<u8> {
    let mut out = checkpoint_body(seq, hash);
    out.extend_from_slice(&time.unix_millis().to_be_bytes());
    out
}

/// A chained record as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// The entry as JSON; kept untyped so a verifier never drops fields it does not know.
    pub entry: serde_json::Value,
}

/// Where and why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {reason}")]
pub struct ChainError {
    pub seq: u64,
    pub reason: String,
}

/// Serializes JSON with object keys sorted and no insignificant whitespace.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&serde_json::Value::String((*k).clone()), out);
                out.push(b':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Writing a scalar Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// SHA-256 of arbitrary bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chain hash of record `seq` whose predecessor hashed to `prev`.
pub fn chain_hash(seq: u64, prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(payload);
    h.finalize().into()
}

fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_str).ok()?;
    bytes.try_into().ok()
}

/// Incremental verifier: feed records in order; the first inconsistency is reported with
/// the sequence number of the record that is wrong.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: Option<u64>,
    prev: [u8; 32],
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier for a chain that starts at record 1 from the genesis hash.
    pub fn new() -> Self {
        ChainVerifier {
            expected_seq: Some(1),
            prev: GENESIS_HASH,
            checked: 0,
        }
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The sequence number of the last record verified (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.expected_seq.map_or(u64::MAX, |n| n - 1)
    }

    /// The hash of the last record verified (genesis if none).
    pub fn head_hash(&self) -> String {
        hex::encode(self.prev)
    }

    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainError> {
        let fail = |reason: String| ChainError {
            seq: record.seq,
            reason,
        };
        if let Some(expected) = self.expected_seq
            && record.seq != expected
        {
            return Err(ChainError {
                seq: expected,
                reason: format!(
                    "expected record {expected} next, found {} (a record was removed or reordered)",
                    record.seq
                ),
            });
        }
        let prev = decode_hash(&record.prev_hash)
            .ok_or_else(|| fail("prevHash is not a 32-byte hex hash".into()))?;
        if prev != self.prev {
            return Err(fail(
                "prevHash does not match the previous record's hash (a record was removed, reordered or changed)"
                    .into(),
            ));
        }
        let computed = chain_hash(record.seq, &prev, &canonical_json(&record.entry));
        if hex::encode(computed) != record.hash {
            return Err(fail(
                "hash does not match the record's content (the record was changed)".into(),
            ));
        }
        self.prev = computed;
        self.expected_seq = record.seq.checked_add(1);
        self.checked += 1;
        Ok(())
    }
}

/// What a verified chain amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// The chain hash (hex) of the last record.
    pub head_hash: String,
    pub checkpoints: u64,
    /// The last record a checkpoint vouched for (0: none).
    pub signed_through: u64,
    /// Records after `signed_through`: vouched for only by the signed head, when there is one.
    pub unsigned_tail: u64,
    /// When the signed head the chain ended on was made, if one was given.
    pub head_time: Option<Time>,
}

/// Verifies a chain and its checkpoints with the server's public key: feed records in order,
/// then [`finish`](SignedChainVerifier::finish) with the signed head. The first record at fault
/// is the error's `seq`.
#[derive(Debug, Clone)]
pub struct SignedChainVerifier {
    chain: ChainVerifier,
    key: PublicKey,
    /// Hashes of the records after the last checkpoint's, for the next checkpoint to name.
    unsigned: VecDeque<(u64, [u8; 32])>,
    signed_through: u64,
    checkpoints: u64,
}

impl SignedChainVerifier {
    pub fn new(key: PublicKey) -> Self {
        SignedChainVerifier {
            chain: ChainVerifier::new(),
            key,
            unsigned: VecDeque::new(),
            signed_through: 0,
            checkpoints: 0,
        }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainError> {
        self.chain.push(record)?;
        if let Some(checkpoint) = record.entry.get("checkpoint") {
            self.check_checkpoint(record.seq, checkpoint)?;
        }
        self.unsigned.push_back((record.seq, self.chain.prev));
        Ok(())
    }

    fn check_checkpoint(&mut self, seq: u64, value: &serde_json::Value) -> Result<(), ChainError> {
        let fail = |reason: String| ChainError { seq, reason };
        let cp: AuditCheckpoint = serde_json::from_value(value.clone())
            .map_err(|e| fail(format!("checkpoint is malformed: {e}")))?;
        let hash = decode_hash(&cp.hash)
            .ok_or_else(|| fail("checkpoint hash is not a 32-byte hex hash".into()))?;
        let body = checkpoint_body(cp.seq, &hash);
        signature::verify(&self.key, Purpose::AuditCheckpoint, &body, &cp.signature)
            .map_err(|e| fail(signature_failure("checkpoint", &e, &cp.key_id, &self.key)))?;
        if cp.seq <= self.signed_through {
            return Err(fail(format!(
                "checkpoint names record {}, but an earlier checkpoint already covers records up to {}",
                cp.seq, self.signed_through
            )));
        }
        let Some(&(_, actual)) = self.unsigned.iter().find(|(s, _)| *s == cp.seq) else {
            return Err(fail(format!(
                "checkpoint names record {}, which does not come before it",
                cp.seq
            )));
        };
        if actual != hash {
            return Err(fail(format!(
                "checkpoint signs record {} as hash {} but it hashes to {} (a record up to {} was changed and the chain re-hashed)",
                cp.seq,
                cp.hash,
                hex::encode(actual),
                cp.seq
            )));
        }
        self.signed_through = cp.seq;
        while self.unsigned.front().is_some_and(|(s, _)| *s <= cp.seq) {
            self.unsigned.pop_front();
        }
        self.checkpoints += 1;
        Ok(())
    }

    /// Ends verification: the last record must be the one the signed `head` names, with its
    /// hash. Without a head, the records after the last checkpoint stay unproven.
    pub fn finish(self, head: Option<&AuditHead>) -> Result<Verified, ChainError> {
        let last = self.chain.last_seq();
        if let Some(head) = head {
            let fail = |seq: u64, reason: String| ChainError { seq, reason };
            if head.kind != HEAD_KIND {
                return Err(fail(
                    head.seq,
                    format!("the signed head has kind {:?}, not {HEAD_KIND}", head.kind),
                ));
            }
            let hash = decode_hash(&head.hash).ok_or_else(|| {
                fail(
                    head.seq,
                    "the signed head's hash is not a 32-byte hex hash".into(),
                )
            })?;
            signature::verify(
                &self.key,
                Purpose::AuditHead,
                &head_body(head.seq, &hash, head.time),
                &head.signature,
            )
            .map_err(|e| {
                fail(
                    head.seq,
                    signature_failure("signed head", &e, &head.key_id, &self.key),
                )
            })?;
            if last < head.seq {
                return Err(fail(
                    last + 1,
                    format!(
                        "the chain ends after record {last} but the signed head names record {} (records from {} on were removed)",
                        head.seq,
                        last + 1
                    ),
                ));
            }
            if last > head.seq {
                return Err(fail(
                    head.seq + 1,
                    format!(
                        "record follows the signed head, which names record {} as the last",
                        head.seq
                    ),
                ));
            }
            if self.chain.prev != hash {
                return Err(fail(
                    head.seq,
                    format!(
                        "the signed head says record {} hashes to {} but it hashes to {} (a record was changed and the chain re-hashed)",
                        head.seq,
                        head.hash,
                        self.chain.head_hash()
                    ),
                ));
            }
        }
        Ok(Verified {
            records: self.chain.checked(),
            head_hash: self.chain.head_hash(),
            checkpoints: self.checkpoints,
            signed_through: self.signed_through,
            unsigned_tail: last.saturating_sub(self.signed_through),
            head_time: head.map(|h| h.time),
        })
    }
}

/// Why a signature failed, telling a foreign key from a changed message.
fn signature_failure(what: &str, e: &SignatureError, named: &str, key: &PublicKey) -> String {
    match e {
        SignatureError::Invalid { .. } if named != key.key_id() => format!(
            "{what} signature does not verify with public key {} (it names key {named}: signed with another key)",
            key.key_id()
        ),
        SignatureError::Invalid { .. } => format!(
            "{what} signature does not verify with public key {} (the signature or what it signs was changed)",
            key.key_id()
        ),
        other => format!("{what} signature: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let entry = serde_json::json!({"verb": "create", "seq": seq, "object": {"name": format!("c{seq}"), "kind": "Claim"}});
                let hash = chain_hash(seq, &prev, &canonical_json(&entry));
                let r = AuditRecord {
                    seq,
                    prev_hash: hex::encode(prev),
                    hash: hex::encode(hash),
                    entry,
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> Result<u64, ChainError> {
        let mut v = ChainVerifier::new();
        for r in records {
            v.push(r)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn entries_serialize_canonically() {
        let full = AuditEntry {
            after_hash: Some("a".into()),
            before_hash: Some("b".into()),
            checkpoint: Some(AuditCheckpoint {
                hash: "00".repeat(32),
                key_id: "k".into(),
                seq: 9,
                signature: Signature::from_bytes(signature::Algorithm::Ed25519, &[1; 64]).unwrap(),
            }),
            node: Some("n1".into()),
            object: AuditObjectRef {
                kind: "Claim".into(),
                name: "c".into(),
                namespace: Some("p".into()),
                subresource: Some("renew".into()),
                uid: Some("u".into()),
            },
            result: AuditResult {
                code: 200,
                reason: Some("ok".into()),
            },
            source: Some("127.0.0.1:1".into()),
            subject: "user:admin".into(),
            time: Time::from_unix_millis(1),
            verb: "renew".into(),
        };
        let sparse = AuditEntry {
            after_hash: None,
            before_hash: None,
            checkpoint: None,
            node: None,
            object: AuditObjectRef::default(),
            result: AuditResult::default(),
            source: None,
            ..full.clone()
        };
        for e in [full, sparse] {
            let via_value = canonical_json(&serde_json::to_value(&e).unwrap());
            assert_eq!(e.canonical_bytes(), via_value);
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,"x"],"c":null}}"#).unwrap();
        assert_eq!(canonical_json(&v), br#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)).unwrap(), 5);
    }

    #[test]
    fn detects_change_removal_and_reorder() {
        let mut changed = chain(5);
        changed[2].entry["verb"] = "delete".into();
        assert_eq!(verify(&changed).unwrap_err().seq, 3);

        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(verify(&removed).unwrap_err().seq, 3);

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert_eq!(verify(&reordered).unwrap_err().seq, 2);

        // Re-hashing a changed record does not help: the next record's prevHash breaks.
        let mut rehashed = chain(5);
        rehashed[2].entry["verb"] = "delete".into();
        let prev = decode_hash(&rehashed[2].prev_hash).unwrap();
        rehashed[2].hash = hex::encode(chain_hash(3, &prev, &canonical_json(&rehashed[2].entry)));
        assert_eq!(verify(&rehashed).unwrap_err().seq, 4);
    }

    /// Signs raw messages.
    type RawSigner = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// Signs like the server does, with a key from a fixed seed.
    struct TestSigner {
        algorithm: signature::Algorithm,
        sign: RawSigner,
        key: PublicKey,
    }

    impl TestSigner {
        fn new(algorithm: signature::Algorithm, seed: u8) -> Self {
            match algorithm {
                signature::Algorithm::Ed25519 => {
                    use ed25519_dalek::Signer as _;
                    let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
                    let key =
                        PublicKey::from_bytes(algorithm, sk.verifying_key().as_bytes()).unwrap();
                    TestSigner {
                        algorithm,
                        sign: Box::new(move |m| sk.sign(m).to_bytes().to_vec()),
                        key,
                    }
                }
                signature::Algorithm::SlhDsaSha2_128s => {
                    let sk = slh_dsa::SigningKey::<slh_dsa::Sha2_128s>::slh_keygen_internal(
                        &[seed; 16],
                        &[seed ^ 1; 16],
                        &[seed ^ 2; 16],
                    );
                    let key = PublicKey::from_bytes(algorithm, &sk.as_ref().to_bytes()).unwrap();
                    TestSigner {
                        algorithm,
                        sign: Box::new(move |m| {
                            sk.try_sign_with_context(m, &[], None).unwrap().to_vec()
                        }),
                        key,
                    }
                }
            }
        }

        fn sign(&self, purpose: Purpose, body: &[u8]) -> Signature {
            let bytes = (self.sign)(&signature::signed_message(purpose, body));
            Signature::from_bytes(self.algorithm, &bytes).unwrap()
        }

        fn checkpoint(&self, seq: u64, hash: [u8; 32]) -> serde_json::Value {
            let cp = AuditCheckpoint {
                hash: hex::encode(hash),
                key_id: self.key.key_id(),
                seq,
                signature: self.sign(Purpose::AuditCheckpoint, &checkpoint_body(seq, &hash)),
            };
            serde_json::json!({"verb": CHECKPOINT_VERB, "subject": CHECKPOINT_SUBJECT, "checkpoint": cp})
        }

        fn head(&self, records: &[AuditRecord]) -> AuditHead {
            let (seq, hash) = records
                .last()
                .map(|r| (r.seq, decode_hash(&r.hash).unwrap()))
                .unwrap_or((0, GENESIS_HASH));
            let time = Time::from_unix_millis(1_700_000_000_000);
            AuditHead {
                api_version: "infraos.io/v1".into(),
                kind: HEAD_KIND.into(),
                seq,
                hash: hex::encode(hash),
                time,
                key_id: self.key.key_id(),
                signature: self.sign(Purpose::AuditHead, &head_body(seq, &hash, time)),
            }
        }
    }

    /// Re-links `records` from the first one on (what someone who can write the store does
    /// after an edit), with checkpoints re-signed by `signer` when one is given.
    fn relink(records: &mut [AuditRecord], signer: Option<&TestSigner>) {
        let mut prev = GENESIS_HASH;
        for i in 0..records.len() {
            if let Some(s) = signer
                && records[i].entry.get("checkpoint").is_some()
            {
                let covered = &records[i - 1];
                let entry = s.checkpoint(covered.seq, decode_hash(&covered.hash).unwrap());
                records[i].entry = entry;
            }
            let r = &mut records[i];
            let hash = chain_hash(r.seq, &prev, &canonical_json(&r.entry));
            r.prev_hash = hex::encode(prev);
            r.hash = hex::encode(hash);
            prev = hash;
        }
    }

    /// `n` records with a checkpoint after every `every`-th, signed by `signer`.
    fn signed_chain(n: u64, every: u64, signer: &TestSigner) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut prev = GENESIS_HASH;
        let mut since = 0;
        for i in 1..=n {
            let seq = out.len() as u64 + 1;
            let entry = if since == every {
                since = 0;
                signer.checkpoint(seq - 1, prev)
            } else {
                since += 1;
                serde_json::json!({"verb": "create", "n": i, "object": {"name": format!("c{i}"), "kind": "Claim"}})
            };
            let hash = chain_hash(seq, &prev, &canonical_json(&entry));
            out.push(AuditRecord {
                seq,
                prev_hash: hex::encode(prev),
                hash: hex::encode(hash),
                entry,
            });
            prev = hash;
        }
        out
    }

    fn verify_signed(
        key: &PublicKey,
        records: &[AuditRecord],
        head: Option<&AuditHead>,
    ) -> Result<Verified, ChainError> {
        let mut v = SignedChainVerifier::new(key.clone());
        for r in records {
            v.push(r)?;
        }
        v.finish(head)
    }

    #[test]
    fn signed_chains_verify_with_both_algorithms() {
        for algorithm in signature::Algorithm::ALL {
            let signer = TestSigner::new(algorithm, 5);
            // Checkpoints at 5 and 10 (covering 4 and 9); 12 is the head.
            let records = signed_chain(12, 4, &signer);
            let head = signer.head(&records);
            let v = verify_signed(&signer.key, &records, Some(&head)).unwrap();
            assert_eq!(
                (v.records, v.checkpoints, v.signed_through, v.unsigned_tail),
                (12, 2, 9, 3),
                "{algorithm}"
            );
            assert_eq!(v.head_time, Some(head.time));
            // Without the head the tail is unproven, but nothing is wrong.
            assert_eq!(
                verify_signed(&signer.key, &records, None)
                    .unwrap()
                    .unsigned_tail,
                3
            );
        }
    }

    #[test]
    fn tampering_with_a_signed_chain_names_the_record() {
        let signer = TestSigner::new(signature::Algorithm::Ed25519, 1);
        let forger = TestSigner::new(signature::Algorithm::Ed25519, 2);
        let records = signed_chain(12, 4, &signer);
        let head = signer.head(&records);
        let key = &signer.key;
        let err = |records: &[AuditRecord], head: Option<&AuditHead>| {
            verify_signed(key, records, head).unwrap_err()
        };

        let mut edited = records.clone();
        edited[2].entry["verb"] = "delete".into();
        let e = err(&edited, Some(&head));
        assert_eq!(e.seq, 3);
        assert!(e.reason.contains("hash does not match"), "{e}");

        let mut dropped = records.clone();
        dropped.remove(4); // the first checkpoint
        assert_eq!(err(&dropped, Some(&head)).seq, 5);

        let mut swapped = records.clone();
        swapped.swap(6, 7);
        assert_eq!(err(&swapped, Some(&head)).seq, 7);

        // Truncated: the head names a record that is gone; without a head it is unproven.
        let truncated = &records[..10];
        let e = err(truncated, Some(&head));
        assert_eq!(e.seq, 11);
        assert!(e.reason.contains("records from 11 on were removed"), "{e}");
        assert_eq!(
            verify_signed(key, truncated, None).unwrap().unsigned_tail,
            1
        );

        // Edited and re-linked: the chain holds, the checkpoint after the edit does not.
        let mut relinked = records.clone();
        relinked[2].entry["verb"] = "delete".into();
        relink(&mut relinked, None);
        let e = err(&relinked, Some(&head));
        assert_eq!(e.seq, 5);
        assert!(
            e.reason.contains("checkpoint signs record 4 as hash"),
            "{e}"
        );

        // Edited after the last checkpoint and re-linked: only the signed head catches it.
        let mut tail = records.clone();
        tail[11].entry["verb"] = "delete".into();
        relink(&mut tail, None);
        let e = err(&tail, Some(&head));
        assert_eq!(e.seq, 12);
        assert!(e.reason.contains("the signed head says record 12"), "{e}");

        // Edited, re-linked and every signature redone with another key.
        let mut forged = records.clone();
        forged[2].entry["verb"] = "delete".into();
        relink(&mut forged, Some(&forger));
        let forged_head = forger.head(&forged);
        verify_signed(&forger.key, &forged, Some(&forged_head)).unwrap();
        let e = err(&forged, Some(&forged_head));
        assert_eq!(e.seq, 5);
        assert!(e.reason.contains("signed with another key"), "{e}");
        // Even when the forger copies the real key id.
        let mut copied = forged.clone();
        copied[4].entry["checkpoint"]["keyId"] = key.key_id().into();
        relink(&mut copied, None);
        let e = err(&copied, Some(&forged_head));
        assert_eq!(e.seq, 5);
        assert!(e.reason.contains("what it signs was changed"), "{e}");

        // A head from another key, on an intact chain.
        let e = err(&records, Some(&forger.head(&records)));
        assert_eq!(e.seq, 12);
        assert!(e.reason.starts_with("signed head signature"), "{e}");
    }

    #[test]
    fn checkpoint_signatures_do_not_pass_as_heads() {
        let signer = TestSigner::new(signature::Algorithm::Ed25519, 1);
        let records = signed_chain(3, 10, &signer);
        let mut head = signer.head(&records);
        let hash = decode_hash(&head.hash).unwrap();
        head.signature = signer.sign(Purpose::AuditCheckpoint, &head_body(3, &hash, head.time));
        assert!(verify_signed(&signer.key, &records, Some(&head)).is_err());
    }
}
