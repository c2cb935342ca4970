//! The lease controller: frees allocations whose lease ran out, once `expireTime` plus the
//! clock-skew margin has passed (DESIGN §2), and marks their claims Expired.
//!
//! It keeps a timer per active allocation, fed by a watch. When one fires it re-reads both
//! objects and decides again with [`lease::expiry_action`] (level-triggered: a renewal that
//! landed meanwhile simply moves the timer), then commits with compare-and-swap on both.

use foldhash::HashMap;
use std::collections::BTreeSet;
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, ClaimSpec};
use infraos_store::{Compare, Txn};
use tokio::sync::{mpsc, watch};

use crate::Context;
use crate::audit::{self, Actor, Record};
use crate::events;
use crate::lease::{self, End, ExpiryAction};
use crate::objects::{self, decode_typed, encode_typed};
use crate::reflector::{self, Change};

/// Longest sleep between checks, so wall-clock jumps are noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(500);

pub fn spawn(state: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(reflector::run(
        state.store.clone(),
        objects::prefix(AllocationSpec::INFO, None),
        (),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(state, rx, shutdown))
}

/// The part of an Allocation the timers need.
#[derive(serde::Deserialize)]
struct LeaseView {
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

#[derive(Default)]
struct Timers {
    due: BTreeSet<(i64, String)>,
    by_key: HashMap<String, i64>,
}

impl Timers {
    fn set(&mut self, key: String, at_ms: i64) {
        if let Some(old) = self.by_key.insert(key.clone(), at_ms) {
            self.due.remove(&(old, key.clone()));
        }
        self.due.insert((at_ms, key));
    }

    fn clear(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            self.due.remove(&(old, key.to_string()));
        }
    }

    fn pop_due(&mut self, now_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now_ms {
                break;
            }
            if let Some((_, key)) = self.due.pop_first() {
                self.by_key.remove(&key);
                out.push(key);
            }
        }
        out
    }

    fn next_ms(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }
}

async fn run(
    state: Context,
    mut rx: mpsc::Receiver<Change<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let margin = state.config.lease_skew_margin;
    let mut timers = Timers::default();
    let consider =
        |timers: &mut Timers, key: &str, kv: &infraos_store::KeyValue, now: infraos_api::Time| {
            // Only the phase and expiry matter here; the rest of the object is skipped unparsed.
            match serde_json::from_slice::<LeaseView>(&kv.value) {
                Ok(view) => match view.status {
                    Some(s) if s.phase.holds_resources() => {
                        let free_at = s.lease.expire_time.plus(margin);
                        if now > free_at {
                            timers.set(key.to_string(), now.unix_millis());
                        } else {
                            timers.set(key.to_string(), free_at.unix_millis() + 1);
                        }
                    }
                    _ => timers.clear(key),
                },
                Err(e) => tracing::error!(%key, error = %e, "cannot decode allocation"),
            }
        };
    loop {
        let now = state.clock.now();
        let sleep = timers
            .next_ms()
            .map(|at| Duration::from_millis(at.saturating_sub(now.unix_millis()).max(0) as u64))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            change = rx.recv() => {
                let now = state.clock.now();
                match change {
                    Some(Change::Resync((), kvs, _)) => {
                        timers = Timers::default();
                        for kv in &kvs {
                            consider(&mut timers, &kv.key, kv, now);
                        }
                    }
                    Some(Change::Events((), events)) => {
                        for e in events.iter() {
                            match e.kind {
                                infraos_store::EventKind::Put => consider(&mut timers, &e.kv.key, &e.kv, now),
                                infraos_store::EventKind::Delete => timers.clear(&e.kv.key),
                            }
                        }
                    }
                    None => return,
                }
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
        for key in timers.pop_due(state.clock.now().unix_millis()) {
            match expire(&state, &key).await {
                Ok(Some(at)) => timers.set(key, at),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%key, error = %e, "expiring a lease failed; retrying");
                    timers.set(key, state.clock.now().unix_millis() + 1000);
                }
            }
        }
    }
}

/// Expires one allocation if it is due; returns when to look again if it is not.
async fn expire(state: &Context, alloc_key: &str) -> Result<Option<i64>, crate::ControlError> {
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
) -> Result<(), crate::ControlError> {
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
    fn timers_fire_in_order_and_can_move() {
        let mut t = Timers::default();
        t.set("b".into(), 20);
        t.set("a".into(), 10);
        t.set("c".into(), 30);
        t.set("c".into(), 5);
        t.clear("b");
        assert_eq!(t.pop_due(15), vec!["c".to_string(), "a".to_string()]);
        assert_eq!(t.next_ms(), None);
    }
}
