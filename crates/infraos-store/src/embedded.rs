//! The embedded backend: one redb file in the data dir, zero setup.
//!
//! ```text
//!   txn() ──► bounded queue ──► writer thread: drain up to `max_batch` requests
//!                                  │  one redb write transaction for the whole group:
//!                                  │   for each request in order: compare → apply → ledger
//!                                  │  commit (fsync, Durability::Immediate)
//!                                  ├──► reply to each request (only now is it acknowledged)
//!                                  └──► publish the group's events to the watch hub
//! ```
//! Group commit is what makes many small transactions per second affordable: one fsync covers
//! every request that queued while the previous group was being written. Each request still
//! gets its own revision and sees the writes of the requests before it, so the result is the
//! same as applying them one by one. If the commit fails, no request of the group is
//! acknowledged and nothing of it is visible.
//!
//! Reads use redb's MVCC read transactions and never wait for the writer. History for watches
//! is kept in memory only ([`crate::hub`]): after a restart, watches must start at or after the
//! revision the store opened at, and older ones are told to relist.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::{
    Event, EventKind, KeyValue, LedgerEntry, LedgerHead, Op, RangeResult, Revision, Store,
    StoreError, Txn, TxnOutcome, WatchStream, check_sizes,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// The ledger head's hash, kept apart from the entries so a damaged chain can still be opened
/// and its damage reported by a verifier.
const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");
const META_LEDGER_HASH: &str = "ledger_head_hash";
const META_REVISION: &str = "revision";
const META_LEDGER_SEQ: &str = "ledger_seq";
const HEADER_LEN: usize = 24;

/// Tuning for the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Events kept in memory for watches that start in the past or fall behind.
    pub watch_history: usize,
    /// Most requests committed together in one group.
    pub max_batch: usize,
    /// How long a busy writer waits for more requests before committing a small group.
    pub linger: std::time::Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            watch_history: 100_000,
            max_batch: 2048,
            linger: std::time::Duration::from_micros(300),
        }
    }
}

struct WriteRequest {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome, StoreError>>,
}

struct Shared {
    db: redb::Database,
    hub: Arc<Hub>,
    revision: AtomicU64,
}

