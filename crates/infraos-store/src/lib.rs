//! The InfraOS store: revisioned keys with etcd's semantics behind one trait.
//!
//! - every committed transaction that writes gets the next revision; a key's `mod_revision`
//!   is the revision that last wrote it, and it is what the API calls `resourceVersion`;
//! - transactions compare revisions and either apply all their operations or none;
//! - watches start after a revision and deliver every later change in order; when the
//!   requested revision is older than what the backend still holds, the watch fails with
//!   [`StoreError::Compacted`] and the caller relists (kube's watcher does the same);
//! - a transaction may append entries to the hash-chained ledger (the audit log), atomically
//!   with its writes.
//!
//! Backends: [`embedded::EmbeddedStore`] (redb, one file in the data dir). Every backend
//! passes [`conformance`] unchanged.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
mod hub;
mod memo;
mod wrapper;

pub use memo::ReadMemo;
pub use wrapper::Wrapper;

/// A store revision. `0` means "before anything was written".
pub type Revision = u64;

/// Largest key the store accepts, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest value the store accepts, in bytes (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_LEN: usize = 4 * 1024 * 1024;

/// A key with its current value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// The revision that created the key (reset when it is deleted and created again).
    pub create_revision: Revision,
    /// The revision that last wrote the key.
    pub mod_revision: Revision,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
}

/// A precondition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given one; `0` means the key must not exist.
    ModRevision(String, Revision),
    /// The key's `version` (writes since its creation) equals the given one; `0` means the
    /// key must not exist. Unlike a revision, the version a write will give is known before
    /// it commits, so a writer that is the only one to write a key can chain transactions
    /// (each compares the version the previous one will leave) without waiting for each
    /// commit: the plan applier's holdings records (etcd's `version` compare).
    Version(String, u64),
}

impl Compare {
    /// The key the compare reads.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision(key, _) | Compare::Version(key, _) => key,
        }
    }

    /// Whether the key's current state (`None`: absent) satisfies the compare.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match self {
            Compare::ModRevision(_, expected) => current.map_or(0, |c| c.mod_revision) == *expected,
            Compare::Version(_, expected) => current.map_or(0, |c| c.version) == *expected,
        }
    }

    pub fn absent(key: impl Into<String>) -> Self {
        Compare::ModRevision(key.into(), 0)
    }
    pub fn unchanged(key: impl Into<String>, revision: Revision) -> Self {
        Compare::ModRevision(key.into(), revision)
    }
}

/// The decoded form of a value its writer had at hand, handed to this process's watchers with
/// the event so they need not parse the bytes again (the scheduler reading claims the API
/// just admitted). A cache, not part of the value: it is never stored, backends elsewhere
/// (etcd) never carry it, the watch history drops it, and events are equal without it.
#[derive(Clone)]
pub struct Decoded(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoded(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(String, Bytes),
    Delete(String),
}

/// An atomic unit of work: if every compare holds, every op is applied and every ledger entry
/// appended, all under one new revision; otherwise nothing changes.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Payloads appended to the hash-chained ledger when the transaction succeeds.
    pub ledger: Vec<Vec<u8>>,
    /// Decoded forms of some puts' values, by index in `ops`, ascending.
    pub decoded: Vec<(usize, Decoded)>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    /// A put whose value's decoded form, when given, goes with its event to this process's
    /// watchers.
    pub fn put_decoded(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
        decoded: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        if let Some(decoded) = decoded {
            self.decoded.push((self.ops.len(), Decoded(decoded)));
        }
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn append(mut self, payload: Vec<u8>) -> Self {
        self.ledger.push(payload);
        self
    }
}

/// What a transaction costs against a backend's limits on one request. The ledger entries
/// of one request cost one write on every backend (etcd keeps them as one block), however many
/// they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnCost {
    pub compares: usize,
    /// Puts and deletes (a key written twice counts twice: an upper bound).
    pub writes: usize,
    pub ledger_entries: usize,
    /// Keys, values and ledger payloads, with a little for their framing.
    pub bytes: usize,
}

impl TxnCost {
    /// Bytes a ledger entry adds besides its payload (two hashes, the block's framing).
    pub const LEDGER_ENTRY_OVERHEAD: usize = 64 + 48;
    /// Bytes an operation or compare adds besides its key and value.
    pub const OP_OVERHEAD: usize = 16;

