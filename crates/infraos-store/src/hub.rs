//! The in-memory watch hub of a backend that has no event history of its own.
//!
//! ```text
//!   writer ── publish(batch) ──► ring (recent events) ──► broadcast ──► watchers
//!                                  │                                    │
//!   watch(prefix, after) ── backlog from ring (rev > after) ───────────►│
//!                                  └── lagging watcher re-syncs from ring, or gets Compacted
//! ```
//! The ring keeps the last `capacity` events; "compacted" is the revision of the newest event
//! that fell out of it (or was dropped by [`Hub::compact`]). Publishing and subscribing hold
//! one lock, so a new watcher's backlog and its live feed neither overlap nor leave a gap.

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
    /// `None` once the store closed: receivers then see `Closed`.
    sender: Option<broadcast::Sender<Batch>>,
}

impl Hub {
    /// A hub whose history starts after `revision` (events before it are not available).
    pub(crate) fn new(revision: Revision, capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        Hub {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: revision,
                sender: Some(sender),
            }),
        }
    }

    pub(crate) fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for e in &events {
            inner.ring.push_back(e.clone());
        }
        while inner.ring.len() > inner.capacity {
            if let Some(old) = inner.ring.pop_front() {
                inner.compacted = inner.compacted.max(old.kv.mod_revision);
            }
        }
        if let Some(sender) = &inner.sender {
            // Nobody listening is fine; the ring still has it.
            let _ = sender.send(events.into());
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
        self.inner.lock().sender = None;
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
        let inner = self.inner.lock();
        let Some(sender) = &inner.sender else {
            return Err(StoreError::Closed);
        };
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
        Ok((backlog, sender.subscribe()))
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