/// The redb-backed store. Cheap to share behind an `Arc`; closing happens on drop.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<WriteRequest>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = if path.exists() {
            redb::Database::open(path).map_err(open_err)?
        } else {
            redb::Database::create(path).map_err(open_err)?
        };
        // Create the tables so readers never see "table does not exist".
        let (revision, ledger_head) = {
            let wtx = db.begin_write().map_err(redb::Error::from)?;
            let (revision, head) = {
                wtx.open_table(KV).map_err(redb::Error::from)?;
                wtx.open_table(LEDGER).map_err(redb::Error::from)?;
                let meta = wtx.open_table(META).map_err(redb::Error::from)?;
                let meta_bytes = wtx.open_table(META_BYTES).map_err(redb::Error::from)?;
                let revision = meta
                    .get(META_REVISION)
                    .map_err(redb::Error::from)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let head = read_head(&meta, &meta_bytes)?;
                (revision, head)
            };
            wtx.commit().map_err(redb::Error::from)?;
            (revision, head)
        };
        let shared = Arc::new(Shared {
            db,
            hub: Arc::new(Hub::new(revision, options.watch_history)),
            revision: AtomicU64::new(revision),
        });
        let (queue, requests) = mpsc::channel(options.max_batch.max(1) * 4);
        let writer_shared = Arc::clone(&shared);
        let max_batch = options.max_batch.max(1);
        let linger = options.linger;
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer_loop(
                    writer_shared,
                    requests,
                    max_batch,
                    linger,
                    revision,
                    ledger_head,
                )
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(path = %path.display(), revision, "embedded store opened");
        Ok(EmbeddedStore {
            shared,
            queue,
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.shared.hub.close();
        // The writer exits once every sender is gone; ours is the last one once pending
        // `txn` calls have finished, which they have if we are being dropped.
        let (closed_tx, _) = mpsc::channel(1);
        let _ = std::mem::replace(&mut self.queue, closed_tx);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

fn writer_loop(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<WriteRequest>,
    max_batch: usize,
    linger: std::time::Duration,
    mut revision: Revision,
    mut ledger: LedgerHead,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        let drain = |batch: &mut Vec<WriteRequest>, requests: &mut mpsc::Receiver<WriteRequest>| {
            while batch.len() < max_batch {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch, &mut requests);
        // Under load, waiting a moment for more requests makes each commit cover more of
        // them; when idle (a lone request) it would only add latency.
        if linger > std::time::Duration::ZERO && batch.len() > 1 && batch.len() < max_batch / 4 {
            std::thread::sleep(linger);
            drain(&mut batch, &mut requests);
        }
        match commit_group(&shared.db, &batch, revision, &ledger) {
            Ok(group) => {
                revision = group.revision;
                ledger = group.ledger;
                shared.revision.store(revision, Ordering::Release);
                // Publish before acknowledging, so a client that reads its write's revision
                // and then watches from it cannot miss the event.
                shared.hub.publish(group.events, revision);
                for (request, outcome) in batch.drain(..).zip(group.outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "store group commit failed");
                let message = e.to_string();
                for request in batch.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

struct GroupResult {
    revision: Revision,
    ledger: LedgerHead,
    events: Vec<Event>,
    outcomes: Vec<Result<TxnOutcome, StoreError>>,
}

fn commit_group(
    db: &redb::Database,
    batch: &[WriteRequest],
    mut revision: Revision,
    ledger_head: &LedgerHead,
) -> Result<GroupResult, StoreError> {
    let mut ledger_head = ledger_head.clone();
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let wtx = db.begin_write().map_err(redb::Error::from)?;
    {
        let mut kv = wtx.open_table(KV).map_err(redb::Error::from)?;
        let mut meta = wtx.open_table(META).map_err(redb::Error::from)?;
        let mut ledger = wtx.open_table(LEDGER).map_err(redb::Error::from)?;
        let mut meta_bytes = wtx.open_table(META_BYTES).map_err(redb::Error::from)?;
        for request in batch {
            let txn = &request.txn;
            if let Err(e) = check_sizes(txn) {
                outcomes.push(Err(e));
                continue;
            }
            let mut holds = true;
            // What the compares read, by key: the first put of such a key has it as its
            // previous value without reading it again (a scheduler batch compares and puts
            // hundreds of claims).
            let mut proven: foldhash::HashMap<&str, Option<KeyValue>> =
                foldhash::HashMap::default();
            for compare in &txn.compares {
                let key = compare.key();
                let current = match kv.get(key).map_err(redb::Error::from)? {
                    Some(raw) => Some(decode_kv(key, raw.value())?),
                    None => None,
                };
                if !compare.holds(current.as_ref()) {
                    holds = false;
                    break;
                }
                proven.insert(key, current);
            }
            if !holds {
                outcomes.push(Ok(TxnOutcome {
                    succeeded: false,
                    revision,
                    ledger_seqs: Vec::new(),
                }));
                continue;
            }
            if !txn.ops.is_empty() {
                revision += 1;
            }
            let mut decoded = txn.decoded.iter().peekable();
            for (index, op) in txn.ops.iter().enumerate() {
                match op {
                    Op::Put(key, value) => {
                        let prev = match proven.remove(key.as_str()) {
                            Some(known) => known,
                            None => match kv.get(key.as_str()).map_err(redb::Error::from)? {
                                Some(raw) => Some(decode_kv(key, raw.value())?),
                                None => None,
                            },
                        };
                        let kv_new = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                            mod_revision: revision,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                        };
                        kv.insert(key.as_str(), encode_kv(&kv_new).as_slice())
                            .map_err(redb::Error::from)?;
                        events.push(Event {
                            kind: EventKind::Put,
                            kv: kv_new,
                            prev,
                            decoded: decoded
                                .next_if(|(i, _)| *i == index)
                                .map(|(_, d)| d.clone()),
                        });
                    }
                    Op::Delete(key) => {
                        proven.remove(key.as_str());
                        let removed = match kv.remove(key.as_str()).map_err(redb::Error::from)? {
                            Some(raw) => Some(decode_kv(key, raw.value())?),
                            None => None,
                        };
                        if let Some(prev) = removed {
                            let mut gone = prev.clone();
                            gone.mod_revision = revision;
                            events.push(Event {
                                kind: EventKind::Delete,
                                kv: gone,
                                prev: Some(prev),
                                decoded: None,
                            });
                        }
                    }
                }
            }
            let mut seqs = Vec::with_capacity(txn.ledger.len());
            for payload in &txn.ledger {
                let seq = ledger_head.seq + 1;
                let hash = infraos_api::audit::chain_hash(seq, &ledger_head.hash, payload);
                let mut raw = Vec::with_capacity(64 + payload.len());
                raw.extend_from_slice(&ledger_head.hash);
                raw.extend_from_slice(&hash);
                raw.extend_from_slice(payload);
                ledger
                    .insert(seq, raw.as_slice())
                    .map_err(redb::Error::from)?;
                ledger_head = LedgerHead { seq, hash };
                seqs.push(seq);
            }
            outcomes.push(Ok(TxnOutcome {
                succeeded: true,
                revision,
                ledger_seqs: seqs,
            }));
        }
        meta.insert(META_REVISION, revision)
            .map_err(redb::Error::from)?;
        meta.insert(META_LEDGER_SEQ, ledger_head.seq)
            .map_err(redb::Error::from)?;
        meta_bytes
            .insert(META_LEDGER_HASH, ledger_head.hash.as_slice())
            .map_err(redb::Error::from)?;
    }
    wtx.commit().map_err(redb::Error::from)?;
    Ok(GroupResult {
        revision,
        ledger: ledger_head,
        events,
        outcomes,
    })
}

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_header(key: &str, raw: &[u8]) -> Result<(Revision, Revision, u64), StoreError> {
    if raw.len() < HEADER_LEN {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            reason: format!("record of {} bytes is shorter than its header", raw.len()),
        });
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    Ok((word(0), word(1), word(2)))
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, version) = decode_header(key, raw)?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(&raw[HEADER_LEN..]),
        create_revision,
        mod_revision,
        version,
    })
}

fn decode_ledger(seq: u64, raw: &[u8]) -> Result<LedgerEntry, StoreError> {
    if raw.len() < 64 {
        return Err(StoreError::Corrupt {
            key: format!("ledger/{seq}"),
            reason: "entry shorter than its two hashes".into(),
        });
    }
    let mut prev_hash = [0u8; 32];
    let mut hash = [0u8; 32];
    prev_hash.copy_from_slice(&raw[..32]);
    hash.copy_from_slice(&raw[32..64]);
    Ok(LedgerEntry {
        seq,
        prev_hash,
        hash,
        payload: Bytes::copy_from_slice(&raw[64..]),
    })
}

fn range_blocking(
    db: &redb::Database,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<RangeResult, StoreError> {
    let rtx = db.begin_read().map_err(redb::Error::from)?;
    let kv = rtx.open_table(KV).map_err(redb::Error::from)?;
    let meta = rtx.open_table(META).map_err(redb::Error::from)?;
    let revision = meta
        .get(META_REVISION)
        .map_err(redb::Error::from)?
        .map(|v| v.value())
        .unwrap_or(0);
    let lower = match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut kvs = Vec::new();
    let mut more = false;
    for entry in kv
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(redb::Error::from)?
    {
        let (k, v) = entry.map_err(redb::Error::from)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if limit > 0 && kvs.len() == limit {
            more = true;
            break;
        }
        kvs.push(decode_kv(key, v.value())?);
    }
    Ok(RangeResult {
        kvs,
        revision,
        more,
    })
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let rtx = self.shared.db.begin_read().map_err(redb::Error::from)?;
        let kv = rtx.open_table(KV).map_err(redb::Error::from)?;
        match kv.get(key).map_err(redb::Error::from)? {
            Some(raw) => Ok(Some(decode_kv(key, raw.value())?)),
            None => Ok(None),
        }
    }

    /// The current keys with the newer changes undone from the watch history: as far back as
    /// that history reaches (`watch_history` events), no further.
    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError> {
        let current = self.range(prefix, None, 0).await?;
        if revision > current.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: current.revision,
            });
        }
        if revision == current.revision {
            return Ok(current);
        }
        // The writer publishes right after it commits: wait for it to catch up with the read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let events = loop {
            if let Some(events) = self.shared.hub.history(prefix, revision, current.revision) {
                break events?;
            }
            if std::time::Instant::now() > deadline {
                return Err(StoreError::Backend(format!(
                    "history up to revision {} was not published within 5s",
                    current.revision
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        let mut kvs: std::collections::BTreeMap<String, KeyValue> = current
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        for event in events.into_iter().rev() {
            match event.prev {
                Some(prev) => {
                    kvs.insert(prev.key.clone(), prev);
                }
                None => {
                    kvs.remove(&event.kv.key);
                }
            }
        }
        Ok(RangeResult {
            kvs: kvs.into_values().collect(),
            revision,
            more: false,
        })
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            range_blocking(&shared.db, &prefix, start_after.as_deref(), limit)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("range task failed: {e}")))?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_sizes(&txn)?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(WriteRequest { txn, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.shared.hub.watch(prefix, after)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.shared.revision.load(Ordering::Acquire);
        self.shared.hub.compact(revision.min(current));
        Ok(())
    }

    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let rtx = shared.db.begin_read().map_err(redb::Error::from)?;
            let table = rtx.open_table(LEDGER).map_err(redb::Error::from)?;
            let mut out = Vec::new();
            for entry in table.range(from.max(1)..).map_err(redb::Error::from)? {
                let (seq, raw) = entry.map_err(redb::Error::from)?;
                out.push(decode_ledger(seq.value(), raw.value())?);
                if limit > 0 && out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("ledger task failed: {e}")))?
    }

    async fn ledger_head(&self) -> Result<LedgerHead, StoreError> {
        let rtx = self.shared.db.begin_read().map_err(redb::Error::from)?;
        let meta = rtx.open_table(META).map_err(redb::Error::from)?;
        let meta_bytes = rtx.open_table(META_BYTES).map_err(redb::Error::from)?;
        read_head(&meta, &meta_bytes)
    }
}

