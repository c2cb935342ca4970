//! How allocation events, and the plan applier's own assumptions, reach the scheduler's
//! snapshot (and the ended allocations reach the holdings ledger).
//!
//! ```text
//!   watch put / delete ─┬─ the echo of our own commit (key, revision known) ─► skipped, not decoded
//!                       ├─ a key a batch in flight assumed ─► held until the batch settles
//!                       └─ otherwise ─► the snapshot, if newer than the state it holds for the key
//!   prepare ─► assume (the snapshot holds it as ASSUMED: no event replaces or removes it)
//!   settle, committed ─► confirmed at the commit revision; a held event applies if newer
//!   settle, not committed ─► the assumption is undone; a held event applies
//!   every delete, every ended put ─► `ended` (uid and resources), for the ledger
//! ```
//! Issue 17: a requeued claim is placed again under the key its old allocation had, and that
//! allocation's deletion may reach the loop only after the new one's batch has settled. The
//! snapshot applies an event only if it is newer than the state it holds
//! ([`Snapshot::remove_allocation_at`]), so that deletion no longer removes the new
//! allocation; before, it did, and a batch planned before the new allocation's echo
//! double-booked what it held.

use foldhash::HashMap;

use infraos_scheduler::Snapshot;
use infraos_store::KeyValue;

use super::ledger::AllocationProbe;
use super::scheduler::{Applied, Source, apply_object};
use crate::ControlError as ApiError;

/// An allocation event held back while the allocation's batch is unsettled.
enum LastEvent {
    Put(KeyValue),
    /// Deleted at this revision.
    Delete(u64),
}

/// An allocation that ended: its uid and the resources it held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub uid: String,
    pub resources: Vec<String>,
}

#[derive(Default)]
pub(crate) struct AllocationFeed {
    /// Allocations our own commits wrote (already in the snapshot), by revision: their echo
    /// is skipped without decoding it.
    own: HashMap<String, u64>,
    /// Allocations assumed by unsettled batches, with the last event seen for the key since.
    in_flight: HashMap<String, Option<LastEvent>>,
    /// Allocations seen to end since the caller last took them.
    ended: Vec<Ended>,
}

impl AllocationFeed {
    /// The ended allocations seen since the last call.
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    /// A put from the watch.
    pub fn put(
        &mut self,
        snapshot: &mut Snapshot,
        id: &str,
        kv: &KeyValue,
    ) -> Result<Applied, ApiError> {
        match self.own.get(id) {
            Some(&r) if r == kv.mod_revision => {
                self.own.remove(id);
                return Ok(Applied::Quiet);
            }
            Some(&r) if r < kv.mod_revision => {
                self.own.remove(id);
            }
            _ => {}
        }
        if let Some(last) = self.in_flight.get_mut(id) {
            *last = Some(LastEvent::Put(kv.clone()));
            return Ok(Applied::Quiet);
        }
        self.apply_put(snapshot, id, kv)
    }

    fn apply_put(
        &mut self,
        snapshot: &mut Snapshot,
        id: &str,
        kv: &KeyValue,
    ) -> Result<Applied, ApiError> {
        let applied = apply_object(snapshot, Source::Allocations, id, kv)?;
        if let Applied::AllocationEnded { uid, resources, .. } = &applied {
            self.ended.push(Ended {
                uid: uid.clone(),
                resources: resources.clone(),
            });
        }
        Ok(applied)
    }

    /// A delete from the watch: `kv` is the deleted value, at the revision of the delete.
    pub fn delete(&mut self, snapshot: &mut Snapshot, id: &str, kv: &KeyValue) -> Applied {
        // Ended whatever the snapshot makes of it: the ledger prunes by uid.
        if let Some(probe) = AllocationProbe::of(kv) {
            self.ended.push(Ended {
                resources: probe.resources(),
                uid: probe.metadata.uid,
            });
        }
        if let Some(last) = self.in_flight.get_mut(id) {
            *last = Some(LastEvent::Delete(kv.mod_revision));
            return Applied::Quiet;
        }
        self.gone(snapshot, id, kv.mod_revision)
    }

    /// The allocation under `id` was gone at `revision` (a delete, or absent from a relist).
    pub fn gone(&mut self, snapshot: &mut Snapshot, id: &str, revision: u64) -> Applied {
        if self.in_flight.contains_key(id) {
            return Applied::Quiet; // its batch settles it
        }
        if self.own.get(id).is_some_and(|&r| r < revision) {
            self.own.remove(id);
        }
        if snapshot.remove_allocation_at(id, revision) {
            Applied::AllocationEnded {
                uid: String::new(),
                resources: Vec::new(),
                removed: true,
            }
        } else {
            Applied::Quiet
        }
    }

    /// A batch assumed allocation `key` in the snapshot (`Snapshot::apply_allocation`).
    pub fn assume(&mut self, key: &str) {
        self.in_flight.insert(key.to_string(), None);
    }

    /// The batch that assumed `key` committed it at `revision`: the snapshot's state of it
    /// is confirmed at that revision, and what was stored since applies.
    pub fn committed(
        &mut self,
        snapshot: &mut Snapshot,
        key: &str,
        revision: u64,
    ) -> Result<Applied, ApiError> {
        snapshot.confirm_allocation(key, revision);
        let mut echo_seen = false;
        let applied = match self.in_flight.remove(key).flatten() {
            Some(LastEvent::Put(kv)) if kv.mod_revision == revision => {
                echo_seen = true;
                Applied::Quiet
            }
            // A later change of ours (or its end), or an older allocation's write, which
            // the snapshot ignores as older than what it holds.
            Some(LastEvent::Put(kv)) => {
                echo_seen = kv.mod_revision > revision;
                self.apply_put(snapshot, key, &kv)?
            }
            Some(LastEvent::Delete(at)) => {
                echo_seen = at > revision;
                self.gone(snapshot, key, at)
            }
            None => Applied::Quiet,
        };
        if !echo_seen {
            self.own.insert(key.to_string(), revision);
        }
        Ok(applied)
    }

    /// The batch that assumed `key` did not commit: the assumption is undone, and what was
    /// stored meanwhile applies.
    pub fn not_committed(
        &mut self,
        snapshot: &mut Snapshot,
        key: &str,
    ) -> Result<Applied, ApiError> {
        if snapshot.allocation_revision(key) == Some(infraos_scheduler::snapshot::ASSUMED) {
            snapshot.remove_allocation(key);
        }
        match self.in_flight.remove(key).flatten() {
            Some(LastEvent::Put(kv)) => self.apply_put(snapshot, key, &kv),
            Some(LastEvent::Delete(at)) => Ok(self.gone(snapshot, key, at)),
            None => Ok(Applied::Quiet),
        }
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
