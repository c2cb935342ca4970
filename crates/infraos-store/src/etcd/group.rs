//! Group commit of ledger-bearing transactions on etcd.
//!
//! Every transaction that appends to the audit ledger extends one hash chain, so it must
//! compare the ledger head. Sent one by one, concurrent writers race for the head: each loser
//! reads the head again and retries, so N writers cost O(N²) round trips and a few hundred
//! writes a second saturate the chain (issue 19). Here one task per store owns the chain, as
//! the embedded store's writer thread does:
//!
//! ```text
//!   txn() ──► queue ──► committer: take what queued, up to etcd's limits
//!                        │  (--max-txn-ops for compares and for ops, --max-request-bytes),
//!                        │  stop before a transaction that reads or writes a key the group
//!                        │  already writes (one etcd Txn sees only the state before it)
//!                        ├─► one etcd Txn: every compare + head == the head it chains on,
//!                        │   every op + one block of the chained entries + the new head
//!                        │   (up to DEPTH groups in flight, each chained on the one before)
//!                        ├─ succeeded: each caller gets the revision and its sequence numbers
//!                        ├─ failed, head moved (another server wrote): read it, same group again
//!                        └─ failed, head as chained (a caller's compare): each transaction
//!                           again alone, in order, so only the one at fault fails
//! ```
//! A group is applied exactly as its transactions one after another would be: no member reads
//! a key another member writes, and no two members write one key. Members share one revision,
//! as keys written by one etcd transaction do. Groups in flight are applied in the order sent
//! or not at all, since each compares the head's value (sequence number and hash) with the one
//! its predecessor leaves: so etcd syncs several to disk at once, and the chain stays one
//! chain. After a failure or an error the head is read again, since a write that timed out may
//! have been applied.

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
    /// Its cost against etcd's limits, as the caller's check found it.
    pub cost: TxnCost,
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

/// Groups sent but not yet answered, at most: etcd takes the proposals that arrive while it
/// syncs its log to disk into the next sync, so several groups in flight share one fsync.
const DEPTH: usize = 8;

/// A group of queued transactions, committed together or, when a member's compare fails,
/// one by one.
struct Group {
    members: Vec<Pending>,
    /// Times it lost the head to another writer.
    races: usize,
    /// Sent with nothing else in flight: it failed once with the head as it chained on, which
    /// etcd taking a later group first also explains; alone, only a member's compare does.
    alone: bool,
}

/// A group as sent: the head it was chained on, whether another was in flight before it, and
/// etcd's answer.
struct Sent {
    group: Group,
    base: LedgerHead,
    behind_another: bool,
    seqs: Vec<Vec<u64>>,
    answer: Result<etcd_client::TxnResponse, StoreError>,
}

