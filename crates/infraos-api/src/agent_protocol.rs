//! The agent ↔ server protocol (`/agent/v1`): the messages, and the version both sides state.
//!
//! ```text
//!  agent                                   server
//!   ── POST /agent/v1/join {token, csr} ──►  checks the token, signs node:<name>
//!   ◄─ certificate, CA, heartbeat interval ─
//!   (mTLS from here on)
//!   ── POST /agent/v1/heartbeat ──────────►  node lease, in memory
//!   ── PUT  /agent/v1/status ─────────────►  Node status (inventory) + node Resources
//!   ── GET  /apis/…/allocations?watch&labelSelector=infraos.io/node=<name>
//!   ── PUT  /agent/v1/namespaces/N/allocations/A/workload ─► status.workload (fenced)
//!   ── POST /agent/v1/namespaces/N/allocations/A/renew ────► lease renewal (WhileRunning)
//!   ── POST /agent/v1/certificate {csr} ──►  rotation at 2/3 of the lifetime
//!   ◄─ GET https://<node>.nodes.infraos.internal/v1/logs/… (server dials the agent) ─
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kinds::{AgentInfo, Inventory, Resource, Tier};
use crate::time::Time;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest agent protocol this server accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    /// PEM certificate signing request with common name `node:<name>`.
    pub csr: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub agent: AgentInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    pub csr: String,
}

/// The answer to a join or a rotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateResponse {
    pub node: String,
    /// PEM client certificate for `node:<name>`.
    pub certificate: String,
    /// PEM CA certificate: trust it for the server, and for callers of the agent.
    pub ca: String,
    pub expires: Time,
    pub heartbeat_interval_ms: u64,
    pub tiers: Vec<Tier>,
    /// The server's public signing key: the agent pins it at join and runs only workloads
    /// whose instruction it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<crate::signature::PublicKey>,
}

/// Unknown fields are accepted so that an older agent can read a newer server's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    pub heartbeat_interval_ms: u64,
    /// The node's granted tiers as the server knows them now: how an administrator's change
    /// reaches the agent. Absent while the server has not loaded the Node yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<Tier>>,
    /// The server's public signing key, for agents that joined before they learnt it (they
    /// pin the first one they hear; a pinned key never changes this way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<crate::signature::PublicKey>,
}

/// What an agent publishes about its node; sent when it changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeReport {
    pub agent: AgentInfo,
    pub inventory: Inventory,
    /// The node's Resources (named `<node>-…`, `spec.node` = the node).
    pub resources: Vec<Resource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeReportResponse {
    /// The tiers the node holds now (an administrator may have changed them).
    pub tiers: Vec<Tier>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    pub fencing_epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewResponse {
    pub expire_time: Time,
}
