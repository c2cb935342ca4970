//! The lease controller: frees allocations whose lease ran out, once `expireTime` plus the
//! clock-skew margin has passed (DESIGN §2), and marks their claims Expired.
//!
//! It runs on the controller runtime over the allocations: a reconcile of an active one
//! asks to be requeued when its lease is due (a timer per allocation, kept by the runtime's
//! queue). When due, it re-reads both objects and decides again with
//! [`lease::expiry_action`] (level-triggered: a renewal that landed meanwhile simply moves the
//! timer), then commits with compare-and-swap on both.

use std::sync::Arc;
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, ClaimSpec};
use infraos_store::{Compare, Txn};
use tokio::sync::watch;

use crate::audit::{self, Actor, Record};
use crate::events;
use crate::lease::{self, End, ExpiryAction};
use crate::objects::{self, decode_typed, encode_typed};
use crate::runtime::{self, Action, Reconciler};
use crate::{Context, ControlError};

/// Longest wait before an active allocation is looked at again, so a jump of the wall clock
/// (which the runtime's timers do not follow) is noticed within it.
const MAX_WAIT: Duration = Duration::from_secs(5);

pub fn spawn(ctx: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    runtime::spawn(
        Expiry,
        runtime::Config::new(objects::prefix(AllocationSpec::INFO, None)),
        ctx,
        shutdown,
    )
}

/// The part of an Allocation the timers need: the cache holds only this, so an allocation's
/// status report costs a partial parse here, not a full decode.
#[derive(serde::Deserialize)]
pub struct LeaseView {
    #[serde(default)]
    status: Option<LeaseViewStatus>,
}

#[derive(serde::Deserialize)]
struct LeaseViewStatus {
    phase: infraos_api::kinds::AllocationPhase,
    lease: LeaseViewLease,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseViewLease {
    expire_time: infraos_api::Time,
}

/// Frees allocations whose lease ran out.
pub struct Expiry;

impl Reconciler for Expiry {
    type Object = LeaseView;
    type Error = ControlError;

    fn name(&self) -> &'static str {
        "lease-controller"
    }

    async fn reconcile(
        &self,
        key: &str,
        view: Arc<LeaseView>,
        ctx: &Context,
    ) -> Result<Action, ControlError> {
        let free_at = match &view.status {
            Some(s) if s.phase.holds_resources() => {
                s.lease.expire_time.plus(ctx.config.lease_skew_margin)
            }
            _ => return Ok(Action::await_change()),
        };
        let now = ctx.clock.now();
        if now <= free_at {
            return Ok(wait_until(free_at.unix_millis() + 1, now.unix_millis()));
        }
        Ok(match expire(ctx, key).await? {
            Some(at_ms) => wait_until(at_ms, ctx.clock.now().unix_millis()),
            None => Action::await_change(),
        })
    }
}

/// Looks again at `at_ms` (wall clock), or within [`MAX_WAIT`].
fn wait_until(at_ms: i64, now_ms: i64) -> Action {
    let ms = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Action::requeue(Duration::from_millis(ms).min(MAX_WAIT))
}

