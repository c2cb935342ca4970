//! The claim finalizer: deleting a claim releases its allocation first.
//!
//! A claim is created with the `infraos.io/allocation` finalizer. `DELETE` only sets its
//! deletionTimestamp; this controller then, in one transaction, marks the allocation released
//! (audited), deletes it, and removes the finalizer — which deletes the claim when no other
//! finalizer holds it. Events older than the configured TTL are collected here too.
//!
//! It runs on the controller runtime over the claims being deleted (selected on their bytes,
//! so the others cost no decoding). A finalization that keeps losing its compare-and-swap
//! fails the reconcile, and the runtime's backoff tries it again: it never waits for another
//! change to the claim.

use std::sync::Arc;
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationPhase, AllocationSpec, Claim, ClaimSpec, EventSpec};
use infraos_store::{Compare, Txn};
use tokio::sync::watch;

use crate::audit::{self, Actor, Record};
use crate::objects::{self, ALLOCATION_FINALIZER, decode_typed, encode_typed};
use crate::runtime::{self, Action, Reconciler};
use crate::{Context, ControlError};

const EVENT_GC_EVERY: Duration = Duration::from_secs(60);

/// Compare-and-swap attempts in one reconcile before it fails (and backs off).
const ATTEMPTS: usize = 5;

/// Starts the finalizer and the event collector.
pub fn spawn(ctx: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(collect_events_every(ctx.clone(), shutdown.clone()));
    runtime::spawn(Finalizer, config(), ctx, shutdown)
}

fn config() -> runtime::Config {
    runtime::Config {
        select: Some(deleting),
        ..runtime::Config::new(objects::prefix(ClaimSpec::INFO, None))
    }
}

/// Cheap pre-filter on the raw bytes: most claims are not being deleted.
fn deleting(bytes: &[u8]) -> bool {
    contains(bytes, b"\"deletionTimestamp\"")
}

/// Finalizes claims being deleted.
pub struct Finalizer;

impl Reconciler for Finalizer {
    type Object = Claim;
    type Error = ControlError;

    fn name(&self) -> &'static str {
        "claim-finalizer"
    }

    async fn reconcile(
        &self,
        key: &str,
        claim: Arc<Claim>,
        ctx: &Context,
    ) -> Result<Action, ControlError> {
        if claim.metadata.deletion_timestamp.is_none() {
            return Ok(Action::await_change());
        }
        for _ in 0..ATTEMPTS {
            if finalize(ctx, key).await? {
                return Ok(Action::await_change());
            }
        }
        Err(ControlError::stale("Claim", claim.name()))
    }
}

