//! The work queue between the watch and the reconciles (client-go's workqueue, as
//! kube-runtime's scheduler and runner use it).
//!
//! ```text
//!   trigger(key) ──► queued (a set: a key waits once, however often it is triggered)
//!   schedule(key, at) ──► timers (one per key, the earliest wins) ──due──► queued
//!   pop() ──► running ──done(key, requeue)──► timers, or queued again when the key was
//!                        └ triggered meanwhile (dirty): never two reconciles of one key
//! ```
//! Time is tokio's, so tests pause it and jump it.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use tokio::time::Instant;

#[derive(Default)]
pub struct WorkQueue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    running: HashSet<String>,
    /// Keys triggered while a reconcile of theirs ran: queued again when it ends.
    dirty: HashSet<String>,
    timers: BTreeSet<(Instant, u64, String)>,
    timer_of: HashMap<String, (Instant, u64)>,
    seq: u64,
}

impl WorkQueue {
    /// Asks for a reconcile of `key` as soon as possible. A pending timer of the key is
    /// dropped: the reconcile it asked for happens now, and answers with its own action.
    pub fn trigger(&mut self, key: &str) {
        if self.running.contains(key) {
            self.dirty.insert(key.to_string());
            return;
        }
        self.cancel_timer(key);
        if self.queued.insert(key.to_string()) {
            self.ready.push_back(key.to_string());
        }
    }

    /// Asks for a reconcile of `key` at `at`, unless one is asked for sooner already.
    pub fn schedule(&mut self, key: &str, at: Instant) {
        if self.queued.contains(key) || self.dirty.contains(key) {
            return;
        }
        if let Some(&(old, seq)) = self.timer_of.get(key) {
            if old <= at {
                return;
            }
            self.timers.remove(&(old, seq, key.to_string()));
        }
        self.seq += 1;
        self.timers.insert((at, self.seq, key.to_string()));
        self.timer_of.insert(key.to_string(), (at, self.seq));
    }

    /// The next key to reconcile; it counts as running until [`WorkQueue::done`].
    pub fn pop(&mut self) -> Option<String> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// The reconcile of `key` ended; `requeue` is when it asked to run again.
    pub fn done(&mut self, key: &str, requeue: Option<Duration>, now: Instant) {
        self.running.remove(key);
        if self.dirty.remove(key) {
            self.trigger(key);
        } else if let Some(at) = requeue.and_then(|after| now.checked_add(after)) {
            // A requeue too far to name an instant is an await_change in effect.
            self.schedule(key, at);
        }
    }

    /// Forgets `key` (its object is gone): no timer, no queued run. A running reconcile
    /// finishes; nothing follows it unless the key is triggered again.
    pub fn forget(&mut self, key: &str) {
        self.cancel_timer(key);
        self.dirty.remove(key);
        if self.queued.remove(key) {
            self.ready.retain(|k| k != key);
        }
    }

    /// Moves the timers due at `now` to the ready keys.
    pub fn fire_due(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            if let Some((_, _, key)) = self.timers.pop_first() {
                self.timer_of.remove(&key);
                self.trigger(&key);
            }
        }
    }

    /// When the earliest timer is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, ..)| *at)
    }

    pub fn is_running(&self, key: &str) -> bool {
        self.running.contains(key)
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    fn cancel_timer(&mut self, key: &str) {
        if let Some((at, seq)) = self.timer_of.remove(key) {
            self.timers.remove(&(at, seq, key.to_string()));
        }
    }
}

/// Capped exponential backoff: `base · 2^(failures−1)`, at most `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        let delays: Vec<u64> = (1..=8).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_waits_once_and_never_runs_twice_at_once() {
        let mut q = WorkQueue::default();
        q.trigger("a");
        q.trigger("b");
        q.trigger("a");
        assert_eq!(q.pop().as_deref(), Some("a"));
        // Triggered while running: not ready now, queued when the run ends.
        q.trigger("a");
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.done("a", Some(Duration::from_secs(60)), Instant::now());
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.next_timer(), None, "the change superseded the requeue");
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_requeue_wins_and_fires_when_due() {
        let mut q = WorkQueue::default();
        let t0 = Instant::now();
        q.schedule("a", t0 + Duration::from_secs(10));
        q.schedule("a", t0 + Duration::from_secs(5));
        q.schedule("a", t0 + Duration::from_secs(7));
        assert_eq!(q.next_timer(), Some(t0 + Duration::from_secs(5)));
        q.fire_due(t0 + Duration::from_secs(4));
        assert_eq!(q.pop(), None);
        q.fire_due(t0 + Duration::from_secs(5));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.next_timer(), None);
        q.forget("a");
        q.schedule("b", t0 + Duration::from_secs(1));
        q.forget("b");
        q.fire_due(t0 + Duration::from_secs(100));
        assert_eq!(q.pop(), None);
    }
}