    pub fn of(txn: &Txn) -> TxnCost {
        let ops: usize = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len() + Self::OP_OVERHEAD,
                Op::Delete(k) => k.len() + Self::OP_OVERHEAD,
            })
            .sum();
        let compares: usize = txn
            .compares
            .iter()
            .map(|c| c.key().len() + Self::OP_OVERHEAD)
            .sum();
        let ledger: usize = txn
            .ledger
            .iter()
            .map(|p| p.len() + Self::LEDGER_ENTRY_OVERHEAD)
            .sum();
        TxnCost {
            compares: txn.compares.len(),
            writes: txn.ops.len(),
            ledger_entries: txn.ledger.len(),
            bytes: ops + compares + ledger,
        }
    }

    /// Operations the request carries: its writes and, when it appends, one for the ledger.
    pub fn ops(&self) -> usize {
        self.writes + usize::from(self.ledger_entries > 0)
    }

    pub fn plus(self, other: TxnCost) -> TxnCost {
        TxnCost {
            compares: self.compares + other.compares,
            writes: self.writes + other.writes,
            ledger_entries: self.ledger_entries + other.ledger_entries,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// The most one transaction may carry on a backend, so that a writer with a lot to write (the
/// plan applier) can split it into transactions the backend takes: etcd refuses more than
/// `--max-txn-ops` compares or operations, or more than `--max-request-bytes`, in one request.
/// What the backend adds itself (the ledger head's compare and put) is already taken off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    pub compares: usize,
    pub ops: usize,
    pub bytes: usize,
}

impl TxnLimits {
    /// No limit (the embedded store).
    pub const UNBOUNDED: TxnLimits = TxnLimits {
        compares: usize::MAX,
        ops: usize::MAX,
        bytes: usize::MAX,
    };

    pub fn admits(&self, cost: TxnCost) -> bool {
        cost.compares <= self.compares && cost.ops() <= self.ops && cost.bytes <= self.bytes
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The transaction's revision when it succeeded and wrote; otherwise the current one.
    pub revision: Revision,
    /// Sequence numbers given to the ledger entries, in order.
    pub ledger_seqs: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// The store revision the range was read at.
    pub revision: Revision,
    /// Whether more keys match beyond `limit`.
    pub more: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv` holds the deleted value with `mod_revision` set to the
/// revision of the delete.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change, if there was one.
    pub prev: Option<KeyValue>,
    /// The new value decoded, when its writer in this process had it (see [`Decoded`]).
    pub decoded: Option<Decoded>,
}

/// Equal when kind, value and previous value are: the decoded form is a cache of the value.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.kv == other.kv && self.prev == other.prev
    }
}

impl Eq for Event {}

/// One chained ledger entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub payload: Bytes,
}

/// The newest ledger entry's sequence number and hash (genesis: 0 and zeros).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LedgerHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Watch batches, each in revision order; ends with an error when the watcher fell behind
/// what the backend retains.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<[Event]>, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} has been compacted (oldest watchable is after {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is in the future (the current one is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("key of {len} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLarge { len: usize },
    #[error("value for {key:?} of {len} bytes exceeds the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLarge { key: String, len: usize },
    #[error("store file {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("stored record under {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store is shutting down")]
    Closed,
    /// One transaction is more than the backend takes at once: more compares or operations
    /// than etcd's `--max-txn-ops`, or more bytes than its `--max-request-bytes`. Nothing was
    /// written; the message names the limit.
    #[error("the transaction is too large for the store: {0}")]
    TxnTooLarge(String),
    /// The backend refuses writes until space is freed (etcd's `--quota-backend-bytes`).
    #[error("the store is out of space: {0}")]
    NoSpace(String),
}

impl StoreError {
    /// The same error again, for telling several waiters what happened to their one request
    /// (the sources of a few variants are not `Clone`; those keep their message).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Compacted {
                requested,
                compacted,
            } => StoreError::Compacted {
                requested: *requested,
                compacted: *compacted,
            },
            StoreError::FutureRevision { requested, current } => StoreError::FutureRevision {
                requested: *requested,
                current: *current,
            },
            StoreError::KeyTooLarge { len } => StoreError::KeyTooLarge { len: *len },
            StoreError::ValueTooLarge { key, len } => StoreError::ValueTooLarge {
                key: key.clone(),
                len: *len,
            },
            StoreError::Corrupt { key, reason } => StoreError::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            StoreError::Closed => StoreError::Closed,
            StoreError::TxnTooLarge(m) => StoreError::TxnTooLarge(m.clone()),
            StoreError::NoSpace(m) => StoreError::NoSpace(m.clone()),
            StoreError::Open { .. } | StoreError::Backend(_) => {
                StoreError::Backend(self.to_string())
            }
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The store contract every backend implements (DESIGN §4).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order, after `start_after` if given, at most `limit`
    /// (0 = no limit).
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError>;

    /// Every key under `prefix` as it was at `revision` (for replaying a past decision).
    /// Fails with `Compacted` when the backend no longer holds that history, and with
    /// `FutureRevision` past the current revision.
    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError>;

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Changes under `prefix` with revision greater than `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forgets history up to and including `revision`: watches from before it fail.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Ledger entries with `seq >= from`, at most `limit` (0 = no limit).
    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;

    async fn ledger_head(&self) -> Result<LedgerHead, StoreError>;

    /// The most one transaction may carry here ([`TxnLimits`]). A wrapper that adds compares
    /// to every transaction (the leader's fence) takes them off.
    fn txn_limits(&self) -> TxnLimits {
        TxnLimits::UNBOUNDED
    }
}

pub(crate) fn check_sizes(txn: &Txn) -> Result<(), StoreError> {
    for op in &txn.ops {
        let (key, len) = match op {
            Op::Put(k, v) => (k, v.len()),
            Op::Delete(k) => (k, 0),
        };
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLarge { len: key.len() });
        }
        if len > MAX_VALUE_LEN {
            return Err(StoreError::ValueTooLarge {
                key: key.clone(),
                len,
            });
        }
    }
    Ok(())
}
