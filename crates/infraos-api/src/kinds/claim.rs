//! Claim: a request for resources, held under a lease.
//!
//! ```text
//!  Pending ──schedule──► Allocated ──release──► Released
//!     ▲                      │  └──lease ends──► Expired
//!     └──(requeue: lost)─────┘
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::envelope::{Kind, KindInfo, Object};
use crate::item_selector::ItemSelector;
use crate::kinds::{GroupSpec, MAX_GROUP_MEMBERS, Toleration, WorkloadSpec};
use crate::labels::{self, LabelSelector};
use crate::names;
use crate::quantity::Quantity;
use crate::time::Time;
use crate::validation::Errors;

pub const MAX_REQUESTS: usize = 16;
pub const MAX_ITEM_COUNT: u32 = 4096;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimSpec {
    pub requests: Vec<ClaimRequest>,
    /// Label selector over the labels of the resources (and of their nodes) that may serve
    /// this claim, e.g. `zone in (a,b),!legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologySpec>,
    #[serde(default)]
    pub lease: LeaseSpec,
    /// What the agent of the chosen node runs for the claim while it holds the allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    /// The PriorityClass; claims that name none get the global default class, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The priority value, copied from the PriorityClass at admission (not set by users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The Queue whose fair share the claim waits in (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Gang membership: the group's claims are allocated all together or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSpec>,
    /// Taints of reserved nodes this claim may land on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Land where claims of the project matching each selector already hold allocations, in
    /// the same topology domain (node, rack, zone, region).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<AffinityTerm>,
    /// Never land in a topology domain where claims of the project matching a selector hold
    /// allocations (one replica per zone, say). Required terms bind both ways: a later claim
    /// that matches the selector keeps out of this claim's domain too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<AffinityTerm>,
    /// Spread the project's claims matching each selector evenly over a topology key's
    /// domains, within a maximum skew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread: Vec<SpreadTerm>,
    /// Soft preferences: score plugin weights for this claim, and where it would rather be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<ClaimScoring>,
}

/// A claim's own scoring: weights that replace the profile's for the plugins named, and a
/// preferred location for the `network` plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimScoring {
    /// Plugin name → weight (0–100), e.g. `{cost: 3, binpack: 1}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
    /// Topology values to be near, e.g. `{zone: eu-west-a}`: the `network` plugin prefers
    /// nodes at the least distance from them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub near: BTreeMap<String, String>,
}

pub const MAX_CLAIM_WEIGHT: f64 = 100.0;

/// Claims selected by labels, and the node label whose value makes a topology domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityTerm {
    /// Over the labels of the project's claims (their allocations carry them).
    pub selector: LabelSelector,
    /// A node label: `infraos.io/node` for the node itself, or `rack`, `zone`, `region`.
    pub topology_key: String,
    /// A preference, not a rule: no node is rejected for it, and the `affinity` score plugin
    /// ranks the nodes that honour it higher.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preferred: bool,
}

/// Even spread of matching claims over the domains of a topology key (Kubernetes'
/// topologySpreadConstraints): placing in a domain may not leave it more than `maxSkew`
/// matching claims ahead of the emptiest domain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpreadTerm {
    /// Over the labels of the project's claims; usually the claim's own, e.g. `app=web`.
    pub selector: LabelSelector,
    /// A node label (`zone`, `rack`, `infraos.io/node`); its values are the domains.
    pub topology_key: String,
    /// 1 to 1000.
    pub max_skew: u32,
    #[serde(default)]
    pub when_unsatisfiable: Unsatisfiable,
}

/// What a spread term does when no domain keeps the skew within bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Unsatisfiable {
    /// A rule: the claim waits.
    #[default]
    DoNotSchedule,
    /// A preference: the `affinity` score plugin ranks the least skewed domains higher.
    ScheduleAnyway,
}

pub const MAX_AFFINITY_TERMS: usize = 8;
pub const MAX_SPREAD_SKEW: u32 = 1000;

impl ClaimSpec {
    pub fn priority(&self) -> i32 {
        self.priority.unwrap_or(0)
    }

    pub fn queue_name(&self) -> &str {
        self.queue.as_deref().unwrap_or(crate::kinds::DEFAULT_QUEUE)
    }

    /// The claim's total per counted dimension over all requests (`cpu`, `memory`, …).
    pub fn requested_amounts(&self) -> BTreeMap<String, Quantity> {
        let mut total: BTreeMap<String, Quantity> = BTreeMap::new();
        for r in &self.requests {
            for (dim, q) in &r.amount {
                let sum = match total.get(dim) {
                    Some(t) => t.checked_add(*q).unwrap_or(*t),
                    None => *q,
                };
                total.insert(dim.clone(), sum);
            }
        }
        total
    }
}

/// One thing asked for: an amount of a counted class, or a number of items.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequest {
    /// Names the request in the allocation; defaults to the class name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub class: String,
    /// For counted classes: the amount per dimension.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub amount: BTreeMap<String, Quantity>,
    /// For items classes: how many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// For items classes: a CEL expression every chosen item satisfies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ItemSelector>,
}

