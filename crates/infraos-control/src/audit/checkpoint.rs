//! The checkpointer: while this replica leads, it signs the audit chain by appending
//! checkpoint records (format in `infraos_api::audit`).
//!
//! ```text
//!   every poll ──► ledger head (S, H) ──► due? ── no ──► wait
//!                                          │ yes: ≥ N records since the last checkpoint,
//!                                          │      or ≥ T since it and ≥ 1 record
//!                                          ▼
//!                 sign (S, H) on a blocking thread ──► append {verb checkpoint, checkpoint {S, H, …}}
//! ```
//! It runs per leadership term on the term's fenced store, so a deposed leader's checkpoint is
//! refused rather than interleaved with the new leader's. Records appended between reading the
//! head and appending the checkpoint are fine: the checkpoint names the record it read, which
//! the verifier finds among the records since the previous checkpoint, and the next checkpoint
//! covers the rest. The store's append path is untouched: a checkpoint is an ordinary entry.

use std::time::Duration;

use infraos_api::Time;
use infraos_api::audit::{AuditCheckpoint, checkpoint_body};
use infraos_api::signature::Purpose;
use infraos_store::{Store, StoreError, Txn};
use tokio::sync::watch;

use crate::Context;

/// Most records read back at the start of a term to find the last checkpoint.
const LOOKBACK: u64 = 5000;

/// When to checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub records: u64,
    pub interval_ms: i64,
}

/// The last checkpoint this term knows of: its record's seq and when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Last {
    pub seq: u64,
    pub at: Time,
}

impl Policy {
    /// Whether the chain with head `head_seq` needs a checkpoint now. Never for a chain whose
    /// last record is the checkpoint itself: an idle cluster adds no records.
    pub fn due(&self, head_seq: u64, last: Last, now: Time) -> bool {
        let new = head_seq.saturating_sub(last.seq);
        new > 0 && (new >= self.records || last.at.millis_until(now) >= self.interval_ms)
    }

    /// How often to look at the head: often enough to keep to the interval and to notice N
    /// records soon after they land, at most once a second.
    fn poll(&self) -> Duration {
        Duration::from_millis(
            u64::try_from(self.interval_ms / 4)
                .unwrap_or(0)
                .clamp(50, 1000),
        )
    }
}

/// The part of an entry the checkpointer reads back.
#[derive(serde::Deserialize)]
struct Probe {
    #[serde(default)]
    checkpoint: Option<serde::de::IgnoredAny>,
    time: Option<Time>,
}

/// The last checkpoint among the chain's newest records. When none is found, the interval
/// counts from `now`, and the count from before the records read: a chain with no checkpoint
/// in its last N records is due at once.
async fn find_last(store: &dyn Store, policy: &Policy, now: Time) -> Result<Last, StoreError> {
    let head = store.ledger_head().await?;
    let window = policy.records.min(LOOKBACK);
    let from = head.seq.saturating_sub(window.saturating_sub(1)).max(1);
    let entries = store
        .ledger_range(from, usize::try_from(window).unwrap_or(usize::MAX))
        .await?;
    let found = entries.iter().rev().find_map(|e| {
        let probe: Probe = serde_json::from_slice(&e.payload).ok()?;
        probe.checkpoint.map(|_| Last {
            seq: e.seq,
            at: probe.time.unwrap_or(now),
        })
    });
    Ok(found.unwrap_or(Last {
        seq: from.saturating_sub(1),
        at: now,
    }))
}

pub fn spawn(state: Context, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(state, stop))
}

async fn run(state: Context, mut stop: watch::Receiver<bool>) {
    let policy = Policy {
        records: state.config.audit_checkpoint_records.max(1),
        interval_ms: i64::try_from(state.config.audit_checkpoint_interval.as_millis())
            .unwrap_or(i64::MAX),
    };
    let mut last = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(policy.poll()) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = state.clock.now();
        let known = match last {
            Some(l) => l,
            None => match find_last(&*state.store, &policy, now).await {
                Ok(l) => *last.insert(l),
                Err(e) => {
                    tracing::warn!(error = %e, "audit checkpointer cannot read the chain");
                    continue;
                }
            },
        };
        match tick(&state, &policy, known, now).await {
            Ok(Some(l)) => last = Some(l),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
        }
    }
}

