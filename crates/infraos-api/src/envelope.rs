//! The typed object envelope (`apiVersion`, `kind`, `metadata`, `spec`, `status`), the
//! [`Kind`] trait every kind implements, and decoding with field-path errors.
//!
//! Knows no kind: the kinds (`crate::kinds`) implement [`Kind`], and their one registry
//! (`crate::registry`, invoked in `kinds.rs`) builds the list of kinds and [`TypedObject`]
//! (re-exported with this module's items as `crate::object`).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::names;
use crate::validation::{Errors, ValidationErrors};

pub const API_GROUP: &str = "infraos.io";
pub const API_VERSION: &str = "infraos.io/v1";

/// Static facts about a kind: its names in URLs and the CLI, and its scope.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    /// Namespaced (project-scoped) or cluster-scoped.
    pub namespaced: bool,
    /// Whether users may create, update and delete it (Allocations are control-plane only).
    pub user_writable: bool,
}

/// A kind's spec type, binding it to its status type and validation.
pub trait Kind:
    Serialize + DeserializeOwned + Clone + Default + JsonSchema + Send + Sync + std::fmt::Debug
{
    type Status: Serialize
        + DeserializeOwned
        + Clone
        + Default
        + JsonSchema
        + Send
        + Sync
        + std::fmt::Debug;
    const INFO: &'static KindInfo;

    /// Checks what serde cannot: cross-field rules, ranges, references by name.
    fn validate(_object: &Object<Self>, _errors: &mut Errors) {}
}

/// An object of kind `K` with the Kubernetes envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(
    serialize = "K: Serialize, K::Status: Serialize",
    deserialize = "K: DeserializeOwned, K::Status: DeserializeOwned"
))]
pub struct Object<K: Kind> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: K,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<K::Status>,
}

impl<K: Kind> Object<K> {
    /// A new object with the right apiVersion and kind.
    pub fn new(name: impl Into<String>, namespace: Option<&str>, spec: K) -> Self {
        Object {
            api_version: API_VERSION.to_string(),
            kind: K::INFO.kind.to_string(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// The status, or the default one when the object has none yet.
    pub fn status_or_default(&self) -> K::Status {
        self.status.clone().unwrap_or_default()
    }

    /// `resourceVersion` as the store revision it is.
    pub fn revision(&self) -> Option<u64> {
        self.metadata.resource_version.as_deref()?.parse().ok()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Decodes a JSON value into a typed object and validates it; errors name the field.
pub fn decode<K: Kind>(value: &serde_json::Value) -> Result<Object<K>, ValidationErrors> {
    let object = parse::<K, _>(value)?;
    check(&object)?;
    Ok(object)
}

/// Decodes against the kind's schema only (types, unknown fields), naming the field at fault.
pub fn parse<'de, K: Kind, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Object<K>, ValidationErrors>
where
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ValidationErrors::one(field, e.inner().to_string())
    })
}

/// Checks what the schema cannot: apiVersion and kind, metadata, and the kind's own rules.
pub fn check<K: Kind>(object: &Object<K>) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    if object.api_version != API_VERSION {
        errors.add(
            "apiVersion",
            format!("must be {API_VERSION}, not {:?}", object.api_version),
        );
    }
    if object.kind != K::INFO.kind {
        errors.add(
            "kind",
            format!("must be {}, not {:?}", K::INFO.kind, object.kind),
        );
    }
    validate_meta(&object.metadata, K::INFO, &mut errors);
    K::validate(object, &mut errors);
    errors.into_result()
}

/// Decodes an object the control plane wrote itself (no validation beyond the schema).
pub fn decode_trusted<K: Kind>(bytes: &[u8]) -> Result<Object<K>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn validate_meta(meta: &ObjectMeta, info: &KindInfo, errors: &mut Errors) {
    if let Some(problem) = names::object_name_problem(&meta.name) {
        errors.add("metadata.name", problem);
    }
    if info.kind == "Project"
        && let Some(problem) = names::project_name_problem(&meta.name)
    {
        errors.add("metadata.name", problem);
    }
    match (&meta.namespace, info.namespaced) {
        (Some(ns), true) => {
            if let Some(problem) = names::project_name_problem(ns) {
                errors.add("metadata.namespace", problem);
            }
        }
        (None, true) => errors.add("metadata.namespace", "required: a project name"),
        (Some(_), false) => errors.add(
            "metadata.namespace",
            format!("{} is cluster-scoped and takes no namespace", info.kind),
        ),
        (None, false) => {}
    }
    for (k, v) in &meta.labels {
        if let Err(e) = crate::labels::validate_key(k) {
            errors.add(format!("metadata.labels.{k}"), e.to_string());
        } else if let Err(e) = crate::labels::validate_value(v) {
            errors.add(format!("metadata.labels.{k}"), e.to_string());
        }
    }
    for k in meta.annotations.keys() {
        if let Err(e) = crate::labels::validate_key(k) {
            errors.add(format!("metadata.annotations.{k}"), e.to_string());
        }
    }
    let annotation_bytes: usize = meta
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if annotation_bytes > 256 * 1024 {
        errors.add("metadata.annotations", "total size must be at most 256KiB");
    }
    for (i, f) in meta.finalizers.iter().enumerate() {
        if crate::labels::validate_key(f).is_err() {
            errors.add(
                format!("metadata.finalizers[{i}]"),
                "must be a qualified name",
            );
        }
    }
}

/// Parses JSON (or YAML) bytes into a `K` object against the schema only (see [`parse`]);
/// JSON must hold nothing after the object.
pub fn parse_slice<K: Kind>(bytes: &[u8], yaml: bool) -> Result<Object<K>, ValidationErrors> {
    if yaml {
        parse::<K, _>(serde_norway::Deserializer::from_slice(bytes))
    } else {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let object = parse::<K, _>(&mut de)?;
        de.end().map_err(|e| {
            ValidationErrors::one("", format!("trailing data after the object: {e}"))
        })?;
        Ok(object)
    }
}

/// The JSON Schema of a `K` object, envelope included.
pub fn object_schema<K: Kind>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let meta = g.subschema_for::<ObjectMeta>();
    let spec = g.subschema_for::<K>();
    let status = g.subschema_for::<K::Status>();
    schemars::json_schema!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"type": "string", "const": API_VERSION},
            "kind": {"type": "string", "const": K::INFO.kind},
            "metadata": meta,
            "spec": spec,
            "status": status
        }
    })
}

