//! How API objects live in the store: keys, the stored form, and `resourceVersion`.
//!
//! Keys are `/registry/<plural>/<namespace>/<name>` for namespaced kinds and
//! `/registry/<plural>/<name>` for cluster-scoped ones (DESIGN §4). The stored JSON has no
//! `resourceVersion`: it is the key's `mod_revision`, set on the way out, so a write never
//! has to know its own revision in advance.

use bytes::Bytes;
use infraos_api::{Kind, KindInfo, Object};
use infraos_store::KeyValue;

use crate::ControlError;

/// Claims carry it until their allocation is released, so deleting a claim frees its
/// resources before the claim disappears.
pub const ALLOCATION_FINALIZER: &str = "infraos.io/allocation";

pub fn key(info: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{}/{ns}/{name}", info.plural),
        _ => format!("/registry/{}/{name}", info.plural),
    }
}

/// `namespace/name` from a key `/registry/<plural>/<namespace>/<name>`, or the name of a
/// cluster-scoped object.
pub fn object_id(key: &str) -> String {
    let mut parts = key.trim_start_matches("/registry/").splitn(2, '/');
    parts.next();
    parts.next().unwrap_or_default().to_string()
}

/// The prefix of all objects of a kind, or of one namespace's.
pub fn prefix(info: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{}/{ns}/", info.plural),
        _ => format!("/registry/{}/", info.plural),
    }
}

/// An object read from the store.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The object with `metadata.resourceVersion` set.
    pub value: serde_json::Value,
    /// The bytes as stored (what audit hashes).
    pub bytes: Bytes,
    pub revision: u64,
}

pub fn decode_stored(kv: &KeyValue) -> Result<Stored, ControlError> {
    let mut value: serde_json::Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ControlError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    set_revision(&mut value, kv.mod_revision);
    Ok(Stored {
        value,
        bytes: kv.value.clone(),
        revision: kv.mod_revision,
    })
}

/// Decodes a stored object the control plane wrote into its typed form. Its revision is
/// `kv.mod_revision`; `metadata.resourceVersion` stays unset, as in the stored form.
pub fn decode_typed<K: Kind>(kv: &KeyValue) -> Result<Object<K>, ControlError> {
    infraos_api::object::decode_trusted(&kv.value)
        .map_err(|e| ControlError::internal(format!("stored object {} is corrupt: {e}", kv.key)))
}

/// The stored JSON with `resourceVersion` spliced into its metadata, without parsing it.
///
/// Stored objects are written only by this server's serializers, which emit `apiVersion`,
/// `kind` (plain identifiers) and then `"metadata":{`, so the first occurrence is the
/// envelope's. Anything else is parsed and re-serialized.
pub fn with_revision(stored: &[u8], revision: u64) -> bytes::Bytes {
    const METADATA: &[u8] = b"\"metadata\":{";
    if let Some(at) = stored.windows(METADATA.len()).position(|w| w == METADATA) {
        let insert_at = at + METADATA.len();
        let field = format!("\"resourceVersion\":\"{revision}\"");
        let mut out = Vec::with_capacity(stored.len() + field.len() + 1);
        out.extend_from_slice(&stored[..insert_at]);
        out.extend_from_slice(field.as_bytes());
        if stored.get(insert_at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&stored[insert_at..]);
        return out.into();
    }
    match serde_json::from_slice::<serde_json::Value>(stored) {
        Ok(mut v) => {
            set_revision(&mut v, revision);
            serde_json::to_vec(&v).unwrap_or_default().into()
        }
        Err(_) => bytes::Bytes::copy_from_slice(stored),
    }
}

pub fn set_revision(value: &mut serde_json::Value, revision: u64) {
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("resourceVersion".into(), revision.to_string().into());
    }
}

