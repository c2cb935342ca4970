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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::time::Time;

/// The hash that precedes the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
const DOMAIN: &[u8] = b"infraos-audit-v1\0";

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
    /// Where: the node concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub object: AuditObjectRef,
    pub result: AuditResult,
    /// The client's network address for API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who: `user:NAME`, `node:NAME` or `system:CONTROLLER`.
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
}
