//! Events: short lifecycle notes people read in `infraos describe` ("Expired",
//! "FailedScheduling"). Written in the same transaction as the change they describe.

use infraos_api::kinds::{Event, EventSpec};
use infraos_api::{Kind, Object, ObjectRef, Time};

use crate::objects;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// The store key and bytes of a new event about `involved`.
pub fn build(
    involved: &ObjectRef,
    type_: &str,
    reason: &str,
    message: &str,
    source: &str,
    now: Time,
) -> (String, Vec<u8>) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{}.{}", involved.name, &id[..12]);
    let namespace = involved.namespace.clone();
    let mut event: Event = Object::new(
        name.clone(),
        namespace.as_deref(),
        EventSpec {
            involved_object: involved.clone(),
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            source: source.to_string(),
            first_timestamp: now,
            last_timestamp: now,
            count: 1,
        },
    );
    event.metadata.uid = id;
    event.metadata.creation_timestamp = Some(now);
    let key = objects::key(EventSpec::INFO, namespace.as_deref(), &name);
    (key, objects::encode_typed(&event))
}

pub fn claim_ref(name: &str, namespace: Option<&str>, uid: &str) -> ObjectRef {
    ObjectRef {
        kind: "Claim".into(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        uid: uid.to_string(),
    }
}
