//! Node: a machine that can hold resources, registered by its agent or by an operator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::{Inventory, Tier};
use crate::meta::Condition;
use crate::object::{Kind, KindInfo};
use crate::time::Time;

/// The label naming the node an Allocation or a Resource is on: agents list and watch their
/// own objects with `infraos.io/node=<name>`, and the node authorizer insists on it.
pub const NODE_LABEL: &str = "infraos.io/node";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: nothing new is placed on the node; what runs there stays.
    #[serde(default)]
    pub unschedulable: bool,
    /// Capability tiers granted to the node: by its join token, later by an administrator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
}

impl NodeSpec {
    pub fn has_tier(&self, tier: Tier) -> bool {
        self.tiers.contains(&tier)
    }

    /// The tiers as a bit set, for the scheduler's hot path.
    pub fn tier_bits(&self) -> u8 {
        self.tiers.iter().fold(0, |bits, t| bits | t.bit())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
}

/// The agent serving the node, as it introduced itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentInfo {
    pub version: String,
    pub protocol_version: u32,
    /// Drivers the agent's configuration allows (`process`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<String>,
    /// Where the agent serves logs to the control plane (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Until when the agent's current client certificate is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<Time>,
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