/// The stored form of an object: without `resourceVersion`.
pub fn encode_for_store(value: &serde_json::Value) -> Vec<u8> {
    let mut value = value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The stored form of a typed object.
pub fn encode_typed<K: Kind>(object: &Object<K>) -> Vec<u8> {
    if object.metadata.resource_version.is_none() {
        return serde_json::to_vec(object).unwrap_or_default();
    }
    let mut object = object.clone();
    encode_typed_mut(&mut object)
}

/// The stored form of an object the caller owns: like [`encode_typed`] without copying the
/// object to leave out its resource version (the store keeps that as the record's revision).
pub fn encode_typed_mut<K: Kind>(object: &mut Object<K>) -> Vec<u8> {
    let resource_version = object.metadata.resource_version.take();
    let bytes = serde_json::to_vec(&*object).unwrap_or_default();
    object.metadata.resource_version = resource_version;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API hands the claim it admitted to the scheduler's watch instead of the stored
    /// bytes (`infraos_store::Decoded`): that is sound only if decoding the stored form gives
    /// the same claim back, for every field a claim can carry.
    #[test]
    fn a_claim_decoded_from_its_stored_form_equals_the_claim_admitted() {
        let body = serde_json::json!({
            "apiVersion": "infraos.dev/v1", "kind": "Claim",
            "metadata": {"name": "train", "namespace": "ml", "labels": {"team": "a"},
                         "annotations": {"note": "x"}, "uid": "u-1", "generation": 1,
                         "finalizers": ["infraos.dev/allocation"],
                         "creationTimestamp": "2026-11-29T10:00:00.123Z"},
            "spec": {
                "requests": [
                    {"name": "main", "class": "compute", "amount": {"cpu": "8", "memory": "64Gi"}},
                    {"name": "accel", "class": "gpu", "count": 2,
                     "selector": "item.attributes.model == \"H100\" && item.attributes.memoryGiB >= 80"}
                ],
                "selector": "zone in (east,west),!legacy",
                "topology": {"colocate": ["zone"]},
                "lease": {"duration": "2h", "renewPolicy": "Manual"},
                "priorityClassName": "high", "priority": 1000, "queue": "q",
                "group": {"name": "g", "minMembers": 2},
                "tolerations": [{"key": "reserved", "operator": "Exists"}],
                "affinity": [{"selector": "app=db", "topologyKey": "zone", "preferred": true}],
                "antiAffinity": [{"selector": "app=web", "topologyKey": "node"}],
                "topologySpread": [{"selector": "app=web", "topologyKey": "zone", "maxSkew": 1}],
                "scoring": {"weights": {"cost": 0.25, "binpack": 3.0}, "near": {"zone": "east"}}
            },
            "status": {"phase": "Pending", "lastTransitionTime": "2026-11-29T10:00:00.123Z"}
        });
        let admitted: Object<infraos_api::kinds::ClaimSpec> = serde_json::from_value(body).unwrap();
        let stored = encode_typed(&admitted);
        let kv = infraos_store::KeyValue {
            key: "/registry/claims/ml/train".into(),
            value: stored.into(),
            create_revision: 7,
            mod_revision: 7,
            version: 1,
        };
        let decoded = decode_typed::<infraos_api::kinds::ClaimSpec>(&kv).unwrap();
        // Objects have no `PartialEq`; their Debug form shows every field, serialized or not.
        assert_eq!(format!("{decoded:?}"), format!("{admitted:?}"));
    }

    #[test]
    fn an_owned_object_encodes_as_a_borrowed_one_and_keeps_its_revision() {
        let mut claim: Object<infraos_api::kinds::ClaimSpec> =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "infraos.dev/v1", "kind": "Claim",
                "metadata": {"name": "c", "namespace": "p", "resourceVersion": "42"},
                "spec": {"requests": [{"name": "cpu", "class": "cpu", "count": 1}]}
            }))
            .unwrap();
        let borrowed = encode_typed(&claim);
        assert_eq!(encode_typed_mut(&mut claim), borrowed);
        assert!(!String::from_utf8_lossy(&borrowed).contains("resourceVersion"));
        assert_eq!(claim.metadata.resource_version.as_deref(), Some("42"));
    }

    #[test]
    fn revision_splice_matches_a_full_round_trip() {
        for stored in [
            r#"{"apiVersion":"infraos.io/v1","kind":"Tenant","metadata":{"name":"a","labels":{"x":"y"}},"spec":{}}"#,
            r#"{"apiVersion":"infraos.io/v1","kind":"Tenant","metadata":{},"spec":{}}"#,
            r#"{"kind":"Odd","spec":{"metadata":1}}"#,
        ] {
            let spliced: serde_json::Value =
                serde_json::from_slice(&with_revision(stored.as_bytes(), 42)).unwrap();
            let mut parsed: serde_json::Value = serde_json::from_str(stored).unwrap();
            set_revision(&mut parsed, 42);
            assert_eq!(spliced, parsed, "{stored}");
        }
    }
}
