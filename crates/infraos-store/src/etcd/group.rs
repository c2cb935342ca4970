//! Group commit of ledger-bearing transactions on etcd.
//!
//! Every transaction that appends to the audit ledger extends one hash chain, so it must
//! compare the ledger head's revision. Sent one by one, concurrent writers race for the head:
//! each loser reads the head again and retries, so N writers cost O(N²) round trips and a few
//! hundred writes a second saturate the chain (issue 19). Here one task per store owns the
//! chain, as the embedded store's writer thread does:
//!
//! ```text
//!   txn() ──► queue ──► committer: take what queued, up to etcd's limits
//!                        │  (--max-txn-ops for compares and for ops, --max-request-bytes),
//!                        │  stop before a transaction that reads or writes a key the group
//!                        │  already writes (one etcd Txn sees only the state before it)
//!                        ├─► one etcd Txn: every compare + head unchanged,
//!                        │   every op + one block of the chained entries + the new head
//!                        ├─ succeeded: each caller gets the revision and its sequence numbers
//!                        ├─ failed, head moved (another server wrote): read it, same group again
//!                        └─ failed, head unchanged (a caller's compare): each transaction
//!                           again alone, in order, so only the one at fault fails
//! ```
//! A group is applied exactly as its transactions one after another would be: no member reads
//! a key another member writes, and no two members write one key. Members share one revision,
//! as keys written by one etcd transaction do. The head is cached between groups and checked
//! by the compare; after an error it is read again, since a write that timed out may have been
//! applied.

use std::collections::{HashSet, VecDeque};

use etcd_client::{Compare as EtcdCompare, CompareOp, Txn as EtcdTxn, TxnOp};
use tokio::sync::{mpsc, oneshot};

use super::blocks::LedgerBlock;
use super::{EtcdStore, revision_of};
use crate::{LedgerHead, Op, StoreError, Txn, TxnCost, TxnLimits, TxnOutcome};

/// Bytes of a request etcd adds around keys and values (gRPC and protobuf framing): the budget
/// leaves this much room under `--max-request-bytes`.
const FRAMING_ALLOWANCE: usize = 64 * 1024;
/// Rounds lost to other writers of the ledger before a group gives up.
const MAX_HEAD_RACES: usize = 64;

/// A ledger-bearing transaction waiting for the committer.
pub(super) struct Pending {
    pub txn: Txn,
    pub reply: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

/// etcd's limits on one request, as the cluster is configured.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
}

impl Limits {
    /// What one transaction may carry with the ledger head's compare and put, and the framing,
    /// taken off (what [`crate::Store::txn_limits`] tells writers).
    pub fn for_writers(&self) -> TxnLimits {
        TxnLimits {
            compares: self.max_txn_ops.saturating_sub(1),
            ops: self.max_txn_ops.saturating_sub(1),
            bytes: self.max_request_bytes.saturating_sub(FRAMING_ALLOWANCE),
        }
    }

    /// Whether a group of this cost (plus the head's compare and put) fits one etcd Txn.
    fn fits(&self, cost: TxnCost) -> bool {
        self.for_writers().admits(cost)
    }

    /// The refusal of a single transaction with more compares or operations than one etcd Txn
    /// takes (with the ledger head's compare and put when it appends), if it has.
    pub fn refuse(&self, cost: TxnCost) -> Option<StoreError> {
        let head = usize::from(cost.ledger_entries > 0);
        let most = (cost.ops() + head).max(cost.compares + head);
        (most > self.max_txn_ops).then(|| {
            StoreError::TxnTooLarge(format!(
                "{} operations and {} compares (the audit ledger's included) exceed the limit of \
                 {} per transaction (etcd's --max-txn-ops; maxTxnOps in the store URL)",
                cost.ops() + head,
                cost.compares + head,
                self.max_txn_ops
            ))
        })
    }
}

/// Keys a transaction writes, and whether it reads or writes one of `written`.
fn writes(txn: &Txn) -> impl Iterator<Item = &str> {
    txn.ops.iter().map(|op| match op {
        Op::Put(k, _) | Op::Delete(k) => k.as_str(),
    })
}

fn conflicts(txn: &Txn, written: &HashSet<String>) -> bool {
    txn.compares.iter().any(|c| written.contains(c.key()))
        || writes(txn).any(|k| written.contains(k))
}

