//! The in-memory watch hub of a backend that has no event history of its own.
//!
//! ```text
//!   writer ── publish(batch) ──► ring (recent events)
//!                  └─ per watched prefix: the batch's events under it ──► broadcast ──► watchers
//!                                  │                                                  │
//!   watch(prefix, after) ── backlog from ring (rev > after) ─────────────────────────►│
//!                                  └── lagging watcher re-syncs from ring, or gets Compacted
//! ```
//! Watchers are grouped by prefix, so a commit wakes only the watchers it concerns: 10,000
//! agents watching allocations are not woken by a Node's status write.
//! The ring keeps the last `capacity` events; "compacted" is the revision of the newest event
//! that fell out of it (or was dropped by [`Hub::compact`]). Publishing and subscribing hold
//! one lock, so a new watcher's backlog and its live feed neither overlap nor leave a gap.

use foldhash::{HashMap, HashMapExt};
use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::{Event, Revision, StoreError, WatchStream};

const BROADCAST_CAPACITY: usize = 1024;

type Batch = Arc<[Event]>;

pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

struct Inner {
    ring: VecDeque<Event>,
    capacity: usize,
    /// Watches must start after this revision.
    compacted: Revision,
    /// The revision of the newest commit published (the ring holds every event up to it).
    published: Revision,
    /// One channel per watched prefix; `closed` once the store closed: receivers then see
    /// `Closed`.
    senders: HashMap<String, broadcast::Sender<Batch>>,
    closed: bool,
}

impl Hub {
    /// A hub whose history starts after `revision` (events before it are not available).
    pub(crate) fn new(revision: Revision, capacity: usize) -> Self {
        Hub {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: revision,
                published: revision,
                senders: HashMap::new(),
                closed: false,
            }),
        }
    }

    /// Publishes the events of the commits up to `revision`.
    pub(crate) fn publish(&self, events: Vec<Event>, revision: Revision) {
        let mut inner = self.inner.lock();
        inner.published = inner.published.max(revision);
        if events.is_empty() {
            return;
        }
        for e in &events {
            // Decoded forms go to live watchers only: history would keep them alive.
            inner.ring.push_back(Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev: e.prev.clone(),
                decoded: None,
            });
        }
        while inner.ring.len() > inner.capacity {
            if let Some(old) = inner.ring.pop_front() {
                inner.compacted = inner.compacted.max(old.kv.mod_revision);
            }
        }
        // Nobody listening is fine: the ring still has it. A prefix nobody watches any more
        // is dropped here.
        inner
            .senders
            .retain(|_, sender| sender.receiver_count() > 0);
        let batch: Batch = events.into();
        for (prefix, sender) in &inner.senders {
            let matching = batch
                .iter()
                .filter(|e| e.kv.key.starts_with(prefix))
                .count();
            if matching == batch.len() {
                let _ = sender.send(batch.clone());
            } else if matching > 0 {
                let mine: Batch = batch
                    .iter()
                    .filter(|e| e.kv.key.starts_with(prefix))
                    .cloned()
                    .collect();
                let _ = sender.send(mine);
            }
        }
    }

    pub(crate) fn compact(&self, revision: Revision) {
        let mut inner = self.inner.lock();
        while inner
            .ring
            .front()
            .is_some_and(|e| e.kv.mod_revision <= revision)
        {
            inner.ring.pop_front();
        }
        inner.compacted = inner.compacted.max(revision);
    }

    /// Ends every watch stream with `StoreError::Closed`.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.senders.clear();
    }

    /// The events under `prefix` with `after < revision <= upto`, oldest first; `None` while
    /// the commit at `upto` is not published yet.
    pub(crate) fn history(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
    ) -> Option<Result<Vec<Event>, StoreError>> {
        let inner = self.inner.lock();
        if inner.published < upto {
            return None;
        }
        if after < inner.compacted {
            return Some(Err(StoreError::Compacted {
                requested: after,
                compacted: inner.compacted,
            }));
        }
        Some(Ok(inner
            .ring
            .iter()
            .filter(|e| {
                e.kv.mod_revision > after
                    && e.kv.mod_revision <= upto
                    && e.kv.key.starts_with(prefix)
            })
            .cloned()
            .collect()))
    }

    pub(crate) fn compacted(&self) -> Revision {
        self.inner.lock().compacted
    }

    /// Events under `prefix` after `after`, from the ring, with a receiver for what follows.
    fn subscribe(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Batch>), StoreError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        if after < inner.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: inner.compacted,
            });
        }
        let backlog = inner
            .ring
            .iter()
            .filter(|e| e.kv.mod_revision > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let receiver = inner
            .senders
            .entry(prefix.to_string())
            .or_insert_with(|| broadcast::channel(BROADCAST_CAPACITY).0)
            .subscribe();
        Ok((backlog, receiver))
    }

    pub(crate) fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        let (backlog, receiver) = self.subscribe(prefix, after)?;
        let state = WatchState {
            hub: Arc::clone(self),
            prefix: prefix.to_string(),
            last: after,
            pending: if backlog.is_empty() {
                None
            } else {
                Some(backlog)
            },
            receiver,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_batch)))
    }
}

struct WatchState {
    hub: Arc<Hub>,
    prefix: String,
    /// The newest revision delivered.
    last: Revision,
    pending: Option<Vec<Event>>,
    receiver: broadcast::Receiver<Batch>,
    done: bool,
}

async fn next_batch(mut s: WatchState) -> Option<(Result<Batch, StoreError>, WatchState)> {
    if s.done {
        return None;
    }
    if let Some(batch) = s.pending.take() {
        if let Some(last) = batch.last() {
            s.last = last.kv.mod_revision;
        }
        return Some((Ok(batch.into()), s));
    }
    loop {
        match s.receiver.recv().await {
            Ok(batch) => {
                let mine: Vec<Event> = batch
                    .iter()
                    .filter(|e| e.kv.mod_revision > s.last && e.kv.key.starts_with(&s.prefix))
                    .cloned()
                    .collect();
                if let Some(last) = mine.last() {
                    s.last = last.kv.mod_revision;
                    return Some((Ok(mine.into()), s));
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind the broadcast buffer: re-sync from the ring if it still covers us.
                match s.hub.subscribe(&s.prefix, s.last) {
                    Ok((backlog, receiver)) => {
                        s.receiver = receiver;
                        if let Some(last) = backlog.last() {
                            s.last = last.kv.mod_revision;
                            return Some((Ok(backlog.into()), s));
                        }
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                s.done = true;
                return Some((Err(StoreError::Closed), s));
            }
        }
    }
}