async fn collect_events_every(ctx: Context, mut shutdown: watch::Receiver<bool>) {
    let mut gc = tokio::time::interval(EVENT_GC_EVERY);
    loop {
        tokio::select! {
            _ = gc.tick() => collect_events(&ctx).await,
            _ = shutdown.changed() => return,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Releases and removes the allocation of a claim being deleted; true when done.
async fn finalize(state: &Context, claim_key: &str) -> Result<bool, ControlError> {
    let Some(claim_kv) = state.store.get(claim_key).await? else {
        return Ok(true);
    };
    let mut claim = decode_typed::<ClaimSpec>(&claim_kv)?;
    if claim.metadata.deletion_timestamp.is_none()
        || !claim
            .metadata
            .finalizers
            .iter()
            .any(|f| f == ALLOCATION_FINALIZER)
    {
        return Ok(true);
    }
    let now = state.clock.now();
    let actor = Actor::system("claim-controller");
    let alloc_key = objects::key(AllocationSpec::INFO, claim.namespace(), claim.name());
    let mut txn = Txn::new().when(Compare::unchanged(
        claim_key.to_string(),
        claim_kv.mod_revision,
    ));
    match state.store.get(&alloc_key).await? {
        Some(alloc_kv) => {
            let mut allocation = decode_typed::<AllocationSpec>(&alloc_kv)?;
            let status = allocation.status.get_or_insert_with(Default::default);
            if status.phase == AllocationPhase::Active {
                status.phase = AllocationPhase::Released;
                status.end_time = Some(now);
                status.reason = Some("ClaimDeleted".into());
                let after = encode_typed(&allocation);
                let mut object =
                    audit::object_ref("Allocation", allocation.namespace(), allocation.name());
                object.uid = Some(allocation.metadata.uid.clone());
                txn = txn.append(
                    Record {
                        actor: &actor,
                        verb: "release",
                        object,
                        code: 200,
                        reason: Some("ClaimDeleted".into()),
                        before: Some(&alloc_kv.value),
                        after: Some(&after),
                        node: allocation.spec.node.clone(),
                    }
                    .payload(now),
                );
            }
            txn = txn
                .when(Compare::unchanged(alloc_key.clone(), alloc_kv.mod_revision))
                .delete(alloc_key);
        }
        None => txn = txn.when(Compare::absent(alloc_key)),
    }
    claim
        .metadata
        .finalizers
        .retain(|f| f != ALLOCATION_FINALIZER);
    let mut object = audit::object_ref("Claim", claim.namespace(), claim.name());
    object.uid = Some(claim.metadata.uid.clone());
    txn = txn.append(
        Record {
            actor: &actor,
            verb: "delete",
            object,
            code: 200,
            reason: Some("finalized".into()),
            before: Some(&claim_kv.value),
            after: None,
            node: None,
        }
        .payload(now),
    );
    txn = if claim.metadata.finalizers.is_empty() {
        txn.delete(claim_key.to_string())
    } else {
        txn.put(claim_key.to_string(), encode_typed(&claim))
    };
    Ok(state.store.txn(txn).await?.succeeded)
}

/// Deletes events whose last occurrence is older than the TTL.
async fn collect_events(state: &Context) {
    let cutoff = state.clock.now().unix_millis() - state.config.event_ttl.as_millis() as i64;
    let prefix = objects::prefix(EventSpec::INFO, None);
    let mut after: Option<String> = None;
    loop {
        let page = match state.store.range(&prefix, after.as_deref(), 1000).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "event collection could not list events");
                return;
            }
        };
        let mut txn = Txn::new();
        for kv in &page.kvs {
            if let Ok(event) = decode_typed::<EventSpec>(kv)
                && event.spec.last_timestamp.unix_millis() < cutoff
            {
                txn = txn
                    .when(Compare::unchanged(kv.key.clone(), kv.mod_revision))
                    .delete(kv.key.clone());
            }
        }
        if !txn.ops.is_empty()
            && let Err(e) = state.store.txn(txn).await
        {
            tracing::warn!(error = %e, "event collection failed");
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::testing;

    /// Regression: the finalizer gave up after five conflicts and "retried on the next
    /// change", so a claim deleted while conflicts persisted waited for a relist or a
    /// restart. Now the runtime's backoff retries it without any further change.
    #[tokio::test]
    async fn a_claim_deleted_while_conflicts_persist_is_finalized_without_another_change() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = testing::Flaky::new(testing::store(dir.path()));
        let claim: Claim = serde_json::from_value(serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Claim",
            "metadata": {"name": "c", "namespace": "p", "uid": "u-1",
                         "finalizers": [ALLOCATION_FINALIZER],
                         "deletionTimestamp": "2026-11-29T10:00:00Z"},
            "spec": {"requests": [{"name": "cpu", "class": "cpu", "count": 1}]}
        }))
        .unwrap();
        let key = objects::key(ClaimSpec::INFO, Some("p"), "c");
        flaky
            .inner
            .txn(Txn::new().put(key.clone(), encode_typed(&claim)))
            .await
            .unwrap();
        // Three reconciles' worth of lost races.
        flaky.conflicts.store(3 * ATTEMPTS, Ordering::SeqCst);
        let ctx = testing::context(flaky.clone());
        let (_stop, stop_rx) = watch::channel(false);
        let _controller = spawn(ctx, stop_rx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while flaky.inner.get(&key).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the claim was not finalized; {} transactions refused",
                flaky.refused.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(flaky.refused.load(Ordering::SeqCst), 3 * ATTEMPTS);
    }
}
