//! Allocation: the binding of a Claim to concrete resources, with its lease. Written only by
//! the control plane.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{Kind, KindInfo};
use crate::kinds::{RenewPolicy, WorkloadSpec, WorkloadStatus};
use crate::quantity::Quantity;
use crate::time::Time;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationSpec {
    pub claim: ClaimRef,
    /// The node the claim's node-bound requests landed on; absent for pool-only claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub resources: Vec<AllocatedResource>,
    /// The scheduler's score breakdown for the chosen placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreBreakdown>,
    /// The best placement not chosen, to explain the choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_up: Option<RunnerUp>,
    /// The store revision of the snapshot the decision was made on (for replay).
    #[serde(default)]
    pub snapshot_revision: u64,
    /// The decision's position in its batch: a replay assumes the allocations the batch
    /// decided before it.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub batch_position: u32,
    /// The claim's workload, copied so the node's agent needs to read nothing but its
    /// allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    #[serde(default)]
    pub renew_policy: RenewPolicy,
    /// The claim's priority when it was placed: preemption compares it.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// The claim's queue, whose dominant-resource share the allocation counts towards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The claim's gang, preempted as a unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Placed on capacity its project borrowed from its tenant's quota: the first to go when
    /// a claim within its own limits needs it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowing: bool,
    /// The claim's labels and required anti-affinity terms, copied so that later claims
    /// keep out of its domain (anti-affinity binds both ways).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<crate::kinds::AffinityTerm>,
    /// Who approved the claim (`user:…`), for high-risk claims: signed into the instruction,
    /// so an agent can refuse a privileged workload nobody approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// The server's signature over the instruction to run `workload` (see
    /// [`crate::instruction`]): the agent runs nothing whose signature does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signature::Signature>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRef {
    pub name: String,
    pub uid: String,
}

/// What one request of the claim got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocatedResource {
    pub request: String,
    pub resource: String,
    pub class: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub amount: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScoreBreakdown {
    /// Weighted total, 0–100.
    pub total: f64,
    /// Each plugin's normalized score (0–100) before weighting.
    pub plugins: BTreeMap<String, f64>,
    /// How many feasible candidates were scored.
    #[serde(default)]
    pub feasible: u64,
    /// Where in the class's node list the sampling scan began (it rotates from claim to
    /// claim); a replay starts there too.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub scan_start: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerUp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub total: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AllocationPhase {
    /// Holding its resources under a live lease.
    #[default]
    Active,
    /// Ended by its owner (release or claim deletion); resources freed.
    Released,
    /// The lease ran out and was reclaimed after the skew margin; resources freed.
    Expired,
    /// The lease ran out while its node was not ready: resources freed, the claim requeued.
    Lost,
    /// Preempted by a claim of higher priority (or reclaiming borrowed quota): the lease was
    /// cut to the workload's stop grace, resources freed after it, the claim requeued.
    Preempted,
}

impl AllocationPhase {
    /// Whether the allocation still counts against capacity.
    pub fn holds_resources(self) -> bool {
        matches!(self, AllocationPhase::Active)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AllocationPhase::Active => "Active",
            AllocationPhase::Released => "Released",
            AllocationPhase::Expired => "Expired",
            AllocationPhase::Lost => "Lost",
            AllocationPhase::Preempted => "Preempted",
        }
    }
}

/// The lease contract (DESIGN §2): valid until `expireTime`; freed by the control plane only
/// after `expireTime` plus the clock-skew margin; `fencingEpoch` grows with each allocation of
/// the claim so agents can reject stale instructions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lease {
    pub acquire_time: Time,
    pub renew_time: Time,
    pub expire_time: Time,
    pub fencing_epoch: u64,
}

impl Default for Time {
    fn default() -> Self {
        Time::UNIX_EPOCH
    }
}

impl Lease {
    /// A renewal is allowed while the lease has not run out.
    pub fn can_renew(&self, now: Time) -> bool {
        now < self.expire_time
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocationStatus {
    pub phase: AllocationPhase,
    pub lease: Lease,
    /// When the allocation stopped holding resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The workload as its agent last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadStatus>,
    /// Set when the allocation is being preempted: its lease was cut to end at the stop grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<Preemption>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preemption {
    /// `namespace/name` of the claim that needs the resources.
    pub by: String,
    pub time: Time,
    /// Why: `priority 1000 > 10`, or `reclaiming borrowed quota`.
    pub reason: String,
}

impl Kind for AllocationSpec {
    type Status = AllocationStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Allocation",
        plural: "allocations",
        singular: "allocation",
        short_names: &["alloc", "allocs"],
        namespaced: true,
        user_writable: false,
    };
}
