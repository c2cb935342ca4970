//! Node: a machine that can hold resources, registered by its agent or by an operator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;
use crate::object::{Kind, KindInfo};
use crate::time::Time;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: nothing new is placed on the node; what runs there stays.
    #[serde(default)]
    pub unschedulable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
}

impl NodeStatus {
    /// A node is ready unless its `Ready` condition says otherwise: nodes registered by an
    /// operator without an agent have no heartbeat and stay schedulable.
    pub fn is_ready(&self) -> bool {
        !self
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status != "True")
    }
}

impl Kind for NodeSpec {
    type Status = NodeStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        short_names: &["no"],
        namespaced: false,
        user_writable: true,
    };
}
