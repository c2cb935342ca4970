//! Queue-sort: which pending claim goes next.
//!
//! ```text
//!   priority levels, highest first
//!     └ within a level, one line per Queue, each oldest first
//!         next = head of the line whose queue has the smallest
//!                dominant share ÷ weight × ½^(head's wait ÷ agingHalfLife)
//! ```
//! The dominant share of a queue is the largest fraction of any cluster dimension its
//! allocations hold (Dominant Resource Fairness, Ghodsi et al. 2011), counting what the batch
//! placed so far, so two flooding queues of weights 2 and 1 converge to a 2:1 dominant share.
//! Aging halves a line's share for every half-life its head has waited, so no queue's claims
//! wait forever behind a heavier queue. A higher priority always goes first: nothing of lower
//! priority is ever decided before a pending claim of higher priority.

use foldhash::{HashMap, HashMapExt};

use infraos_api::kinds::{Claim, ClassKind, ITEMS_DIMENSION};
use infraos_api::quantity::NANOS_PER_UNIT;

use crate::governance::namespace_of;
use crate::planner::batching::Batch;
use crate::planner::claim_ctx::claim_priority;
use crate::profile::Profile;
use crate::snapshot::Snapshot;

pub(crate) enum Next {
    One(usize),
    /// Every pending member of a gang, decided together.
    Gang(Vec<usize>),
}

/// Queue name → (creation time in ms, claim index) of its claims at one priority.
type QueueLines<'c> = HashMap<&'c str, Vec<(i64, usize)>>;

struct Line<'c> {
    queue: &'c str,
    weight: f64,
    /// (creation time in ms, index into the claims), oldest first.
    claims: Vec<(i64, usize)>,
    head: usize,
}

struct Level<'c> {
    priority: i32,
    lines: Vec<Line<'c>>,
}

pub(crate) struct FairOrder<'c> {
    claims: &'c [(String, &'c Claim)],
    levels: Vec<Level<'c>>,
    level: usize,
    gangs: HashMap<(&'c str, &'c str), Vec<usize>>,
    done: Vec<bool>,
    now_ms: i64,
    half_life_ms: f64,
    /// Cluster capacity by interned dimension, for dominant shares (empty when only one
    /// queue waits at every level: then shares do not matter).
    totals: Vec<i128>,
}

/// What every resource of the cluster offers, by interned dimension.
fn cluster_totals(snapshot: &Snapshot) -> Vec<i128> {
    let mut totals: Vec<i128> = Vec::new();
    let mut add = |g: u32, n: i128| {
        let g = g as usize;
        if totals.len() <= g {
            totals.resize(g + 1, 0);
        }
        totals[g] += n;
    };
    for (_, r) in snapshot.resources() {
        let Some(class) = snapshot.class(&r.class) else {
            continue;
        };
        match class.kind {
            ClassKind::Counted => {
                for (i, dim) in class.dimensions.iter().enumerate() {
                    if let (Some(g), Some(cap)) =
                        (snapshot.gov.lookup(&class.name, dim), r.cap.get(i))
                    {
                        add(g, *cap);
                    }
                }
            }
            ClassKind::Items => {
                if let Some(g) = snapshot.gov.lookup(&class.name, ITEMS_DIMENSION) {
                    add(g, r.items.len() as i128 * NANOS_PER_UNIT);
                }
            }
        }
    }
    totals
}

/// A queue's dominant share of the cluster divided by its weight, counting what the batch
/// placed so far.
pub fn dominant_share(
    totals: &[i128],
    snapshot: &Snapshot,
    batch: &Batch,
    queue: &str,
    weight: f64,
) -> f64 {
    let held = snapshot.gov.queue_usage.get(queue);
    let taken = batch.queue_taken.get(queue);
    let mut dominant: f64 = 0.0;
    for (g, total) in totals.iter().enumerate() {
        if *total > 0 {
            let used = held.and_then(|h| h.get(g)).copied().unwrap_or(0)
                + taken.and_then(|t| t.get(g)).copied().unwrap_or(0);
            dominant = dominant.max(used as f64 / *total as f64);
        }
    }
    dominant / weight
}