/// Appends a checkpoint when one is due; returns it.
async fn tick(
    state: &Context,
    policy: &Policy,
    last: Last,
    now: Time,
) -> Result<Option<Last>, crate::ControlError> {
    let head = state.store.ledger_head().await?;
    if !policy.due(head.seq, last, now) {
        return Ok(None);
    }
    let signature = super::sign_blocking(
        &state.signer,
        Purpose::AuditCheckpoint,
        checkpoint_body(head.seq, &head.hash),
    )
    .await?;
    let payload = super::checkpoint_payload(
        now,
        AuditCheckpoint {
            hash: hex::encode(head.hash),
            key_id: state.signer.public_key().key_id(),
            seq: head.seq,
            signature,
        },
    );
    let outcome = state.store.txn(Txn::new().append(payload)).await?;
    match outcome.ledger_seqs.first() {
        Some(&seq) if outcome.succeeded => {
            tracing::debug!(seq, covers = head.seq, "audit checkpoint");
            Ok(Some(Last { seq, at: now }))
        }
        // The fence moved: this term is over and the supervisor stops this task.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_n_records_or_t_with_something_new() {
        let p = Policy {
            records: 10,
            interval_ms: 60_000,
        };
        let t0 = Time::from_unix_millis(1_000_000);
        let last = Last { seq: 100, at: t0 };
        let later = |ms: i64| Time::from_unix_millis(1_000_000 + ms);
        // Nothing new: never, however long.
        assert!(!p.due(100, last, later(10_000_000)));
        // Some new records: at T, not before.
        assert!(!p.due(105, last, later(59_999)));
        assert!(p.due(105, last, later(60_000)));
        // N new records: at once.
        assert!(!p.due(109, last, t0));
        assert!(p.due(110, last, t0));
        // A head behind the checkpoint (a stale read) is not new.
        assert!(!p.due(90, last, later(60_000)));
    }

    #[test]
    fn polls_within_bounds() {
        let poll = |interval_ms| {
            Policy {
                records: 1,
                interval_ms,
            }
            .poll()
        };
        assert_eq!(poll(100), Duration::from_millis(50));
        assert_eq!(poll(2000), Duration::from_millis(500));
        assert_eq!(poll(60_000), Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn finds_the_last_checkpoint_in_the_chain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = infraos_store::embedded::EmbeddedStore::open(
            &dir.path().join("store.redb"),
            Default::default(),
        )
        .expect("store");
        let now = Time::from_unix_millis(5_000);
        let p = Policy {
            records: 3,
            interval_ms: 1000,
        };
        // Empty chain: nothing to sign yet.
        assert_eq!(
            find_last(&store, &p, now).await.expect("find"),
            Last { seq: 0, at: now }
        );
        let plain = |n: u32| serde_json::to_vec(&serde_json::json!({"verb": "create", "n": n}));
        for n in 0..2 {
            store
                .txn(Txn::new().append(plain(n).expect("json")))
                .await
                .expect("append");
        }
        assert_eq!(
            find_last(&store, &p, now).await.expect("find").seq,
            0,
            "fewer than N records and no checkpoint: count from the start"
        );
        let cp = serde_json::json!({"verb": "checkpoint", "time": "1970-01-01T00:00:02Z", "checkpoint": {}});
        store
            .txn(Txn::new().append(serde_json::to_vec(&cp).expect("json")))
            .await
            .expect("append");
        store
            .txn(Txn::new().append(plain(9).expect("json")))
            .await
            .expect("append");
        assert_eq!(
            find_last(&store, &p, now).await.expect("find"),
            Last {
                seq: 3,
                at: Time::from_unix_millis(2_000)
            }
        );
        for n in 0..3 {
            store
                .txn(Txn::new().append(plain(n).expect("json")))
                .await
                .expect("append");
        }
        // Seven records, none of the last three a checkpoint: due at once.
        let last = find_last(&store, &p, now).await.expect("find");
        assert_eq!(last.seq, 4);
        assert!(p.due(7, last, now));
    }
}
