//! The claim finalizer: deleting a claim releases its allocation first.
//!
//! A claim is created with the `infraos.io/allocation` finalizer. `DELETE` only sets its
//! deletionTimestamp; this controller then, in one transaction, marks the allocation released
//! (audited), deletes it, and removes the finalizer — which deletes the claim when no other
//! finalizer holds it. Events older than the configured TTL are collected here too.

use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationPhase, AllocationSpec, ClaimSpec, EventSpec};
use infraos_store::{Compare, Txn};
use tokio::sync::{mpsc, watch};

use crate::Context;
use crate::ControlError;
use crate::audit::{self, Actor, Record};
use crate::objects::{self, ALLOCATION_FINALIZER, decode_typed, encode_typed};
use crate::reflector::{self, Change};

const EVENT_GC_EVERY: Duration = Duration::from_secs(60);

pub fn spawn(state: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(reflector::run(
        state.store.clone(),
        objects::prefix(ClaimSpec::INFO, None),
        (),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(state, rx, shutdown))
}

async fn run(
    state: Context,
    mut rx: mpsc::Receiver<Change<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut gc = tokio::time::interval(EVENT_GC_EVERY);
    loop {
        let kvs = tokio::select! {
            change = rx.recv() => match change {
                Some(Change::Resync((), kvs, _)) => kvs,
                Some(Change::Events((), events)) => events
                    .iter()
                    .filter(|e| e.kind == infraos_store::EventKind::Put)
                    .map(|e| e.kv.clone())
                    .collect(),
                None => return,
            },
            _ = gc.tick() => {
                collect_events(&state).await;
                continue;
            }
            _ = shutdown.changed() => return,
        };
        for kv in kvs {
            // Cheap pre-filter on the raw bytes: most claim events are not deletions.
            if !contains(&kv.value, b"\"deletionTimestamp\"") {
                continue;
            }
            let deleting = serde_json::from_slice::<serde_json::Value>(&kv.value)
                .ok()
                .is_some_and(|v| v.pointer("/metadata/deletionTimestamp").is_some());
            if !deleting {
                continue;
            }
            for attempt in 0..5 {
                match finalize(&state, &kv.key).await {
                    Ok(true) => break,
                    Ok(false) if attempt < 4 => continue,
                    Ok(false) => {
                        tracing::warn!(claim = %kv.key, "finalizing kept conflicting; will retry on the next change")
                    }
                    Err(e) => {
                        tracing::warn!(claim = %kv.key, error = %e, "finalizing failed");
                        if reflector::sleep_or_shutdown(&mut shutdown, Duration::from_millis(200))
                            .await
                        {
                            return;
                        }
                    }
                }
            }
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
