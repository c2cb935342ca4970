//! How API objects live in the store: keys, the stored form, and `resourceVersion`.
//!
//! Keys are `/registry/<plural>/<namespace>/<name>` for namespaced kinds and
//! `/registry/<plural>/<name>` for cluster-scoped ones (DESIGN §4). The stored JSON has no
//! `resourceVersion`: it is the key's `mod_revision`, set on the way out, so a write never
//! has to know its own revision in advance.

use bytes::Bytes;
use infraos_api::{Kind, KindInfo, Object};
use infraos_store::KeyValue;

use crate::error::ApiError;

/// Claims carry it until their allocation is released, so deleting a claim frees its
/// resources before the claim disappears.
pub const ALLOCATION_FINALIZER: &str = "infraos.io/allocation";

pub fn key(info: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if info.namespaced => format!("/registry/{}/{ns}/{name}", info.plural),
        _ => format!("/registry/{}/{name}", info.plural),
    }
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

pub fn decode_stored(kv: &KeyValue) -> Result<Stored, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    set_revision(&mut value, kv.mod_revision);
    Ok(Stored {
        value,
        bytes: kv.value.clone(),
        revision: kv.mod_revision,
    })
}

/// Decodes a stored object the control plane wrote into its typed form.
pub fn decode_typed<K: Kind>(kv: &KeyValue) -> Result<Object<K>, ApiError> {
    let mut object: Object<K> = infraos_api::object::decode_trusted(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    object.metadata.resource_version = Some(kv.mod_revision.to_string());
    Ok(object)
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
    let mut object = object.clone();
    object.metadata.resource_version = None;
    serde_json::to_vec(&object).unwrap_or_default()
}
