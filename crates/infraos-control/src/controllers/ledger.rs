//! The plan applier's ledger: every placement is checked against the committed holdings of
//! each resource it uses (`crate::holdings`), and each batch's transaction writes the new
//! records, so capacity and items hold against the store, not only against the scheduler's
//! snapshot.
//!
//! ```text
//!   record /infraos/holdings/<resource>   written only by the leader's plan applier (fenced)
//!
//!   stored (version v) ─ batch 1: compare version v,   put v+1 ─► link 1 ─┐ in flight,
//!                       batch 2: compare version v+1, put v+2 ─► link 2 ─┘ in order
//!   settle committed:   stored = link (popped from the front)
//!   settle not committed: every link of the resource dropped, the record read again
//!   allocation ended (watch): its uid pruned from the next link or by `compact`
//!   placement refused here although the snapshot let it through: logged, its resources
//!     audited against the allocations themselves (`audit`)
//! ```
//! Why it holds with pipelining: only this loop writes records (the leader's writes are
//! fenced), so a record's version names exactly the value this ledger wrote at it. Batch k
//! compares the version its link was built on (the record once batches 1..k−1 have
//! committed) and writes the next one, all in the transaction that writes its allocations.
//! If any earlier batch touching the record failed, the version differs and batch k fails
//! whole: no allocation commits unless every resource it uses was checked against exactly the
//! record the store then holds. Ended holders are pruned only by uid, and a claim's new
//! holder replaces its old one only in the transaction that proves the old allocation gone,
//! so a record never under-counts; it may briefly over-count (an end not seen yet), which
//! refuses a placement, never double-books.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt, HashSet};
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocatedResource, AllocationPhase, AllocationSpec, ResourceSpec};
use infraos_scheduler::Snapshot;
use infraos_store::{Compare, KeyValue, Store, StoreError, Txn};

use crate::holdings::{self, Holder, Holdings, HoldingsError, Offer};
use crate::objects;

