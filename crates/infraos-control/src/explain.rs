//! `infraos explain claim X`: replays a recorded scheduling decision on the cluster as the
//! scheduler saw it, and says whether the replay reaches the same result.
//!
//! ```text
//!   recorded decision ── snapshot revision R, scan start, decision time
//!        │
//!   store.range_at(R) for every source ──► Snapshot (as the scheduler's cache held it at R)
//!   + allocations created after R and before the decision (the scheduler had assumed them)
//!        │
//!   Scheduler::plan_at(snapshot, [claim]) ──► replayed decision ── compare ──► matches?
//! ```
//! The replay reads history the store still holds (`range_at`): the embedded store keeps the
//! last `watchHistory` changes in memory, so old decisions answer 410 Gone. What the
//! scheduler held only in memory (nodes nominated for preempting claims, the order of a
//! batch's other claims beyond the assumed allocations) is not replayed; a mismatch says so.
//!
//! The replay reads the whole cluster, but the caller sees only claims they may `get`: other
//! projects' assumed allocations and preemption victims are counted, never named.

use infraos_api::Kind as _;
use infraos_api::kinds::{
    AllocationSpec, Claim, ClaimPhase, ClaimSpec, RunnerUp, ScoreBreakdown, Unschedulable,
};
use infraos_scheduler::{Outcome, Scheduler};
use serde::Serialize;

use crate::Context;
use crate::ControlError;
use crate::controllers::preemption_text::preemption_message;
use crate::controllers::scheduler;
use crate::objects::{self, decode_typed, object_id};

/// The replay of one claim's decision.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// `namespace/name`.
    pub claim: String,
    /// The store revision replayed on.
    pub revision: u64,
    /// Allocations committed after that revision and before the decision, which the
    /// scheduler had already counted (earlier claims of the same or a previous batch), of
    /// projects the caller may see.
    pub assumed: Vec<String>,
    /// How many more it had counted, of projects the caller may not see.
    #[serde(skip_serializing_if = "is_zero")]
    pub assumed_elsewhere: usize,
    /// What the scheduler decided, when replaying a recorded decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<DecisionView>,
    pub replayed: DecisionView,
    /// Whether the replay reached the recorded decision (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<bool>,
    /// Why a replay may differ, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A decision, in the terms `describe` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum DecisionView {
    #[serde(rename_all = "camelCase")]
    Placed {
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        score: ScoreBreakdown,
        #[serde(skip_serializing_if = "Option::is_none")]
        runner_up: Option<RunnerUp>,
    },
    #[serde(rename_all = "camelCase")]
    Pending {
        reason: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        unschedulable: Option<Unschedulable>,
    },
}

impl DecisionView {
    /// The same outcome: the same node and scores, or the same reason and message.
    fn same_as(&self, other: &DecisionView) -> bool {
        match (self, other) {
            (
                DecisionView::Placed {
                    node: a, score: sa, ..
                },
                DecisionView::Placed {
                    node: b, score: sb, ..
                },
            ) => a == b && sa.total == sb.total && sa.plugins == sb.plugins,
            (
                DecisionView::Pending {
                    reason: ra,
                    message: ma,
                    ..
                },
                DecisionView::Pending {
                    reason: rb,
                    message: mb,
                    ..
                },
            ) => ra == rb && ma == mb,
            _ => false,
        }
    }
}

/// What was recorded for the claim, where, and which of the scheduler's own commits it had
/// assumed.
struct Recorded {
    view: DecisionView,
    revision: u64,
    /// The scheduler's later commits are read at this revision.
    read_at: u64,
    /// Placed claims: the revision of the commit that wrote the allocation (its batch's).
    own_commit: Option<u64>,
    /// The decision's position in its batch.
    position: u32,
    scan_start: u64,
    decided_ms: i64,
}