impl<'c> FairOrder<'c> {
    pub fn new(
        snapshot: &Snapshot,
        claims: &'c [(String, &'c Claim)],
        now_ms: i64,
        profile: &Profile,
    ) -> Self {
        let mut by_priority: HashMap<i32, QueueLines<'c>> = HashMap::new();
        let mut gangs: HashMap<(&'c str, &'c str), Vec<usize>> = HashMap::new();
        for (i, (key, claim)) in claims.iter().enumerate() {
            let (priority, _) = claim_priority(snapshot, claim);
            let created = claim
                .metadata
                .creation_timestamp
                .map_or(0, |t| t.unix_millis());
            by_priority
                .entry(priority)
                .or_default()
                .entry(claim.spec.queue_name())
                .or_default()
                .push((created, i));
            if let Some(group) = &claim.spec.group {
                gangs
                    .entry((namespace_of(key), group.name.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        let mut priorities: Vec<i32> = by_priority.keys().copied().collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        let mut contended = false;
        let levels = priorities
            .into_iter()
            .map(|p| {
                let mut lines: Vec<Line<'c>> = by_priority
                    .remove(&p)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(queue, mut claims)| {
                        // Stable: equal times keep the order the claims came in.
                        claims.sort_by_key(|&(created, i)| (created, i));
                        Line {
                            queue,
                            weight: snapshot.queue_weight(queue),
                            claims,
                            head: 0,
                        }
                    })
                    .collect();
                lines.sort_by(|a, b| a.queue.cmp(b.queue));
                contended |= lines.len() > 1;
                Level { priority: p, lines }
            })
            .collect();
        FairOrder {
            claims,
            levels,
            level: 0,
            gangs,
            done: vec![false; claims.len()],
            now_ms,
            half_life_ms: profile.fair_sharing.aging_half_life.as_millis() as f64,
            totals: if contended {
                cluster_totals(snapshot)
            } else {
                Vec::new()
            },
        }
    }

    /// The priority of the claim `next` returned last (`None` once all are returned).
    pub fn last_priority(&self) -> Option<i32> {
        self.levels.get(self.level).map(|l| l.priority)
    }

    pub fn next(&mut self, snapshot: &Snapshot, batch: &Batch) -> Option<Next> {
        while self.level < self.levels.len() {
            let mut best: Option<(f64, i64, usize)> = None;
            for (li, line) in self.levels[self.level].lines.iter_mut().enumerate() {
                while line.head < line.claims.len() && self.done[line.claims[line.head].1] {
                    line.head += 1;
                }
                let Some(&(created, _)) = line.claims.get(line.head) else {
                    continue;
                };
                let mut share =
                    dominant_share(&self.totals, snapshot, batch, line.queue, line.weight);
                if self.now_ms > 0 && self.half_life_ms > 0.0 {
                    let waited = (self.now_ms - created).max(0) as f64;
                    share *= 0.5f64.powf(waited / self.half_life_ms);
                }
                let better = best.is_none_or(|(s, c, _)| share < s || (share == s && created < c));
                if better {
                    best = Some((share, created, li));
                }
            }
            let Some((_, _, li)) = best else {
                self.level += 1;
                continue;
            };
            let line = &mut self.levels[self.level].lines[li];
            let (_, i) = line.claims[line.head];
            line.head += 1;
            self.done[i] = true;
            let (key, claim) = &self.claims[i];
            if let Some(group) = &claim.spec.group {
                let mut members = vec![i];
                if let Some(all) = self.gangs.get(&(namespace_of(key), group.name.as_str())) {
                    for &m in all {
                        if !self.done[m] {
                            self.done[m] = true;
                            members.push(m);
                        }
                    }
                }
                return Some(Next::Gang(members));
            }
            return Some(Next::One(i));
        }
        None
    }
}
