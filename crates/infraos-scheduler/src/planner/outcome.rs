//! What the planner hands back: the plan, each claim's outcome, and the explanation of a
//! claim left pending (its reason code and, per filter, how many candidates it rejected).

use infraos_api::kinds::{AllocatedResource, RunnerUp, ScoreBreakdown};
use std::collections::BTreeMap;

/// The scheduler's decisions for one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub snapshot_revision: u64,
    pub decisions: Vec<Decision>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `namespace/name` of the claim.
    pub claim_key: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Placed(Placement),
    Unschedulable(Explanation),
    /// The claim fits once these allocations are preempted; it stays pending meanwhile.
    Preempt(PreemptionPlan),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub node: Option<String>,
    pub resources: Vec<AllocatedResource>,
    pub score: ScoreBreakdown,
    pub runner_up: Option<RunnerUp>,
    /// Placed on capacity the claim's project borrows from its tenant's quota.
    pub borrowing: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreemptionPlan {
    /// The node the claim will fit on (none when the victims free quota, not capacity).
    pub node: Option<String>,
    pub victims: Vec<Victim>,
    /// Why the claim does not fit without preempting.
    pub explanation: Explanation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    /// `namespace/name` of the allocation (and its claim).
    pub allocation: String,
    pub priority: i32,
    /// `priority 1000 > 10`, `reclaiming borrowed quota`, `gang member`.
    pub reason: String,
}

/// Why a claim is not placed: a reason code, and per filter how many candidates it rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    /// `Unschedulable`, `QuotaExceeded`, `GangIncomplete` or `WaitingForPreemption`.
    pub reason: &'static str,
    /// For reasons other than capacity: the whole message (naming the quota, level and
    /// dimension, or the gang).
    pub detail: Option<String>,
    /// `nodes` or `pools`.
    pub candidate_kind: &'static str,
    pub candidates: u64,
    pub reasons: BTreeMap<String, u64>,
}

pub const UNSCHEDULABLE: &str = "Unschedulable";
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
pub const GANG_INCOMPLETE: &str = "GangIncomplete";
pub const WAITING_FOR_PREEMPTION: &str = "WaitingForPreemption";

impl Explanation {
    pub(crate) fn detailed(reason: &'static str, detail: String) -> Self {
        Explanation {
            reason,
            detail: Some(detail),
            candidate_kind: "nodes",
            ..Explanation::default()
        }
    }

    /// `0/1000 nodes are available: 620 insufficient gpu, 380 selector mismatch.`, or the
    /// detail for quota, gang and preemption reasons.
    pub fn message(&self) -> String {
        if let Some(detail) = &self.detail {
            return detail.clone();
        }
        let mut reasons: Vec<(&String, &u64)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let detail = reasons
            .iter()
            // A reason counted 0 is a note about the whole cluster ("no ipv4"), not per candidate.
            .map(|(r, n)| {
                if **n == 0 {
                    r.to_string()
                } else {
                    format!("{n} {r}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        if detail.is_empty() {
            format!(
                "0/{} {} are available.",
                self.candidates, self.candidate_kind
            )
        } else {
            format!(
                "0/{} {} are available: {detail}.",
                self.candidates, self.candidate_kind
            )
        }
    }
}
