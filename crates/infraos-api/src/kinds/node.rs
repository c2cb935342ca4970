//! Node: a machine that can hold resources, registered by its agent or by an operator.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, KindInfo};
use crate::kinds::{ClassAmounts, Inventory, Tier};
use crate::labels;
use crate::meta::Condition;
use crate::time::Time;
use crate::validation::Errors;

/// The label naming the node an Allocation or a Resource is on: agents list and watch their
/// own objects with `infraos.io/node=<name>`, and the node authorizer insists on it.
pub const NODE_LABEL: &str = "infraos.io/node";

/// The label and annotation domain the control plane keeps for itself (`infraos.io/…` and
/// its subdomains, `*.infraos.io/…`), as Kubernetes keeps `kubernetes.io`. Agents may not set
/// such labels on their node: the scheduler, the node authorizer and policies trust them.
pub const RESERVED_LABEL_DOMAIN: &str = "infraos.io";

/// Whether a label key is in the [`RESERVED_LABEL_DOMAIN`].
pub fn is_reserved_label(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| {
        prefix == RESERVED_LABEL_DOMAIN
            || prefix
                .strip_suffix(RESERVED_LABEL_DOMAIN)
                .is_some_and(|sub| sub.ends_with('.'))
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Cordoned: nothing new is placed on the node; what runs there stays.
    #[serde(default)]
    pub unschedulable: bool,
    /// Capability tiers granted to the node: by its join token, later by an administrator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Reserved hardware: only claims that tolerate every taint are placed on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// The most the node's agent may publish, per class and dimension (`count` for an items
    /// class), over the server's `nodeCapacityLimits`: an agent reports what it likes, so
    /// what it reports beyond this (or beyond its own inventory) is cut, and the Node's
    /// `CapacityLimited` condition says so. Set by an administrator; agents cannot change it.
    #[serde(default, skip_serializing_if = "ClassAmounts::is_empty")]
    pub capacity_limits: ClassAmounts,
}

/// The Node condition saying that its agent reported more than it may publish.
pub const CAPACITY_LIMITED: &str = "CapacityLimited";

/// A mark that keeps claims off a node unless they tolerate it (Kubernetes' NoSchedule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    /// The taint's key and value must equal the toleration's.
    #[default]
    Equal,
    /// Any value of the key (or, with no key, any taint at all).
    Exists,
}

/// A claim's permission to land on nodes with a matching taint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Toleration {
    pub fn tolerates(&self, key: &str, value: Option<&str>) -> bool {
        match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == key,
            TolerationOperator::Equal => self.key == key && self.value.as_deref() == value,
        }
    }

    pub fn validate(&self, at: &str, errors: &mut Errors) {
        if self.key.is_empty() && self.operator == TolerationOperator::Equal {
            errors.add(format!("{at}.key"), "required unless operator is Exists");
        }
        if !self.key.is_empty()
            && let Err(e) = labels::validate_key(&self.key)
        {
            errors.add(format!("{at}.key"), e.to_string());
        }
        if self.operator == TolerationOperator::Exists && self.value.is_some() {
            errors.add(format!("{at}.value"), "must be empty with operator Exists");
        }
        if let Some(Err(e)) = self.value.as_deref().map(labels::validate_value) {
            errors.add(format!("{at}.value"), e.to_string());
        }
    }
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
    /// What each driver the agent has found on the node, by driver name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fingerprints: BTreeMap<String, DriverFingerprint>,
}

/// The prefix of the label an agent puts on its node's Resources for each healthy driver it
/// has (`driver.infraos.io/process: "true"`), so a claim's `selector` can ask for one.
pub const DRIVER_LABEL_PREFIX: &str = "driver.infraos.io/";

/// A driver as its agent found it on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriverFingerprint {
    /// Whether it can run workloads now.
    pub healthy: bool,
    /// Why not, or what limits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What it found (`cgroup: v2`, `userNamespaces: "true"`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
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

    fn validate(object: &crate::envelope::Object<Self>, errors: &mut Errors) {
        for (class, dims) in &object.spec.capacity_limits {
            for (dim, limit) in dims {
                if limit.is_negative() {
                    errors.add(
                        format!("spec.capacityLimits.{class}.{dim}"),
                        "must not be negative",
                    );
                }
            }
        }
        for (i, taint) in object.spec.taints.iter().enumerate() {
            if let Err(e) = labels::validate_key(&taint.key) {
                errors.add(format!("spec.taints[{i}].key"), e.to_string());
            }
            if let Some(Err(e)) = taint.value.as_deref().map(labels::validate_value) {
                errors.add(format!("spec.taints[{i}].value"), e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_infraos_domain_and_its_subdomains_are_reserved() {
        assert!(is_reserved_label(NODE_LABEL));
        assert!(is_reserved_label("infraos.io/zone"));
        assert!(is_reserved_label("node.infraos.io/role"));
        assert!(!is_reserved_label("zone"));
        assert!(!is_reserved_label("notinfraos.io/zone"));
        assert!(!is_reserved_label("infraos.io.example.com/zone"));
        assert!(!is_reserved_label("example.com/infraos.io"));
    }
}