/// Parses one or more YAML or JSON documents (`---`-separated) into JSON values.
pub fn parse_documents(text: &str) -> Result<Vec<serde_json::Value>, ValidationErrors> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| {
            ValidationErrors::one(String::new(), format!("document {}: {e}", i + 1))
        })?;
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Array(items) => out.extend(items),
            serde_json::Value::Object(ref map)
                if map.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                if let Some(serde_json::Value::Array(items)) = map.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{ClaimSpec, ResourceClassSpec};

    fn claim(requests: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Claim",
            "metadata": {"name": "c1", "namespace": "ml"},
            "spec": {"requests": requests}
        })
    }

    #[test]
    fn bad_quantity_names_the_field() {
        let v = claim(serde_json::json!([
            {"class": "compute", "amount": {"cpu": "1"}},
            {"class": "mem", "amount": {"memory": "4Gx"}}
        ]));
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.requests[1].amount.memory: quantity \"4Gx\" is not valid: unknown suffix"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut v = claim(serde_json::json!([{"class": "compute", "amount": {"cpu": "1"}}]));
        v["spec"]["requets"] = serde_json::json!([]);
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        assert!(err.to_string().contains("unknown field `requets`"), "{err}");
    }

    #[test]
    fn a_workload_must_stop_within_its_lease() {
        let mut v = claim(serde_json::json!([{"class": "compute", "amount": {"cpu": "1"}}]));
        v["spec"]["lease"] = serde_json::json!({"duration": "5s"});
        v["spec"]["workload"] = serde_json::json!({"command": "/bin/true", "stopGrace": "5s"});
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "spec.lease.duration: 5s must be longer than spec.workload.stopGrace 5s"
            ),
            "{err}"
        );
        v["spec"]["workload"]["stopGrace"] = "2s".into();
        assert!(decode::<ClaimSpec>(&v).is_ok());
    }

    #[test]
    fn semantic_errors_name_fields() {
        let v = claim(serde_json::json!([
            {"class": "gpu", "count": 0},
            {"class": "compute", "amount": {"cpu": "1"}, "count": 2}
        ]));
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.requests[0].count", "spec.requests[1].count"]);
    }

    #[test]
    fn bad_cel_names_the_field() {
        let v = claim(
            serde_json::json!([{"class": "gpu", "count": 1, "selector": "item.attributes.model =="}]),
        );
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        assert_eq!(
            err.first_field(),
            Some("spec.requests[0].selector"),
            "{err}"
        );
    }

    #[test]
    fn envelope_checks() {
        let mut v = claim(serde_json::json!([{"class": "compute", "amount": {"cpu": "1"}}]));
        v["metadata"]["namespace"] = serde_json::Value::Null;
        v["metadata"]["name"] = "Bad_Name".into();
        v["apiVersion"] = "v1".into();
        let err = decode::<ClaimSpec>(&v).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["apiVersion", "metadata.name", "metadata.namespace"]
        );
        let class = serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "ResourceClass",
            "metadata": {"name": "x", "namespace": "ml"}, "spec": {"kind": "counted", "dimensions": [{"name": "cpu"}]}});
        assert_eq!(
            decode::<ResourceClassSpec>(&class)
                .unwrap_err()
                .first_field(),
            Some("metadata.namespace")
        );
    }

    #[test]
    fn multi_document_yaml() {
        let docs = parse_documents("a: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert!(parse_documents("a: [1,\n").is_err());
    }
}