fn read_head(
    meta: &impl ReadableTable<&'static str, u64>,
    meta_bytes: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<LedgerHead, StoreError> {
    let seq = meta
        .get(META_LEDGER_SEQ)
        .map_err(redb::Error::from)?
        .map(|v| v.value())
        .unwrap_or(0);
    if seq == 0 {
        return Ok(LedgerHead::default());
    }
    let raw = meta_bytes
        .get(META_LEDGER_HASH)
        .map_err(redb::Error::from)?
        .ok_or_else(|| StoreError::Corrupt {
            key: META_LEDGER_HASH.into(),
            reason: "ledger head hash is missing".into(),
        })?;
    let hash: [u8; 32] = raw.value().try_into().map_err(|_| StoreError::Corrupt {
        key: META_LEDGER_HASH.into(),
        reason: "ledger head hash is not 32 bytes".into(),
    })?;
    Ok(LedgerHead { seq, hash })
}

impl EmbeddedStore {
    /// The revision before which watches are refused (history kept in memory starts here).
    pub fn compacted_revision(&self) -> Revision {
        self.shared.hub.compacted()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::Compare;

    /// Puts take their previous value from what the compares read; a key written twice, or
    /// deleted and written again, in one transaction must still report what was before.
    #[tokio::test]
    async fn previous_values_follow_the_writes_of_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let first = store
            .txn(Txn::new().put("/k/a", "1").put("/k/b", "1"))
            .await;
        let rev = first.unwrap().revision;
        let mut watch = store.watch("/k/", rev).await.unwrap();
        let txn = Txn::new()
            .when(Compare::unchanged("/k/a", rev))
            .when(Compare::unchanged("/k/b", rev))
            .when(Compare::absent("/k/c"))
            .put("/k/a", "2")
            .put("/k/a", "3")
            .delete("/k/b")
            .put("/k/b", "4")
            .put("/k/c", "5");
        assert!(store.txn(txn).await.unwrap().succeeded);
        let events = watch.next().await.unwrap().unwrap();
        let prev: Vec<Option<&[u8]>> = events
            .iter()
            .map(|e| e.prev.as_ref().map(|p| &p.value[..]))
            .collect();
        let b1: &[u8] = b"1";
        let b2: &[u8] = b"2";
        assert_eq!(prev, [Some(b1), Some(b2), Some(b1), None, None]);
        assert_eq!(events[1].kv.version, 3);
        assert_eq!(events[3].kv.version, 1, "created again after its delete");
        assert_eq!(events[3].kv.create_revision, rev + 1);
    }

    #[tokio::test]
    async fn a_decoded_form_reaches_live_watchers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let mut live = store.watch("/a/", 0).await.unwrap();
        let decoded: Arc<dyn std::any::Any + Send + Sync> = Arc::new(42u32);
        let txn = Txn::new()
            .put("/a/plain", "1")
            .put_decoded("/a/typed", "42", Some(decoded))
            .delete("/a/plain");
        assert!(store.txn(txn).await.unwrap().succeeded);
        let events = live.next().await.unwrap().unwrap();
        let forms: Vec<Option<u32>> = events
            .iter()
            .map(|e| {
                e.decoded
                    .as_ref()
                    .and_then(|d| d.0.downcast_ref::<u32>().copied())
            })
            .collect();
        assert_eq!(forms, [None, Some(42), None]);
        // From history (a watch starting in the past) the event is the same, without it.
        let mut replay = store.watch("/a/", 0).await.unwrap();
        let again = replay.next().await.unwrap().unwrap();
        assert_eq!(again.len(), 3);
        assert!(again.iter().all(|e| e.decoded.is_none()));
        assert_eq!(again[1], events[1]);
    }
}
