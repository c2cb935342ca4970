//! Node heartbeats, kept in memory as Nomad does: a heartbeat is a map update, not a store
//! write, so 10,000 agents beating every 10 s cost the store nothing. Only transitions
//! (Ready ↔ NotReady) are written, by the node-lifecycle controller.
//!
//! After a server restart every agent-run node gets a fresh grace period from the first
//! moment the controller looks, so a restart never marks healthy nodes NotReady.
//!
//! It also holds each Node's granted tiers, as the node-lifecycle controller last saw them,
//! so a heartbeat answers with the node's current grant (an administrator's change reaches
//! the agent within one heartbeat) and can tell an agent that its Node was deleted, all
//! without a store read.

use std::collections::HashMap;

use infraos_api::kinds::Tier;
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Liveness {
    last_beat_ms: Mutex<HashMap<String, i64>>,
    /// Beats this replica received itself, for sharing with the others (several servers).
    local_ms: Mutex<HashMap<String, i64>>,
    /// Every Node in the store and its granted tiers; filled by the node controller.
    tiers: Mutex<HashMap<String, Vec<Tier>>>,
    /// Wakes the lifecycle controller when a node it may hold NotReady beats again.
    pub changed: Notify,
}

impl Liveness {
    /// Records a heartbeat; returns whether the node was unknown (first beat since start).
    pub fn beat(&self, node: &str, now_ms: i64) -> bool {
        self.local_ms.lock().insert(node.to_string(), now_ms);
        let fresh = self
            .last_beat_ms
            .lock()
            .insert(node.to_string(), now_ms)
            .is_none();
        if fresh {
            self.changed.notify_one();
        }
        fresh
    }

    /// A beat another replica received: kept when newer than what this one knows.
    pub fn merge(&self, node: &str, at_ms: i64) {
        let mut beats = self.last_beat_ms.lock();
        let fresh = match beats.get_mut(node) {
            Some(last) if *last >= at_ms => return,
            Some(last) => {
                *last = at_ms;
                false
            }
            None => {
                beats.insert(node.to_string(), at_ms);
                true
            }
        };
        drop(beats);
        if fresh {
            self.changed.notify_one();
        }
    }

    /// The beats this replica received itself since `since_ms`.
    pub fn local_since(&self, since_ms: i64) -> HashMap<String, i64> {
        let mut local = self.local_ms.lock();
        local.retain(|_, at| *at >= since_ms);
        local.clone()
    }

    pub fn last_beat(&self, node: &str) -> Option<i64> {
        self.last_beat_ms.lock().get(node).copied()
    }

    /// Starts a grace period for a node seen in the store but not heard from yet.
    pub fn adopt(&self, node: &str, now_ms: i64) {
        self.last_beat_ms
            .lock()
            .entry(node.to_string())
            .or_insert(now_ms);
    }

    pub fn forget(&self, node: &str) {
        self.last_beat_ms.lock().remove(node);
        self.local_ms.lock().remove(node);
        self.tiers.lock().remove(node);
    }

    /// Records a Node's granted tiers, as stored.
    pub fn set_tiers(&self, node: &str, tiers: &[Tier]) {
        let mut known = self.tiers.lock();
        match known.get_mut(node) {
            Some(t) if t.as_slice() == tiers => {}
            Some(t) => *t = tiers.to_vec(),
            None => {
                known.insert(node.to_string(), tiers.to_vec());
            }
        }
    }

    /// The node's granted tiers; `None` when the controller has not seen the Node (not
    /// synced yet, just joined, or deleted).
    pub fn tiers(&self, node: &str) -> Option<Vec<Tier>> {
        self.tiers.lock().get(node).cloned()
    }

    /// Forgets every Node's tiers, before the controller relists.
    pub fn clear_tiers(&self) {
        self.tiers.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.last_beat_ms.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
