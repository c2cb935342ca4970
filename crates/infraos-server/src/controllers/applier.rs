//! The plan applier: the one place where scheduling decisions become stored allocations.
//!
//! ```text
//!   plan (made on the snapshot) ─► for each placement: Snapshot::fits? ── no ─► retry later
//!                                      │ yes: assume it in the snapshot
//!                                      ▼
//!   one transaction for the batch:  compare claim revision, allocation absent
//!                                   put Allocation, put Claim status, append audit record
//!        ├─ committed ─► done (the watch echo of our writes is idempotent)
//!        └─ conflict  ─► undo every assumption of the batch, retry those claims on fresh state
//! ```
//! Because only the applier adds allocations, and it re-checks each placement against the
//! snapshot it then updates, capacity cannot be exceeded by any interleaving of batches
//! (Nomad's plan applier works the same way). Unschedulable decisions are written as claim
//! status, only when their explanation changes.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, Claim, ClaimSpec, Unschedulable};
use infraos_scheduler::{Explanation, Outcome, Plan, Snapshot};
use infraos_store::{Compare, Txn};

use crate::audit::{self, Actor, Record};
use crate::events;
use crate::lease;
use crate::objects::{self, encode_typed};
use crate::state::AppState;

/// A claim as the scheduler last saw it in the store.
#[derive(Clone, Debug)]
pub struct ClaimEntry {
    pub claim: Arc<Claim>,
    pub revision: u64,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Claims now allocated, with the revision that wrote them.
    pub committed: Vec<(String, u64)>,
    /// Claims to place again on fresher state.
    pub retry: Vec<String>,
    /// Claims that fit nowhere, with the message written to their status.
    pub unschedulable: Vec<(String, String)>,
    /// The store failed: back off before the next batch.
    pub store_failed: bool,
}

fn claim_key(entry: &ClaimEntry) -> String {
    objects::key(ClaimSpec::INFO, entry.claim.namespace(), entry.claim.name())
}

fn alloc_key(entry: &ClaimEntry) -> String {
    objects::key(
        AllocationSpec::INFO,
        entry.claim.namespace(),
        entry.claim.name(),
    )
}

pub async fn commit(
    state: &AppState,
    snapshot: &mut Snapshot,
    plan: &Plan,
    claims: &HashMap<String, ClaimEntry>,
) -> Applied {
    let mut applied = Applied::default();
    let actor = Actor::system("scheduler");
    let now = state.clock.now();
    let mut txn = Txn::new();
    let mut assumed = Vec::new();
    let mut unschedulable = Vec::new();
    for decision in &plan.decisions {
        let Some(entry) = claims.get(&decision.claim_key) else {
            continue;
        };
        match &decision.outcome {
            Outcome::Placed(placement) => {
                if let Err(e) = snapshot.fits(&placement.resources) {
                    tracing::debug!(claim = %decision.claim_key, error = %e, "placement no longer fits");
                    applied.retry.push(decision.claim_key.clone());
                    continue;
                }
                snapshot.apply_allocation(&decision.claim_key, &placement.resources);
                assumed.push(decision.claim_key.clone());
                let mut claim = (*entry.claim).clone();
                let allocation =
                    lease::allocate(&mut claim, placement, now, plan.snapshot_revision);
                let alloc_bytes = encode_typed(&allocation);
                let mut object = audit::object_ref("Allocation", claim.namespace(), claim.name());
                object.uid = Some(allocation.metadata.uid.clone());
                let payload = Record {
                    actor: &actor,
                    verb: "allocate",
                    object,
                    code: 201,
                    reason: None,
                    before: None,
                    after: Some(&alloc_bytes),
                    node: placement.node.clone(),
                }
                .payload(now);
                txn = txn
                    .when(Compare::unchanged(claim_key(entry), entry.revision))
                    .when(Compare::absent(alloc_key(entry)))
                    .put(alloc_key(entry), alloc_bytes)
                    .put(claim_key(entry), encode_typed(&claim))
                    .append(payload);
            }
            Outcome::Unschedulable(explanation) => {
                unschedulable.push((
                    decision.claim_key.clone(),
                    entry.clone(),
                    explanation.clone(),
                ));
            }
        }
    }
    if !assumed.is_empty() {
        match state.store.txn(txn).await {
            Ok(out) if out.succeeded => {
                applied
                    .committed
                    .extend(assumed.iter().map(|k| (k.clone(), out.revision)));
            }
            outcome => {
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "committing a plan failed");
                    applied.store_failed = true;
                } else {
                    tracing::debug!(
                        claims = assumed.len(),
                        "plan conflicted with newer state; retrying"
                    );
                }
                for key in &assumed {
                    snapshot.remove_allocation(key);
                }
                applied.retry.extend(assumed);
            }
        }
    }
    let writes = unschedulable.into_iter().map(|(key, entry, explanation)| {
        write_unschedulable(state, key, entry, explanation, plan.snapshot_revision)
    });
    for (key, message) in join_all(writes).await.into_iter().flatten() {
        applied.unschedulable.push((key, message));
    }
    applied
}

/// Records why a claim fits nowhere, if that changed since the last attempt.
async fn write_unschedulable(
    state: &AppState,
    key: String,
    entry: ClaimEntry,
    explanation: Explanation,
    snapshot_revision: u64,
) -> Option<(String, String)> {
    let message = explanation.message();
    let current = entry.claim.status.as_ref();
    if current.and_then(|s| s.message.as_deref()) == Some(message.as_str()) {
        return Some((key, message));
    }
    let now = state.clock.now();
    let mut claim = (*entry.claim).clone();
    let status = claim.status.get_or_insert_with(Default::default);
    status.reason = Some("Unschedulable".into());
    status.message = Some(message.clone());
    status.unschedulable = Some(Unschedulable {
        candidates: explanation.candidates,
        candidate_kind: explanation.candidate_kind.to_string(),
        reasons: explanation.reasons.clone(),
        snapshot_revision,
    });
    let bytes = encode_typed(&claim);
    let involved = events::claim_ref(claim.name(), claim.namespace(), &claim.metadata.uid);
    let (event_key, event_bytes) = events::build(
        &involved,
        events::WARNING,
        "FailedScheduling",
        &message,
        "scheduler",
        now,
    );
    let mut object = audit::object_ref("Claim", claim.namespace(), claim.name());
    object.uid = Some(claim.metadata.uid.clone());
    let payload = Record {
        actor: &Actor::system("scheduler"),
        verb: "schedule",
        object,
        code: 409,
        reason: Some(format!("Unschedulable: {message}")),
        before: None,
        after: None,
        node: None,
    }
    .payload(now);
    let ck = claim_key(&entry);
    let result = state
        .store
        .txn(
            Txn::new()
                .when(Compare::unchanged(ck.clone(), entry.revision))
                .put(ck, bytes)
                .put(event_key, event_bytes)
                .append(payload),
        )
        .await;
    match result {
        Ok(out) if out.succeeded => Some((key, message)),
        // The claim changed meanwhile: its new state will be scheduled again.
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(claim = %key, error = %e, "could not record why a claim is unschedulable");
            None
        }
    }
}