impl Recorded {
    /// Whether the scheduler had counted an allocation when it made this decision: committed
    /// after the snapshot revision and before this decision (earlier in the same batch, or
    /// by an earlier batch on the same snapshot).
    fn assumed(&self, kv: &infraos_store::KeyValue, allocation: &AllocationSpec) -> bool {
        if kv.create_revision <= self.revision {
            return false;
        }
        match self.own_commit {
            Some(own) => {
                kv.create_revision < own
                    || (kv.create_revision == own && allocation.batch_position < self.position)
            }
            None => {
                !(allocation.snapshot_revision == self.revision
                    && allocation.batch_position > self.position)
            }
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Whether the caller may see a claim, by its `namespace/name`.
pub type Shown<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// Replays the decision recorded for claim `ns/name`, or, with `at`, decides it afresh on
/// the store as it was at that revision. Other claims are named only where `shown` says so.
pub async fn replay(
    state: &Context,
    ns: &str,
    name: &str,
    at: Option<u64>,
    shown: Shown<'_>,
) -> Result<Replay, ControlError> {
    let claim_key = objects::key(ClaimSpec::INFO, Some(ns), name);
    let claim_kv = state
        .store
        .get(&claim_key)
        .await?
        .ok_or_else(|| ControlError::not_found("Claim", name))?;
    let claim: Claim = decode_typed(&claim_kv)?;
    let recorded = match at {
        Some(_) => None,
        None => Some(recorded(state, ns, name, &claim, claim_kv.mod_revision).await?),
    };
    let revision = match (at, &recorded) {
        (Some(r), _) => r,
        (None, Some(r)) => r.revision,
        (None, None) => 0,
    };
    let store = &state.store;
    let mut snapshot = scheduler::snapshot_from(|prefix| async move {
        store
            .range_at(&prefix, revision)
            .await
            .map(|range| range.kvs)
            .map_err(|e| history_error(e, revision))
    })
    .await?;
    snapshot.set_revision(revision);
    let own = format!("{ns}/{name}");
    let mut assumed = Vec::new();
    let mut assumed_elsewhere = 0;
    if let Some(r) = &recorded
        && r.read_at > revision
    {
        let prefix = objects::prefix(AllocationSpec::INFO, None);
        let later = state
            .store
            .range_at(&prefix, r.read_at)
            .await
            .map_err(|e| history_error(e, revision))?;
        for kv in &later.kvs {
            let id = object_id(&kv.key);
            if id == own || kv.create_revision <= revision {
                continue;
            }
            let allocation: infraos_api::kinds::Allocation = decode_typed(kv)?;
            if r.assumed(kv, &allocation.spec) {
                scheduler::assume_allocation(&mut snapshot, &id, kv)?;
                if shown(&id) {
                    assumed.push(id);
                } else {
                    assumed_elsewhere += 1;
                }
            }
        }
    }
    let mut scheduler = Scheduler::new(state.config.scheduler.clone())
        .map_err(|e| ControlError::internal(e.to_string()))?;
    scheduler.set_scan_start(recorded.as_ref().map_or(0, |r| r.scan_start as usize));
    let now = recorded
        .as_ref()
        .map_or_else(|| state.clock.now().unix_millis(), |r| r.decided_ms);
    let plan = scheduler.plan_at(&snapshot, &[(own.clone(), &claim)], now, 1);
    let outcome = plan
        .decisions
        .into_iter()
        .find(|d| d.claim_key == own)
        .map(|d| d.outcome)
        .ok_or_else(|| ControlError::internal("the replay reached no decision for the claim"))?;
    let replayed = view(outcome, revision, shown);
    let matches = recorded.as_ref().map(|r| r.view.same_as(&replayed));
    let note = (matches == Some(false)).then(|| {
        "the replay sees the store at the recorded revision plus the scheduler's own earlier \
         commits; it differs when the scheduler's cache lagged the store for some kind of \
         object, or held a node for a preempting claim"
            .to_string()
    });
    Ok(Replay {
        claim: own,
        revision,
        assumed,
        assumed_elsewhere,
        recorded: recorded.map(|r| r.view),
        replayed,
        matches,
        note,
    })
}

/// The decision recorded for a claim: its pending explanation while it waits, else its
/// allocation's placement.
async fn recorded(
    state: &Context,
    ns: &str,
    name: &str,
    claim: &Claim,
    claim_revision: u64,
) -> Result<Recorded, ControlError> {
    let status = claim.status.as_ref();
    let pending = status.is_none_or(|s| s.phase == ClaimPhase::Pending);
    if pending {
        let Some(s) = status.filter(|s| s.unschedulable.is_some()) else {
            return Err(ControlError::conflict(
                "Claim",
                name,
                "the scheduler has recorded no decision for this claim yet",
            ));
        };
        let u = s.unschedulable.clone().unwrap_or_default();
        return Ok(Recorded {
            revision: u.snapshot_revision,
            read_at: claim_revision.saturating_sub(1),
            own_commit: None,
            position: u.batch_position,
            scan_start: 0,
            decided_ms: s.last_transition_time.map_or(0, |t| t.unix_millis()),
            view: DecisionView::Pending {
                reason: s.reason.clone().unwrap_or_default(),
                message: s.message.clone().unwrap_or_default(),
                unschedulable: Some(u),
            },
        });
    }
    let key = objects::key(AllocationSpec::INFO, Some(ns), name);
    let kv = state.store.get(&key).await?.ok_or_else(|| {
        ControlError::conflict(
            "Claim",
            name,
            "the claim's allocation is gone: there is no decision left to replay",
        )
    })?;
    let allocation: infraos_api::kinds::Allocation = decode_typed(&kv)?;
    let score = allocation.spec.score.clone().unwrap_or_default();
    Ok(Recorded {
        revision: allocation.spec.snapshot_revision,
        read_at: kv.create_revision,
        own_commit: Some(kv.create_revision),
        position: allocation.spec.batch_position,
        scan_start: score.scan_start,
        decided_ms: allocation
            .metadata
            .creation_timestamp
            .map_or(0, |t| t.unix_millis()),
        view: DecisionView::Placed {
            node: allocation.spec.node,
            score,
            runner_up: allocation.spec.runner_up,
        },
    })
}

fn history_error(e: infraos_store::StoreError, revision: u64) -> ControlError {
    match e {
        infraos_store::StoreError::Compacted { compacted, .. } => ControlError::gone(format!(
            "cannot replay at revision {revision}: the store keeps history only after revision \
             {compacted} (the embedded store keeps its last watchHistory changes in memory)"
        )),
        other => other.into(),
    }
}

fn view(outcome: Outcome, revision: u64, shown: Shown<'_>) -> DecisionView {
    match outcome {
        Outcome::Placed(p) => DecisionView::Placed {
            node: p.node,
            score: p.score,
            runner_up: p.runner_up,
        },
        Outcome::Unschedulable(e) => DecisionView::Pending {
            reason: e.reason.to_string(),
            message: e.message(),
            unschedulable: Some(Unschedulable {
                candidates: e.candidates,
                candidate_kind: e.candidate_kind.to_string(),
                reasons: e.reasons,
                snapshot_revision: revision,
                batch_position: 0,
            }),
        },
        Outcome::Preempt(p) => DecisionView::Pending {
            reason: "Preempting".to_string(),
            message: preemption_message(&p, shown),
            unschedulable: Some(Unschedulable {
                candidates: p.explanation.candidates,
                candidate_kind: p.explanation.candidate_kind.to_string(),
                reasons: p.explanation.reasons.clone(),
                snapshot_revision: revision,
                batch_position: 0,
            }),
        },
    }
}