/// Expires one allocation if it is due; returns when to look again if it is not.
async fn expire(state: &Context, alloc_key: &str) -> Result<Option<i64>, ControlError> {
    let Some(alloc_kv) = state.store.get(alloc_key).await? else {
        return Ok(None);
    };
    let mut allocation = decode_typed::<AllocationSpec>(&alloc_kv)?;
    let now = state.clock.now();
    match lease::expiry_action(&allocation, now, state.config.lease_skew_margin) {
        ExpiryAction::Done => return Ok(None),
        ExpiryAction::CheckAt(t) => return Ok(Some(t.unix_millis() + 1)),
        ExpiryAction::Expire => {}
    }
    let claim_key = objects::key(
        ClaimSpec::INFO,
        allocation.namespace(),
        &allocation.spec.claim.name,
    );
    let claim_kv = state.store.get(&claim_key).await?;
    let mut claim = match &claim_kv {
        Some(kv) => Some(decode_typed::<ClaimSpec>(kv)?),
        None => None,
    };
    // On a node that stopped heartbeating, the claim is not over: it is lost, and requeued.
    let node_lost = match &allocation.spec.node {
        Some(node) => {
            let node_key = objects::key(infraos_api::kinds::NodeSpec::INFO, None, node);
            match state.store.get(&node_key).await? {
                Some(kv) => !decode_typed::<infraos_api::kinds::NodeSpec>(&kv)?
                    .status
                    .is_none_or(|s| s.is_ready()),
                None => false,
            }
        }
        None => false,
    };
    let preempted = allocation
        .status
        .as_ref()
        .and_then(|s| s.preemption.as_ref())
        .map(|p| p.by.clone());
    // Expired is final: only a preemption marked while the lease ran requeues the claim.
    let end = lease::end_of(&allocation, node_lost);
    match end {
        End::Preempted => lease::end_preempted(claim.as_mut(), &mut allocation, now),
        End::Lost => lease::lose(claim.as_mut(), &mut allocation, now),
        End::Expired => lease::expire(claim.as_mut(), &mut allocation, now),
    }
    let (verb, reason) = match end {
        End::Preempted => ("end-preempted", "Preempted"),
        End::Lost => ("lose", "NodeLost"),
        End::Expired => ("expire", "LeaseExpired"),
    };
    // Lost and preempted claims are requeued: not over, so their allocation makes way for
    // the next one.
    let requeued = end != End::Expired;
    let alloc_bytes = encode_typed(&allocation);
    let mut object = audit::object_ref("Allocation", allocation.namespace(), allocation.name());
    object.uid = Some(allocation.metadata.uid.clone());
    let payload = Record {
        actor: &Actor::system("lease-controller"),
        verb,
        object,
        code: 200,
        reason: Some(reason.into()),
        before: Some(&alloc_kv.value),
        after: Some(&alloc_bytes),
        node: allocation.spec.node.clone(),
    }
    .payload(now);
    let txn = Txn::new().when(Compare::unchanged(
        alloc_key.to_string(),
        alloc_kv.mod_revision,
    ));
    // A requeued claim's allocation makes way for its next one (same name, higher epoch).
    let mut txn = if requeued {
        txn.delete(alloc_key.to_string())
    } else {
        txn.put(alloc_key.to_string(), alloc_bytes)
    }
    .append(payload);
    match (&claim, &claim_kv) {
        (Some(claim), Some(kv)) => {
            let expired_at = allocation.status.as_ref().map(|s| s.lease.expire_time);
            let at = expired_at.map(|t| t.to_string()).unwrap_or_default();
            let (kind, event_reason, message) = match end {
                End::Preempted => (
                    events::WARNING,
                    "Requeued",
                    format!(
                        "preempted by {}; the workload's grace ended at {at}; the claim is requeued",
                        preempted.as_deref().unwrap_or_default()
                    ),
                ),
                End::Lost => (
                    events::WARNING,
                    "Lost",
                    format!(
                        "node {} is not ready and the lease ended at {at}; the claim is requeued",
                        allocation.spec.node.as_deref().unwrap_or_default()
                    ),
                ),
                End::Expired => (
                    events::NORMAL,
                    "Expired",
                    format!("lease expired at {at} and was freed after the skew margin"),
                ),
            };
            let (event_key, event_bytes) = events::build(
                &events::claim_ref(claim.name(), claim.namespace(), &claim.metadata.uid),
                kind,
                event_reason,
                &message,
                "lease-controller",
                now,
            );
            txn = txn
                .when(Compare::unchanged(claim_key.clone(), kv.mod_revision))
                .put(claim_key, encode_typed(claim))
                .put(event_key, event_bytes);
        }
        _ => txn = txn.when(Compare::absent(claim_key)),
    }
    let out = state.store.txn(txn).await?;
    if out.succeeded {
        tracing::info!(allocation = %alloc_key, "lease expired; resources freed");
        if end == End::Lost
            && let (Some(group), Some(ns)) = (&allocation.spec.group, allocation.namespace())
        {
            stop_gang(state, ns, group, &allocation).await?;
        }
        Ok(None)
    } else {
        // Something changed (a renewal, a release): decide again right away.
        Ok(Some(now.unix_millis()))
    }
}

/// A gang is released together: when a member is lost with its node, the other members
/// are stopped (their workloads get their stop grace) and requeued, so the gang is placed
/// whole again rather than left running short of a member.
async fn stop_gang(
    state: &Context,
    ns: &str,
    group: &str,
    lost: &infraos_api::kinds::Allocation,
) -> Result<(), ControlError> {
    let prefix = objects::prefix(AllocationSpec::INFO, Some(ns));
    let members = state.store.range(&prefix, None, 0).await?;
    let by = format!("gang {ns}/{group}");
    let reason = format!(
        "member {} was lost with node {}; the gang is requeued whole",
        lost.name(),
        lost.spec.node.as_deref().unwrap_or_default()
    );
    for kv in &members.kvs {
        let Ok(member) = decode_typed::<AllocationSpec>(kv) else {
            continue;
        };
        if member.spec.group.as_deref() != Some(group) || member.name() == lost.name() {
            continue;
        }
        let stop = crate::controllers::applier::Stop {
            by: &by,
            reason: &reason,
            actor: "lease-controller",
            verb: "stop-gang",
            event_reason: "GangMemberLost",
            done: "stopped",
        };
        crate::controllers::applier::stop_early(
            state,
            &format!("{ns}/{}", member.name()),
            stop,
            Vec::new(),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_to_the_millisecond_and_capped() {
        assert_eq!(
            wait_until(1_250, 1_000).requeue_after(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(wait_until(900, 1_000).requeue_after(), Some(Duration::ZERO));
        assert_eq!(wait_until(1_000_000, 0).requeue_after(), Some(MAX_WAIT));
    }
}