/// The committer: runs until every store handle that can queue is dropped.
///
/// Up to [`DEPTH`] groups are in flight. Each compares the ledger head's value with the head
/// the group before it leaves (its sequence number and hash), so etcd applies them in order
/// or not at all: a group applied before the one it builds on fails its compare, and every
/// group after one that failed fails too. Answers are taken in order; at the first failure
/// the rest of the flight is awaited, the head read again, and the groups sent again on it
/// (a group whose head was right failed on a member's compare: its members go one by one).
pub(super) async fn run(store: EtcdStore, limits: Limits, mut queue: mpsc::Receiver<Pending>) {
    use futures::StreamExt as _;
    let mut tip: Option<LedgerHead> = None;
    let mut carried: Option<Pending> = None;
    let mut again: VecDeque<Group> = VecDeque::new();
    let mut flight = futures::stream::FuturesOrdered::new();
    let mut open = true;
    // A group sent alone is in flight: nothing goes after it until it is answered.
    let mut alone_in_flight = false;
    loop {
        while flight.len() < DEPTH && !alone_in_flight {
            let group = match again.pop_front() {
                Some(g) if g.alone && !flight.is_empty() => {
                    again.push_front(g);
                    break;
                }
                Some(g) => g,
                None => {
                    let first = match carried.take() {
                        Some(p) => p,
                        None if !open => break,
                        // Nothing in flight: wait for work. Otherwise only take what queued.
                        None if flight.is_empty() => match queue.recv().await {
                            Some(p) => p,
                            None => {
                                open = false;
                                break;
                            }
                        },
                        None => match queue.try_recv() {
                            Ok(p) => p,
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                open = false;
                                break;
                            }
                        },
                    };
                    Group {
                        members: gather(first, &mut queue, &limits, &mut carried),
                        races: 0,
                        alone: false,
                    }
                }
            };
            let base = match tip.clone() {
                Some(t) => t,
                None => match store.again(true, || store.read_head()).await {
                    Ok((h, _)) => h,
                    Err(e) => {
                        fail(group, &e);
                        continue;
                    }
                },
            };
            let (txn, next, seqs) = build(&store, &group, &base);
            tip = Some(next.clone());
            let behind_another = !flight.is_empty();
            alone_in_flight = group.alone;
            let store = store.clone();
            flight.push_back(async move {
                let answer = store
                    .again(false, || async {
                        store
                            .client()
                            .txn(txn.clone())
                            .await
                            .map_err(super::backend)
                    })
                    .await;
                Sent {
                    group,
                    base,
                    behind_another,
                    seqs,
                    answer,
                }
            });
        }
        // Wait for the oldest answer, taking in what queues meanwhile while there is room.
        let sent = if flight.is_empty() {
            None
        } else {
            tokio::select! {
                sent = flight.next() => sent,
                pending = queue.recv(), if open && carried.is_none() && flight.len() < DEPTH
                    && !alone_in_flight => {
                    match pending {
                        Some(p) => carried = Some(p),
                        None => open = false,
                    }
                    continue;
                }
            }
        };
        let Some(sent) = sent else {
            if !open && again.is_empty() && carried.is_none() {
                return;
            }
            continue;
        };
        if flight.is_empty() {
            alone_in_flight = false;
        }
        if let Ok(resp) = &sent.answer
            && resp.succeeded()
        {
            reply_committed(sent.group, sent.seqs, revision_of(resp.header()));
            continue;
        }
        // It failed: so does everything built on it, unless it committed after all (an
        // error may hide a commit). Let the flight land, then look at the head.
        let mut later = Vec::new();
        while let Some(s) = flight.next().await {
            later.push(s);
        }
        tip = None;
        let head = match store.again(true, || store.read_head()).await {
            Ok((h, _)) => {
                tip = Some(h.clone());
                h
            }
            Err(e) => {
                fail(sent.group, &e);
                for s in later {
                    fail(s.group, &e);
                }
                continue;
            }
        };
        // What goes again, in order, before anything else.
        let mut front: Vec<Group> = Vec::new();
        match sent.answer {
            Err(e) => fail(sent.group, &e),
            Ok(_) if head == sent.base && sent.behind_another => {
                // The head is as it chained on: a member's compare failed, or etcd applied it
                // before the group it builds on. Alone, it tells which.
                let mut group = sent.group;
                group.alone = true;
                front.push(group);
            }
            Ok(resp) if head == sent.base => {
                // Sent alone, the head as chained: a member's compare failed.
                if sent.group.members.len() == 1 {
                    let revision = revision_of(resp.header());
                    for pending in sent.group.members {
                        let _ = pending.reply.send(Ok(TxnOutcome {
                            succeeded: false,
                            revision,
                            ledger_seqs: Vec::new(),
                        }));
                    }
                } else {
                    front.extend(sent.group.members.into_iter().map(|pending| Group {
                        members: vec![pending],
                        races: 0,
                        alone: true,
                    }));
                }
            }
            Ok(_) => {
                // Another writer moved the head (or etcd took a later group first).
                let mut group = sent.group;
                group.races += 1;
                group.alone = false;
                if group.races > MAX_HEAD_RACES {
                    fail(
                        group,
                        &StoreError::Backend(format!(
                            "the audit ledger's head moved under this server \
                             {MAX_HEAD_RACES} times in a row: other writers hold it"
                        )),
                    );
                } else {
                    front.push(group);
                }
            }
        }
        for s in later {
            match s.answer {
                Ok(resp) if resp.succeeded() => {
                    reply_committed(s.group, s.seqs, revision_of(resp.header()))
                }
                Ok(_) => front.push(s.group),
                Err(e) => fail(s.group, &e),
            }
        }
        for group in front.into_iter().rev() {
            again.push_front(group);
        }
    }
}

/// What queued after `first`, up to etcd's limits, stopping before a transaction that reads
/// or writes a key the group already writes (one etcd Txn sees only the state before it).
fn gather(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
    limits: &Limits,
    carried: &mut Option<Pending>,
) -> Vec<Pending> {
    let mut cost = first.cost;
    let mut written: HashSet<String> = writes(&first.txn).map(str::to_string).collect();
    let mut group = vec![first];
    while let Ok(next) = queue.try_recv() {
        let with = cost.plus(next.cost);
        if !limits.fits(with) || conflicts(&next.txn, &written) {
            *carried = Some(next);
            break;
        }
        cost = with;
        written.extend(writes(&next.txn).map(str::to_string));
        group.push(next);
    }
    group
}

/// A group as one etcd Txn chained on `base`: every member's compares and writes, one block of
/// their ledger entries, and the head, compared with `base` and moved to the block's tip.
fn build(
    store: &EtcdStore,
    group: &Group,
    base: &LedgerHead,
) -> (EtcdTxn, LedgerHead, Vec<Vec<u64>>) {
    let mut when: Vec<EtcdCompare> = Vec::new();
    let mut then: Vec<TxnOp> = Vec::new();
    let mut block = LedgerBlock::after(base);
    let mut seqs = Vec::with_capacity(group.members.len());
    for pending in &group.members {
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
    // A head never written compares by version (etcd fails a value compare on a missing key).
    when.push(if base.seq == 0 {
        EtcdCompare::version(store.head.as_bytes(), CompareOp::Equal, 0)
    } else {
        EtcdCompare::value(store.head.as_bytes(), CompareOp::Equal, head_value(base))
    });
    then.push(TxnOp::put(store.head.as_bytes(), head_value(&tip), None));
    (EtcdTxn::new().when(when).and_then(then), tip, seqs)
}

/// The head key's value: sequence number (little-endian) and hash of the newest entry.
fn head_value(head: &LedgerHead) -> Vec<u8> {
    let mut value = head.seq.to_le_bytes().to_vec();
    value.extend_from_slice(&head.hash);
    value
}

fn reply_committed(group: Group, seqs: Vec<Vec<u64>>, revision: u64) {
    for (pending, ledger_seqs) in group.members.into_iter().zip(seqs) {
        let _ = pending.reply.send(Ok(TxnOutcome {
            succeeded: true,
            revision,
            ledger_seqs,
        }));
    }
}

fn fail(group: Group, e: &StoreError) {
    for pending in group.members {
        let _ = pending.reply.send(Err(e.duplicate()));
    }
}
