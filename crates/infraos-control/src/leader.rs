//! Leader election among server replicas on one store: exactly one runs the scheduler and
//! the controllers; every replica serves the API.
//!
//! ```text
//!   /coordination/leader   {holder, epoch, renewTime, leaseDurationMs}   renewed by the leader (CAS)
//!   /coordination/epoch    {epoch, holder}                                written once per term
//!
//!   follower ── lease expired (renewTime + duration < now) ──► CAS: take the lease, bump epoch
//!   leader   ── renew every renewInterval ──► CAS fails or the lease ran out ──► stop acting
//! ```
//! Kubernetes' Lease-based election, on the store contract alone (embedded or etcd). The
//! epoch key is the fencing token: a term's controllers write through [`FencedStore`], which
//! adds "the epoch key is still at this term's revision" to every transaction, so a deposed
//! leader that has not noticed yet can change nothing: the new leader moved the key when it
//! took over. A leader stops acting when a renewal fails or when its lease would have run out
//! by its own clock, whichever comes first, so it stops before another replica may start
//! (followers wait the full lease duration from the last renewal they saw).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infraos_store::{Compare, Revision, Store, StoreError, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub const LEASE_KEY: &str = "/coordination/leader";
pub const EPOCH_KEY: &str = "/coordination/epoch";
/// The newest schema version any leader has run with.
pub const SCHEMA_KEY: &str = "/coordination/schema";

/// The layout of stored objects this build reads and writes. A leader records it; a replica
/// of an older build then refuses to lead (it would write objects the newer one misreads),
/// while it still serves the API during a rolling upgrade.
///
/// 2: a workload's driver settings moved into `spec.workload.config` (an older build cannot
/// read the new shape; this one still reads the old, see `infraos-api` `kinds/workload/legacy.rs`).
pub const SCHEMA_VERSION: u64 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub holder: String,
    pub epoch: u64,
    pub renew_time_ms: i64,
    pub lease_duration_ms: i64,
}

/// One term of leadership: the fencing token every commit of the term carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub epoch: u64,
    /// The epoch key's revision when this term began.
    pub fence_revision: Revision,
}

/// What this replica knows of the election, for `/leader` and the controllers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub identity: String,
    /// The current term, while this replica leads.
    pub term: Option<Term>,
    /// The holder of the lease as last seen.
    pub holder: Option<String>,
}

/// A store whose every transaction also requires the term's epoch key to be unchanged:
/// writes of a deposed leader fail instead of landing.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    fence_revision: Revision,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn Store>, term: &Term) -> Self {
        FencedStore {
            inner,
            fence_revision: term.fence_revision,
        }
    }
}

/// Passes every call through but `txn`, which gains the fence.
#[async_trait::async_trait]
impl infraos_store::Wrapper for FencedStore {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.inner
            .txn(txn.when(Compare::unchanged(EPOCH_KEY, self.fence_revision)))
            .await
    }
    /// The fence's compare rides on every transaction.
    fn txn_limits(&self) -> infraos_store::TxnLimits {
        let mut limits = self.inner.txn_limits();
        limits.compares = limits.compares.saturating_sub(1);
        limits
    }
}

/// How the election is timed.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

/// One attempt to take or keep the lease at `now_ms`: the new term when this replica leads.
pub async fn try_acquire_or_renew(
    store: &dyn Store,
    identity: &str,
    timing: Timing,
    now_ms: i64,
    current: Option<&Term>,
) -> Result<(Option<Term>, Option<String>), StoreError> {
    try_acquire_or_renew_as(store, identity, timing, now_ms, current, SCHEMA_VERSION).await
}