/// Records written per transaction when loading or compacting (etcd's default limit is 128
/// operations per transaction: a compare and a put each).
const CHUNK: usize = 60;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerError {
    /// Boxed: the largest variant, and the error is rare (a placement that does not fit).
    #[error("{0}")]
    Holdings(#[from] Box<HoldingsError>),
    #[error("resource {0:?} is not in the snapshot")]
    ResourceGone(String),
    #[error("the holdings record of {0:?} must be read again first")]
    Unread(String),
    #[error("holdings: {0}")]
    Store(#[from] StoreError),
}

/// What the ledger needs of an allocation, read without decoding the rest.
#[derive(serde::Deserialize)]
pub(crate) struct AllocationProbe {
    pub metadata: ProbeMeta,
    pub spec: ProbeSpec,
    #[serde(default)]
    pub status: Option<ProbeStatus>,
}

#[derive(serde::Deserialize)]
pub(crate) struct ProbeMeta {
    #[serde(default)]
    pub uid: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct ProbeSpec {
    #[serde(default)]
    pub resources: Vec<AllocatedResource>,
}

#[derive(serde::Deserialize)]
pub(crate) struct ProbeStatus {
    pub phase: AllocationPhase,
}

impl AllocationProbe {
    pub fn of(kv: &KeyValue) -> Option<AllocationProbe> {
        serde_json::from_slice(&kv.value).ok()
    }

    pub fn holds(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.phase.holds_resources())
    }

    /// The names of the resources it uses, once each.
    pub fn resources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .spec
            .resources
            .iter()
            .map(|p| p.resource.clone())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[derive(Default)]
struct Entry {
    stored: Holdings,
    /// The record's store version (0: no record).
    version: u64,
    /// A batch that wrote it failed: read it again before building on it.
    stale: bool,
    chain: VecDeque<Link>,
}

/// A record as a batch in flight writes it.
struct Link {
    batch: u64,
    version: u64,
    value: Holdings,
    /// A placement was added (not only ended holders pruned).
    placed: bool,
}

/// What a batch adds to its transaction: a version compare and a put per record it writes,
/// and the revision of each Resource whose capacity it was checked against.
#[derive(Default)]
pub(crate) struct LedgerWrites {
    pub compares: Vec<Compare>,
    pub puts: Vec<(String, Holdings)>,
}

#[derive(Default)]
pub(crate) struct Ledger {
    entries: HashMap<String, Entry>,
    /// Allocations seen to end, by uid, with the resources whose records may still list them.
    ended: HashMap<String, Vec<String>>,
    /// Each Resource object's revision as the snapshot took it: its capacity and items are
    /// what placements are checked against, so the batch requires them unchanged.
    resource_revisions: HashMap<String, u64>,
    /// The records each batch in flight writes.
    batches: HashMap<u64, Vec<String>>,
    /// Resources whose record refused what the snapshot allowed: audited before the next batch.
    suspects: HashSet<String>,
    ready: bool,
    /// Placements the snapshot allowed and the committed holdings refused.
    pub refusals: u64,
}

impl Ledger {
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// An allocation ended (or was deleted): its holders are pruned from here on.
    pub fn ended(&mut self, uid: &str, resources: Vec<String>) {
        if uid.is_empty() || resources.is_empty() {
            return;
        }
        self.ended.insert(uid.to_string(), resources);
    }

    /// Ends may have been missed (the allocations were listed again): load again before the
    /// next batch.
    pub fn invalidate(&mut self) {
        self.ready = false;
    }

    /// The Resources are listed again: their revisions come anew.
    pub fn forget_resources(&mut self) {
        self.resource_revisions.clear();
    }

    pub fn resource_seen(&mut self, name: &str, revision: u64) {
        self.resource_revisions.insert(name.to_string(), revision);
    }

    pub fn resource_gone(&mut self, name: &str) {
        self.resource_revisions.remove(name);
    }

    /// Records that must be read again before a batch builds on them.
    pub fn unread_all(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.stale)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Reads records again from the store (after a failed batch wrote them).
    pub async fn refresh(
        &mut self,
        store: &dyn Store,
        resources: &[String],
    ) -> Result<(), StoreError> {
        for r in resources {
            let kv = store.get(&holdings::key(r)).await?;
            let entry = self.entries.entry(r.clone()).or_default();
            if !load_entry(entry, kv.as_ref()) {
                // Nothing is placed on it until `load` rebuilds it from the allocations.
                self.ready = false;
            }
        }
        Ok(())
    }

    /// Checks a placement (allocation `key` with `uid`, holding `parts`) against what every
    /// resource it uses holds once the batches before it have committed, and adds it to
    /// batch `batch`'s records. Nothing changes when it does not fit.
    pub fn take(
        &mut self,
        batch: u64,
        snapshot: &Snapshot,
        key: &str,
        uid: &str,
        parts: &[AllocatedResource],
    ) -> Result<(), LedgerError> {
        let mut resources: Vec<&str> = parts.iter().map(|p| p.resource.as_str()).collect();
        resources.sort_unstable();
        resources.dedup();
        let mut holders = Vec::with_capacity(resources.len());
        for r in &resources {
            if self.entries.get(*r).is_some_and(|e| e.stale) {
                return Err(LedgerError::Unread((*r).to_string()));
            }
            let entry = snapshot
                .resource_by_name(r)
                .ok_or_else(|| LedgerError::ResourceGone((*r).to_string()))?;
            let Some(holder) = Holder::of(uid, r, parts) else {
                continue;
            };
            let has_item = |item: &str| entry.item_index.contains_key(item);
            let offer = Offer {
                resource: r,
                capacity: &entry.capacity,
                has_item: &has_item,
            };
            self.link(batch, r)
                .value
                .check(key, &holder, &offer)
                .map_err(Box::new)?;
            holders.push((*r, holder));
        }
        for (r, holder) in holders {
            let link = self.link(batch, r);
            link.value.insert(key, holder);
            link.placed = true;
        }
        Ok(())
    }

    /// Batch `batch`'s link of record `resource`, built on the one before it (pruned of
    /// ended holders) when the batch has none yet.
    fn link(&mut self, batch: u64, resource: &str) -> &mut Link {
        let ended = &self.ended;
        let entry = self.entries.entry(resource.to_string()).or_default();
        if entry.chain.back().is_none_or(|l| l.batch != batch) {
            let (mut value, version) = match entry.chain.back() {
                Some(l) => (l.value.clone(), l.version),
                None => (entry.stored.clone(), entry.version),
            };
            value.prune(|uid| ended.contains_key(uid));
            entry.chain.push_back(Link {
                batch,
                version: version + 1,
                value,
                placed: false,
            });
            self.batches
                .entry(batch)
                .or_default()
                .push(resource.to_string());
        }
        match entry.chain.back_mut() {
            Some(link) => link,
            None => unreachable!("a link was just pushed"),
        }
    }

    /// How many of `resources`' records batch `batch` does not write yet, and their bytes as
    /// it would write them (`holder_bytes` a holder): what placing on them adds to its
    /// transaction besides the placements themselves.
    pub fn records_cost(
        &self,
        batch: u64,
        resources: &[&str],
        holder_bytes: usize,
    ) -> (usize, usize) {
        let mut records = 0;
        let mut bytes = 0;
        for r in resources {
            let entry = self.entries.get(*r);
            if entry.is_some_and(|e| e.chain.back().is_some_and(|l| l.batch == batch)) {
                continue;
            }
            let holders = entry.map_or(0, |e| {
                e.chain
                    .back()
                    .map_or(e.stored.holders.len(), |l| l.value.holders.len())
            });
            records += 1;
            bytes += (holders + 1) * holder_bytes + holdings::key(r).len();
        }
        (records, bytes)
    }

    /// What batch `batch`'s transaction must compare and write. A batch that places nothing
    /// writes nothing: its links are dropped.
    pub fn seal(&mut self, batch: u64, placed_any: bool) -> LedgerWrites {
        let mut writes = LedgerWrites::default();
        let Some(resources) = self.batches.get(&batch).cloned() else {
            return writes;
        };
        if !placed_any {
            self.batches.remove(&batch);
            for r in resources {
                if let Some(entry) = self.entries.get_mut(&r)
                    && entry.chain.back().is_some_and(|l| l.batch == batch)
                {
                    entry.chain.pop_back();
                }
            }
            return writes;
        }
        for r in resources {
            let Some(link) = self
                .entries
                .get(&r)
                .and_then(|e| e.chain.iter().rev().find(|l| l.batch == batch))
            else {
                continue;
            };
            let key = holdings::key(&r);
            writes
                .compares
                .push(Compare::Version(key.clone(), link.version - 1));
            if link.placed
                && let Some(&revision) = self.resource_revisions.get(&r)
            {
                writes.compares.push(Compare::unchanged(
                    objects::key(ResourceSpec::INFO, None, &r),
                    revision,
                ));
            }
            writes.puts.push((key, link.value.clone()));
        }
        writes
    }

    /// A batch's transaction committed or not. Not committed: every link of its records is
    /// dropped (the batches after it that wrote them fail on the version) and the records
    /// are read again before use.
    pub fn settle(&mut self, batch: u64, committed: bool) {
        let Some(resources) = self.batches.remove(&batch) else {
            return;
        };
        for r in resources {
            let Some(entry) = self.entries.get_mut(&r) else {
                continue;
            };
            match entry.chain.front() {
                Some(l) if committed && l.batch == batch => {
                    if let Some(link) = entry.chain.pop_front() {
                        entry.stored = link.value;
                        entry.version = link.version;
                    }
                }
                _ => {
                    entry.chain.clear();
                    entry.stale = true;
                }
            }
        }
    }

    /// A placement the snapshot allowed was refused here: the snapshot disagrees with what
    /// is committed. Its resources are audited before the next batch.
    pub fn refused(&mut self, parts: &[AllocatedResource]) {
        self.refusals += 1;
        self.suspects
            .extend(parts.iter().map(|p| p.resource.clone()));
    }

    pub fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// Checks every committed holder of the suspect resources against its allocation in the
    /// store: one that is gone, replaced (another uid) or no longer holding has ended (ends
    /// are final), and is pruned. Holders of batches in flight are not in `stored` yet.
    pub async fn audit(&mut self, store: &dyn Store) -> Result<usize, StoreError> {
        let suspects: Vec<String> = self.suspects.drain().collect();
        let mut found = 0;
        for r in suspects {
            let holders: Vec<(String, String)> = match self.entries.get(&r) {
                Some(e) => e
                    .stored
                    .holders
                    .iter()
                    .filter(|(_, h)| !self.ended.contains_key(&h.uid))
                    .map(|(k, h)| (k.clone(), h.uid.clone()))
                    .collect(),
                None => continue,
            };
            for (key, uid) in holders {
                let Some((ns, name)) = key.split_once('/') else {
                    continue;
                };
                let kv = store
                    .get(&objects::key(AllocationSpec::INFO, Some(ns), name))
                    .await?;
                let alive = kv
                    .as_ref()
                    .and_then(AllocationProbe::of)
                    .is_some_and(|a| a.metadata.uid == uid && a.holds());
                if !alive {
                    found += 1;
                    tracing::warn!(resource = %r, allocation = %key, %uid, "holdings listed an allocation that has ended; pruning it");
                    self.ended.insert(uid, vec![r.clone()]);
                }
            }
        }
        Ok(found)
    }

    /// Writes records that still list ended holders without them, and forgets the ends no
    /// record lists any more. Only while no batch is in flight.
    pub async fn compact(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        if !self.batches.is_empty() {
            return Ok(());
        }
        let mut dirty: Vec<String> = self
            .ended
            .values()
            .flatten()
            .filter(|r| {
                self.entries.get(*r).is_some_and(|e| {
                    !e.stale
                        && e.stored
                            .holders
                            .values()
                            .any(|h| self.ended.contains_key(&h.uid))
                })
            })
            .cloned()
            .collect();
        dirty.sort_unstable();
        dirty.dedup();
        for chunk in dirty.chunks(CHUNK) {
            let mut txn = Txn::new();
            let mut pruned = Vec::with_capacity(chunk.len());
            for r in chunk {
                let Some(entry) = self.entries.get(r) else {
                    continue;
                };
                let mut value = entry.stored.clone();
                value.prune(|uid| self.ended.contains_key(uid));
                let key = holdings::key(r);
                txn = txn
                    .when(Compare::Version(key.clone(), entry.version))
                    .put(key, value.encode());
                pruned.push((r.clone(), value));
            }
            let committed = store.txn(txn).await?.succeeded;
            for (r, value) in pruned {
                if let Some(entry) = self.entries.get_mut(&r) {
                    if committed {
                        entry.stored = value;
                        entry.version += 1;
                    } else {
                        entry.stale = true;
                    }
                }
            }
        }
        let entries = &self.entries;
        self.ended.retain(|uid, resources| {
            resources.iter().any(|r| {
                entries
                    .get(r)
                    .is_some_and(|e| e.stale || e.stored.lists(uid) || !e.chain.is_empty())
            })
        });
        Ok(())
    }

    /// Loads every record and makes it list exactly the allocations that hold its resource
    /// now: at the start of a term (before this loop has placed anything, and after a term
    /// of a build without records). Allocations are created only by the leader, so none
    /// appears meanwhile; ends seen meanwhile are pruned as usual. Returns how many records
    /// it corrected.
    pub async fn load(&mut self, store: &dyn Store) -> Result<usize, StoreError> {
        let records = range_all(store, holdings::PREFIX).await?;
        let allocations = range_all(store, &objects::prefix(AllocationSpec::INFO, None)).await?;
        let mut expected: HashMap<String, Holdings> = HashMap::new();
        for kv in &allocations {
            let Some(a) = AllocationProbe::of(kv) else {
                tracing::error!(key = %kv.key, "cannot read an allocation's holdings");
                continue;
            };
            if !a.holds() {
                continue;
            }
            let key = crate::objects::object_id(&kv.key);
            for r in a.resources() {
                if let Some(holder) = Holder::of(&a.metadata.uid, &r, &a.spec.resources) {
                    expected.entry(r).or_default().insert(&key, holder);
                }
            }
        }
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut repairs: Vec<(String, u64, Holdings)> = Vec::new();
        for kv in &records {
            let Some(r) = holdings::resource_of(&kv.key) else {
                continue;
            };
            let want = expected.remove(r).unwrap_or_default();
            let have = Holdings::decode(&kv.value).ok();
            if have.as_ref() != Some(&want) {
                repairs.push((r.to_string(), kv.version, want.clone()));
            }
            entries.insert(
                r.to_string(),
                Entry {
                    stored: want,
                    version: kv.version,
                    ..Entry::default()
                },
            );
        }
        for (r, want) in expected {
            repairs.push((r.clone(), 0, want.clone()));
            entries.insert(
                r,
                Entry {
                    stored: want,
                    version: 0,
                    ..Entry::default()
                },
            );
        }
        let corrected = repairs.len();
        for chunk in repairs.chunks(CHUNK) {
            let mut txn = Txn::new();
            for (r, version, want) in chunk {
                let key = holdings::key(r);
                txn = txn
                    .when(Compare::Version(key.clone(), *version))
                    .put(key, want.encode());
            }
            let committed = store.txn(txn).await?.succeeded;
            for (r, version, _) in chunk {
                if let Some(entry) = entries.get_mut(r) {
                    if committed {
                        entry.version = version + 1;
                    } else {
                        entry.stale = true;
                    }
                }
            }
        }
        self.entries = entries;
        self.batches.clear();
        self.ready = true;
        Ok(corrected)
    }
}

/// A stored record, or its absence, as the entry's committed state; false when the record
/// cannot be read (the entry stays stale: nothing is placed on it, which is the safe side).
fn load_entry(entry: &mut Entry, kv: Option<&KeyValue>) -> bool {
    entry.chain.clear();
    match kv {
        Some(kv) => match Holdings::decode(&kv.value) {
            Ok(stored) => {
                entry.version = kv.version;
                entry.stored = stored;
                entry.stale = false;
                true
            }
            Err(e) => {
                tracing::error!(key = %kv.key, error = %e, "cannot read a holdings record");
                entry.stale = true;
                false
            }
        },
        None => {
            entry.version = 0;
            entry.stored = Holdings::default();
            entry.stale = false;
            true
        }
    }
}

/// Every key under `prefix`, a page at a time.
async fn range_all(store: &dyn Store, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.range(prefix, after.as_deref(), 1000).await?;
        after = page.kvs.last().map(|kv| kv.key.clone());
        out.extend(page.kvs);
        if !page.more || after.is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
