//! Event: a lifecycle note for people ("Expired", "FailedScheduling"), kept next to the object.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EmptyStatus;
use crate::envelope::{Kind, KindInfo};
use crate::meta::ObjectRef;
use crate::time::Time;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    pub involved_object: ObjectRef,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// The component that reported it: `scheduler`, `lease-controller`, …
    pub source: String,
    pub first_timestamp: Time,
    pub last_timestamp: Time,
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

impl Kind for EventSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        user_writable: false,
    };
}