/// [`try_acquire_or_renew`] for a build of schema version `schema` (tests play old builds).
pub async fn try_acquire_or_renew_as(
    store: &dyn Store,
    identity: &str,
    timing: Timing,
    now_ms: i64,
    current: Option<&Term>,
    schema: u64,
) -> Result<(Option<Term>, Option<String>), StoreError> {
    let duration_ms = timing.lease_duration.as_millis() as i64;
    let lease = store.get(LEASE_KEY).await?;
    let record = lease
        .as_ref()
        .and_then(|kv| serde_json::from_slice::<LeaseRecord>(&kv.value).ok());
    if let Some(r) = &record {
        let ours = r.holder == identity && current.is_some_and(|t| t.epoch == r.epoch);
        let expired = now_ms > r.renew_time_ms + r.lease_duration_ms;
        if !ours && !expired {
            return Ok((None, Some(r.holder.clone())));
        }
        if ours {
            let renewed = LeaseRecord {
                renew_time_ms: now_ms,
                lease_duration_ms: duration_ms,
                ..r.clone()
            };
            let value = serde_json::to_vec(&renewed).unwrap_or_default();
            let revision = lease.as_ref().map_or(0, |kv| kv.mod_revision);
            let out = store
                .txn(
                    Txn::new()
                        .when(Compare::unchanged(LEASE_KEY, revision))
                        .put(LEASE_KEY, value),
                )
                .await?;
            return Ok(if out.succeeded {
                (current.cloned(), Some(identity.to_string()))
            } else {
                (None, None)
            });
        }
    }
    // Free or expired: take it, moving the epoch key on (the fence of the previous term), and
    // recording this build's schema, unless a newer build has led already.
    let schema_kv = store.get(SCHEMA_KEY).await?;
    let stored_schema = schema_kv
        .as_ref()
        .and_then(|kv| {
            std::str::from_utf8(&kv.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    if stored_schema > schema {
        tracing::warn!(
            stored = stored_schema,
            ours = schema,
            "refusing to lead: a server with a newer schema version has led this store; \
             upgrade this server (it keeps serving the API)"
        );
        return Ok((None, record.map(|r| r.holder)));
    }
    let schema_revision = schema_kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let epoch = record.as_ref().map_or(0, |r| r.epoch) + 1;
    let lease_revision = lease.as_ref().map_or(0, |kv| kv.mod_revision);
    let epoch_kv = store.get(EPOCH_KEY).await?;
    let epoch_revision = epoch_kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let taken = LeaseRecord {
        holder: identity.to_string(),
        epoch,
        renew_time_ms: now_ms,
        lease_duration_ms: duration_ms,
    };
    let out = store
        .txn(
            Txn::new()
                .when(Compare::unchanged(LEASE_KEY, lease_revision))
                .when(Compare::unchanged(EPOCH_KEY, epoch_revision))
                .when(Compare::unchanged(SCHEMA_KEY, schema_revision))
                .put(SCHEMA_KEY, schema.to_string())
                .put(LEASE_KEY, serde_json::to_vec(&taken).unwrap_or_default())
                .put(
                    EPOCH_KEY,
                    Bytes::from(format!("{{\"epoch\":{epoch},\"holder\":{identity:?}}}")),
                ),
        )
        .await?;
    if !out.succeeded {
        return Ok((None, None));
    }
    Ok((
        Some(Term {
            epoch,
            fence_revision: out.revision,
        }),
        Some(identity.to_string()),
    ))
}

/// Gives the lease up (at shutdown), so a follower takes over at once, not after the lease.
pub async fn release(store: &dyn Store, identity: &str) {
    let Ok(Some(kv)) = store.get(LEASE_KEY).await else {
        return;
    };
    let Ok(mut record) = serde_json::from_slice::<LeaseRecord>(&kv.value) else {
        return;
    };
    if record.holder != identity {
        return;
    }
    record.renew_time_ms = 0;
    record.lease_duration_ms = 0;
    let _ = store
        .txn(
            Txn::new()
                .when(Compare::unchanged(LEASE_KEY, kv.mod_revision))
                .put(LEASE_KEY, serde_json::to_vec(&record).unwrap_or_default()),
        )
        .await;
}

/// Runs the election until shutdown, publishing this replica's status: `term` is `Some`
/// exactly while it may act.
pub async fn run(
    store: Arc<dyn Store>,
    clock: crate::SharedClock,
    identity: String,
    timing: Timing,
    status: watch::Sender<Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut term: Option<Term> = None;
    let mut last_renewal_ms = 0i64;
    let lease_ms = timing.lease_duration.as_millis() as i64;
    loop {
        let now_ms = clock.now().unix_millis();
        let next = match try_acquire_or_renew(&*store, &identity, timing, now_ms, term.as_ref())
            .await
        {
            Ok((t, holder)) => {
                if t.is_some() {
                    last_renewal_ms = now_ms;
                }
                if t != term {
                    match &t {
                        Some(t) => tracing::info!(epoch = t.epoch, "leading: starting controllers"),
                        None if term.is_some() => {
                            tracing::warn!("leadership lost: stopping controllers")
                        }
                        None => {}
                    }
                }
                term = t;
                holder
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: the store failed");
                // Stop acting before the lease can have run out for the others.
                if term.is_some() && now_ms - last_renewal_ms > lease_ms * 2 / 3 {
                    tracing::warn!("leadership lost: renewals failed");
                    term = None;
                }
                status.borrow().holder.clone()
            }
        };
        status.send_replace(Status {
            identity: identity.clone(),
            term: term.clone(),
            holder: next,
        });
        tokio::select! {
            _ = tokio::time::sleep(timing.renew_interval) => {}
            _ = shutdown.changed() => {
                if term.is_some() {
                    release(&*store, &identity).await;
                }
                status.send_replace(Status { identity, term: None, holder: None });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = infraos_store::embedded::EmbeddedStore::open(
            &dir.path().join("s.redb"),
            Default::default(),
        )
        .unwrap();
        (dir, Arc::new(s))
    }

    const T: Timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_interval: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_deposed_one_is_fenced() {
        let (_d, s) = store();
        let (a, _) = try_acquire_or_renew(&*s, "a", T, 1_000, None)
            .await
            .unwrap();
        let a = a.expect("a leads a free lease");
        let (b, holder) = try_acquire_or_renew(&*s, "b", T, 2_000, None)
            .await
            .unwrap();
        assert_eq!((b, holder.as_deref()), (None, Some("a")));
        // a renews and keeps its term; b still waits.
        let (again, _) = try_acquire_or_renew(&*s, "a", T, 3_500, Some(&a))
            .await
            .unwrap();
        assert_eq!(again.as_ref(), Some(&a));
        assert!(
            try_acquire_or_renew(&*s, "b", T, 6_000, None)
                .await
                .unwrap()
                .0
                .is_none()
        );
        // a falls silent: once its lease has run out, b takes over with a newer epoch.
        let (b, _) = try_acquire_or_renew(&*s, "b", T, 6_600, None)
            .await
            .unwrap();
        let b = b.expect("b takes an expired lease");
        assert!(b.epoch > a.epoch);
        // a's writes through its fenced store now fail; b's land.
        let fenced_a = FencedStore::new(Arc::clone(&s), &a);
        let out = fenced_a.txn(Txn::new().put("/x", "from a")).await.unwrap();
        assert!(!out.succeeded, "a deposed leader's write must not land");
        let fenced_b = FencedStore::new(Arc::clone(&s), &b);
        assert!(
            fenced_b
                .txn(Txn::new().put("/x", "from b"))
                .await
                .unwrap()
                .succeeded
        );
        // a cannot renew its way back.
        let (back, holder) = try_acquire_or_renew(&*s, "a", T, 6_700, Some(&a))
            .await
            .unwrap();
        assert_eq!((back, holder.as_deref()), (None, Some("b")));
        // Released at shutdown: a follower takes over at once.
        release(&*s, "b").await;
        assert!(
            try_acquire_or_renew(&*s, "a", T, 6_800, None)
                .await
                .unwrap()
                .0
                .is_some()
        );
    }

    #[tokio::test]
    async fn an_older_build_does_not_lead_after_a_newer_one() {
        let (_d, s) = store();
        let old = SCHEMA_VERSION;
        let new = SCHEMA_VERSION + 1;
        // A newer build leads once (a rolling upgrade).
        let (t, _) = try_acquire_or_renew_as(&*s, "new", T, 1_000, None, new)
            .await
            .unwrap();
        assert!(t.is_some());
        // It goes away; the old build may not take over even when the lease is free.
        release(&*s, "new").await;
        let (t, _) = try_acquire_or_renew_as(&*s, "old", T, 2_000, None, old)
            .await
            .unwrap();
        assert!(t.is_none(), "an older schema must not lead");
        // Another replica of the newer build may.
        let (t, _) = try_acquire_or_renew_as(&*s, "new2", T, 2_100, None, new)
            .await
            .unwrap();
        assert!(t.is_some());
    }
}