/// The committer: runs until every store handle that can queue is dropped.
pub(super) async fn run(store: EtcdStore, limits: Limits, mut queue: mpsc::Receiver<Pending>) {
    let mut head: Option<(LedgerHead, i64)> = None;
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut cost = TxnCost::of(&first.txn);
        let mut written: HashSet<String> = writes(&first.txn).map(str::to_string).collect();
        let mut group = vec![first];
        while let Ok(next) = queue.try_recv() {
            let with = cost.plus(TxnCost::of(&next.txn));
            if !limits.fits(with) || conflicts(&next.txn, &written) {
                carried = Some(next);
                break;
            }
            cost = with;
            written.extend(writes(&next.txn).map(str::to_string));
            group.push(next);
        }
        commit(&store, group, &mut head).await;
    }
}

/// Commits a group, falling back to its members one by one when a caller's compare fails.
async fn commit(store: &EtcdStore, group: Vec<Pending>, head: &mut Option<(LedgerHead, i64)>) {
    let mut work: VecDeque<Vec<Pending>> = VecDeque::from([group]);
    while let Some(group) = work.pop_front() {
        match attempt(store, &group, head).await {
            Ok(Attempt::Committed(outcomes)) => {
                for (pending, outcome) in group.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Ok(Attempt::CompareFailed(revision)) if group.len() == 1 => {
                for pending in group {
                    let _ = pending.reply.send(Ok(TxnOutcome {
                        succeeded: false,
                        revision,
                        ledger_seqs: Vec::new(),
                    }));
                }
            }
            Ok(Attempt::CompareFailed(_)) => {
                for (i, pending) in group.into_iter().enumerate() {
                    work.insert(i, vec![pending]);
                }
            }
            Err(e) => {
                *head = None;
                for pending in group {
                    let _ = pending.reply.send(Err(e.duplicate()));
                }
            }
        }
    }
}

enum Attempt {
    Committed(Vec<TxnOutcome>),
    /// A member's compare failed; the store's revision then.
    CompareFailed(u64),
}

/// One group as one etcd Txn, again while other writers move the ledger head first.
async fn attempt(
    store: &EtcdStore,
    group: &[Pending],
    head: &mut Option<(LedgerHead, i64)>,
) -> Result<Attempt, StoreError> {
    for _ in 0..MAX_HEAD_RACES {
        let (start, head_revision) = match head.clone() {
            Some(h) => h,
            None => store.again(true, || store.read_head()).await?,
        };
        let mut when: Vec<EtcdCompare> = Vec::new();
        let mut then: Vec<TxnOp> = Vec::new();
        let mut block = LedgerBlock::after(&start);
        let mut seqs = Vec::with_capacity(group.len());
        for pending in group {
            when.extend(store.compares(&pending.txn));
            then.extend(store.ops(&pending.txn));
            seqs.push(
                pending
                    .txn
                    .ledger
                    .iter()
                    .map(|payload| block.push(payload))
                    .collect::<Vec<u64>>(),
            );
        }
        let tip = block.tip.clone();
        if let Some((key, value)) = block.finish() {
            then.push(TxnOp::put(store.ledger_block_key(key), value, None));
        }
        when.push(EtcdCompare::mod_revision(
            store.head.as_bytes(),
            CompareOp::Equal,
            head_revision,
        ));
        let mut value = tip.seq.to_le_bytes().to_vec();
        value.extend_from_slice(&tip.hash);
        then.push(TxnOp::put(store.head.as_bytes(), value, None));
        let txn = EtcdTxn::new().when(when).and_then(then);
        let resp = store
            .again(false, || async {
                store
                    .client()
                    .txn(txn.clone())
                    .await
                    .map_err(super::backend)
            })
            .await?;
        let revision = revision_of(resp.header());
        if resp.succeeded() {
            *head = Some((tip, revision as i64));
            return Ok(Attempt::Committed(
                seqs.into_iter()
                    .map(|ledger_seqs| TxnOutcome {
                        succeeded: true,
                        revision,
                        ledger_seqs,
                    })
                    .collect(),
            ));
        }
        let now = store.again(true, || store.read_head()).await?;
        let moved = now.1 != head_revision;
        *head = Some(now);
        if !moved {
            return Ok(Attempt::CompareFailed(revision));
        }
    }
    Err(StoreError::Backend(format!(
        "the audit ledger's head moved under this server {MAX_HEAD_RACES} times in a row: \
         other writers hold it"
    )))
}
