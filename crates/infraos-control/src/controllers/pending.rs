//! The scheduler controller's queue of claims to decide: highest priority first, then in
//! arrival order. Each batch hands the scheduler a window of its head (the scheduler orders
//! within it by fair share); a gang member in the window brings every queued member of its
//! gang, so a gang is always decided whole.

use foldhash::{HashMap, HashSet, HashSetExt};
use std::cmp::Reverse;
use std::collections::BTreeSet;

#[derive(Default)]
pub struct PendingQueue {
    order: BTreeSet<(Reverse<i32>, u64, String)>,
    /// Key → (priority, arrival sequence, gang).
    entries: HashMap<String, (i32, u64, Option<String>)>,
    /// Gang (`namespace/group`) → its queued members.
    gangs: HashMap<String, HashSet<String>>,
    next_seq: u64,
}

impl PendingQueue {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a claim unless it is queued already.
    pub fn push(&mut self, key: String, priority: i32, gang: Option<String>) {
        if self.entries.contains_key(&key) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(g) = &gang {
            self.gangs.entry(g.clone()).or_default().insert(key.clone());
        }
        self.order.insert((Reverse(priority), seq, key.clone()));
        self.entries.insert(key, (priority, seq, gang));
    }

    pub fn remove(&mut self, key: &str) {
        let Some((priority, seq, gang)) = self.entries.remove(key) else {
            return;
        };
        self.order
            .remove(&(Reverse(priority), seq, key.to_string()));
        if let Some(g) = gang
            && let Some(members) = self.gangs.get_mut(&g)
        {
            members.remove(key);
            if members.is_empty() {
                self.gangs.remove(&g);
            }
        }
    }

    /// Up to `n` keys from the head, plus the queued gang mates of any gang member among them.
    pub fn window(&self, n: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(n);
        let mut seen: HashSet<&str> = HashSet::new();
        for (_, _, key) in self.order.iter().take(n) {
            if !seen.insert(key) {
                continue;
            }
            out.push(key.clone());
            if let Some((_, _, Some(g))) = self.entries.get(key)
                && let Some(members) = self.gangs.get(g)
            {
                let mut mates: Vec<&String> = members.iter().collect();
                mates.sort();
                for m in mates {
                    if seen.insert(m) {
                        out.push(m.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_arrival_and_gangs_whole() {
        let mut q = PendingQueue::default();
        q.push("p/a".into(), 0, None);
        q.push("p/g1".into(), 0, Some("p/g".into()));
        q.push("p/b".into(), 0, None);
        q.push("p/high".into(), 100, None);
        q.push("p/g2".into(), 0, Some("p/g".into()));
        q.push("p/a".into(), 50, None); // already queued: unchanged
        assert_eq!(q.window(2), ["p/high", "p/a"]);
        assert_eq!(q.window(3), ["p/high", "p/a", "p/g1", "p/g2"]);
        q.remove("p/g1");
        q.remove("p/high");
        assert_eq!(q.window(10), ["p/a", "p/b", "p/g2"]);
        q.remove("p/a");
        q.remove("p/b");
        q.remove("p/g2");
        assert!(q.is_empty());
    }
}