impl ClaimRequest {
    /// The request's name, defaulting to its class.
    pub fn effective_name(&self) -> &str {
        if self.name.is_empty() {
            &self.class
        } else {
            &self.name
        }
    }
}

/// Topology constraints: where the claim's resources must sit relative to each other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologySpec {
    /// Label keys (`region`, `zone`, `rack`) on which every resource of the claim — the node's
    /// and the pools' — must have the same value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub colocate: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    #[serde(default = "default_lease")]
    pub duration: Duration,
    #[serde(default)]
    pub renew_policy: RenewPolicy,
}

fn default_lease() -> Duration {
    DEFAULT_LEASE
}

impl Default for LeaseSpec {
    fn default() -> Self {
        LeaseSpec {
            duration: DEFAULT_LEASE,
            renew_policy: RenewPolicy::Manual,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RenewPolicy {
    /// The owner renews with `infraos renew`.
    #[default]
    Manual,
    /// The agent renews while the claim's workload is healthy.
    WhileRunning,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ClaimPhase {
    #[default]
    Pending,
    /// High-risk: waits for approvals before the scheduler sees it.
    PendingApproval,
    Allocated,
    Released,
    Expired,
    Failed,
}

impl ClaimPhase {
    /// A terminal claim is never scheduled again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ClaimPhase::Released | ClaimPhase::Expired | ClaimPhase::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimPhase::Pending => "Pending",
            ClaimPhase::PendingApproval => "PendingApproval",
            ClaimPhase::Allocated => "Allocated",
            ClaimPhase::Released => "Released",
            ClaimPhase::Expired => "Expired",
            ClaimPhase::Failed => "Failed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimStatus {
    pub phase: ClaimPhase,
    /// The Allocation holding this claim's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<Time>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fencing_epoch: u64,
    /// Machine-readable reason for the phase: `Unschedulable`, `LeaseExpired`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail: for a pending claim, why no node fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For pending claims: how many candidates each filter rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<Unschedulable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// For claims that need approval: how many, who asked, who approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalStatus>,
}

/// The approvals a high-risk claim needs and has. Written by the server only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalStatus {
    /// Approvers needed, none of them the requester.
    pub required: u32,
    /// Who created the claim (`user:…`): may not approve it.
    pub requester: String,
    /// Why it needs approval: the tiers it needs, the policies that apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub because: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<ApprovalRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRecord {
    pub by: String,
    pub time: Time,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Why a claim could not be placed, per filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Unschedulable {
    /// Candidates considered (nodes, or pools for a claim that needs no node).
    pub candidates: u64,
    /// `nodes` or `pools`.
    pub candidate_kind: String,
    /// Rejection counts by reason ("insufficient gpu", "selector mismatch").
    pub reasons: BTreeMap<String, u64>,
    /// The store revision of the snapshot the decision was made on.
    pub snapshot_revision: u64,
    /// The decision's position in its batch.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub batch_position: u32,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl Kind for ClaimSpec {
    type Status = ClaimStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Claim",
        plural: "claims",
        singular: "claim",
        short_names: &["cl"],
        namespaced: true,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let spec = &object.spec;
        if spec.requests.is_empty() {
            errors.add("spec.requests", "at least one request is required");
        }
        if spec.requests.len() > MAX_REQUESTS {
            errors.add("spec.requests", format!("at most {MAX_REQUESTS} requests"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in spec.requests.iter().enumerate() {
            let at = |f: &str| format!("spec.requests[{i}].{f}");
            if let Some(p) = names::object_name_problem(&r.class) {
                errors.add(at("class"), p);
            }
            if !r.name.is_empty() && names::object_name_problem(&r.name).is_some() {
                errors.add(at("name"), "must be a lowercase name");
            }
            if !names.insert(r.effective_name().to_string()) {
                errors.add(
                    at("name"),
                    format!(
                        "duplicate request name {:?}; name the requests to tell them apart",
                        r.effective_name()
                    ),
                );
            }
            match (r.amount.is_empty(), r.count) {
                (true, None) => errors.add(
                    at("amount"),
                    "give amount (counted classes) or count (items classes)",
                ),
                (false, Some(_)) => errors.add(at("count"), "give amount or count, not both"),
                (false, None) => {
                    if r.selector.is_some() {
                        errors.add(
                            at("selector"),
                            "item selectors apply to items classes (with count)",
                        );
                    }
                    for (dim, q) in &r.amount {
                        if q.is_negative() || q.is_zero() {
                            errors.add(
                                format!("spec.requests[{i}].amount.{dim}"),
                                "must be greater than zero",
                            );
                        }
                    }
                }
                (true, Some(n)) => {
                    if n == 0 || n > MAX_ITEM_COUNT {
                        errors.add(
                            at("count"),
                            format!("must be between 1 and {MAX_ITEM_COUNT}"),
                        );
                    }
                }
            }
        }
        if let Some(topology) = &spec.topology {
            for (i, key) in topology.colocate.iter().enumerate() {
                if let Err(e) = labels::validate_key(key) {
                    errors.add(format!("spec.topology.colocate[{i}]"), e.to_string());
                }
            }
        }
        for (field, name) in [
            ("spec.priorityClassName", &spec.priority_class_name),
            ("spec.queue", &spec.queue),
        ] {
            if let Some(p) = name.as_deref().and_then(names::object_name_problem) {
                errors.add(field, p);
            }
        }
        for (i, t) in spec.tolerations.iter().enumerate() {
            t.validate(&format!("spec.tolerations[{i}]"), errors);
        }
        for (field, terms) in [
            ("spec.affinity", &spec.affinity),
            ("spec.antiAffinity", &spec.anti_affinity),
        ] {
            if terms.len() > MAX_AFFINITY_TERMS {
                errors.add(field, format!("at most {MAX_AFFINITY_TERMS} terms"));
            }
            for (i, term) in terms.iter().enumerate() {
                if term.selector.is_empty() {
                    errors.add(
                        format!("{field}[{i}].selector"),
                        "must select something (e.g. app=db)",
                    );
                }
                if let Err(e) = labels::validate_key(&term.topology_key) {
                    errors.add(format!("{field}[{i}].topologyKey"), e.to_string());
                }
            }
        }
        if spec.topology_spread.len() > MAX_AFFINITY_TERMS {
            errors.add(
                "spec.topologySpread",
                format!("at most {MAX_AFFINITY_TERMS} terms"),
            );
        }
        for (i, term) in spec.topology_spread.iter().enumerate() {
            let at = |f: &str| format!("spec.topologySpread[{i}].{f}");
            if term.selector.is_empty() {
                errors.add(at("selector"), "must select something (e.g. app=web)");
            }
            if let Err(e) = labels::validate_key(&term.topology_key) {
                errors.add(at("topologyKey"), e.to_string());
            }
            if term.max_skew == 0 || term.max_skew > MAX_SPREAD_SKEW {
                errors.add(
                    at("maxSkew"),
                    format!("must be between 1 and {MAX_SPREAD_SKEW}"),
                );
            }
        }
        if let Some(scoring) = &spec.scoring {
            for (name, w) in &scoring.weights {
                if !w.is_finite() || *w < 0.0 || *w > MAX_CLAIM_WEIGHT {
                    errors.add(
                        format!("spec.scoring.weights.{name}"),
                        format!("must be between 0 and {MAX_CLAIM_WEIGHT}"),
                    );
                }
            }
            for (key, value) in &scoring.near {
                if let Err(e) = labels::validate_key(key) {
                    errors.add(format!("spec.scoring.near.{key}"), e.to_string());
                }
                if let Err(e) = labels::validate_value(value) {
                    errors.add(format!("spec.scoring.near.{key}"), e.to_string());
                }
            }
        }
        for (i, anti) in spec.anti_affinity.iter().enumerate() {
            if anti.preferred {
                continue;
            }
            if let Some(j) = spec.affinity.iter().position(|a| {
                !a.preferred
                    && a.topology_key == anti.topology_key
                    && a.selector.to_string() == anti.selector.to_string()
            }) {
                errors.add(
                    format!("spec.antiAffinity[{i}]"),
                    format!(
                        "contradicts spec.affinity[{j}]: the same claims cannot be both required \
                         and forbidden in the same {} domain",
                        anti.topology_key
                    ),
                );
            }
        }
        if let Some(group) = &spec.group {
            if let Some(p) = names::object_name_problem(&group.name) {
                errors.add("spec.group.name", p);
            }
            if group.min_members == 0 || group.min_members > MAX_GROUP_MEMBERS {
                errors.add(
                    "spec.group.minMembers",
                    format!("must be between 1 and {MAX_GROUP_MEMBERS}"),
                );
            }
        }
        if let Some(workload) = &spec.workload {
            workload.validate("spec.workload", &spec.requested_amounts(), errors);
            // The agent starts stopping a workload stopGrace before its lease ends.
            if spec.lease.duration.as_millis() <= workload.stop_grace.as_millis() {
                errors.add(
                    "spec.lease.duration",
                    format!(
                        "{} must be longer than spec.workload.stopGrace {}: a workload is \
                         stopped stopGrace before its lease ends",
                        spec.lease.duration, workload.stop_grace
                    ),
                );
            }
        }
        if spec.lease.renew_policy == RenewPolicy::WhileRunning && spec.workload.is_none() {
            errors.add(
                "spec.lease.renewPolicy",
                "WhileRunning needs a spec.workload whose health renews the lease",
            );
        }
        let d = spec.lease.duration;
        if d < MIN_LEASE || d > MAX_LEASE {
            errors.add(
                "spec.lease.duration",
                format!("must be between {MIN_LEASE} and {MAX_LEASE}"),
            );
        }
    }
}
