//! Post-filter: preemption, for a claim that fits nowhere or exceeds a quota.
//!
//! ```text
//!   victims eligible:  priority + minPriorityGap <= the claim's (unless its policy is Never)
//!                      or borrowing another project's share of the claim's tenant quota,
//!                         while the claim itself stays within its own limits, and of a
//!                         priority no higher than the claim's (reclaim)
//!                      never one the claim preempted before and has not been placed since
//!   units:             an allocation, or a whole gang (preempted together)
//!   candidates:        the allocations on the node, and, when a pool quota blocks, every
//!                      allocation held against that pool quota, wherever it runs
//!   per candidate node (capacity) or for the blocking tenant or project quota:
//!     free units tentatively, cheapest first (being preempted already, borrowing, lowest
//!     priority, newest), until the claim fits; then give back every unit it fits without
//!     (most valuable first)
//!   choose the node whose victims have the lowest top priority, then are fewest
//!   nominate: what the claim will take there (capacity and quota: when it preempts for a
//!             quota, where it lands once the victims are gone) is held against every claim
//!             that could not preempt it once placed (lower and equal priorities) until it is
//!             placed or decided otherwise
//! ```
//! A gang preempts as a whole: each member that fits nowhere looks for victims with the
//! members before it in place and their victims gone; only if every member needed fits are
//! the victims preempted, and then no member is placed until they have all ended.
//! Why preemption converges (`docs/scheduler.md#why-preemption-converges`): a victim has a
//! strictly lower priority, or an equal or lower one and quota its project borrowed that the
//! claim is owed. A victim therefore never preempts its preemptor back (that would need a
//! higher priority, or the preemptor borrowing, and a reclaiming claim stays within its
//! limits), and while the preemptor waits its nomination holds the room against the victim
//! (whose priority is not above the preemptor's). A claim never preempts the same allocation
//! twice before it is placed.

use infraos_api::kinds::{AllocatedResource, PreemptionPolicy};

use crate::governance::{AllocationMeta, namespace_of};
use crate::planner::batching::Batch;
use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::engine::Scheduler;
use crate::planner::outcome::{
    Explanation, Outcome, PreemptionPlan, Victim, WAITING_FOR_PREEMPTION,
};
use crate::planner::quota::{QuotaBlock, check_quotas};
use crate::snapshot::{NodeId, Snapshot};

/// Allocations preempted together: one, or every allocation of a gang.
#[derive(Clone)]
struct Unit {
    keys: Vec<String>,
    priority: i32,
    borrowing: bool,
    /// Already being preempted: free to count, costs nothing.
    preempting: bool,
    created_ms: i64,
    reason: String,
}

/// Keeps one unit per gang: several of its members may hold resources on the same node.
fn dedup_units(units: &mut Vec<Unit>) {
    let mut seen = std::collections::HashSet::new();
    units.retain(|u| seen.insert(u.keys.clone()));
}

/// Lower is better: (highest victim priority, victims, sum of priorities).
type Cost = (i64, usize, i64);

/// Victims found for one claim: the candidate units and those chosen.
pub(crate) struct FoundVictims {
    units: Vec<Unit>,
    chosen: Vec<usize>,
}

/// Victims that make room for a claim, and where it lands once they are gone.
pub(crate) struct CapacityVictims {
    pub node: NodeId,
    pub found: FoundVictims,
    /// What the claim takes on `node` once the victims are gone.
    pub parts: Vec<AllocatedResource>,
}

impl FoundVictims {
    /// The allocations to preempt (not those already being preempted), with why.
    pub(crate) fn victims(&self, snapshot: &Snapshot) -> Vec<Victim> {
        self.chosen
            .iter()
            .map(|&i| &self.units[i])
            .filter(|u| !u.preempting)
            .flat_map(|u| {
                // A gang member already stopping is not preempted again.
                u.keys
                    .iter()
                    .filter(|key| !snapshot.allocation_meta(key).is_some_and(|m| m.preempting))
                    .map(|key| Victim {
                        allocation: key.clone(),
                        priority: snapshot.allocation_meta(key).map_or(0, |m| m.priority),
                        reason: u.reason.clone(),
                    })
            })
            .collect()
    }

    /// Every allocation chosen: those to preempt and those already stopping.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.chosen
            .iter()
            .flat_map(|&i| self.units[i].keys.iter().cloned())
            .collect()
    }

    /// Allocations already being preempted that the claim waits for.
    pub(crate) fn waiting(&self) -> usize {
        self.chosen
            .iter()
            .map(|&i| &self.units[i])
            .filter(|u| u.preempting)
            .map(|u| u.keys.len())
            .sum()
    }
}

impl Scheduler {
    /// Why `meta` may be preempted for the claim, or `None`.
    fn eligible(
        &self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        claim_borrows: bool,
        key: &str,
        meta: &AllocationMeta,
    ) -> Option<String> {
        if meta.preempting {
            return Some("already being preempted".into());
        }
        let gap = i64::from(self.profile().preemption.min_priority_gap);
        if ctx.policy != PreemptionPolicy::Never
            && i64::from(meta.priority) + gap <= i64::from(ctx.priority)
        {
            return Some(format!(
                "priority {} preempts priority {}",
                ctx.priority, meta.priority
            ));
        }
        let ns = namespace_of(key);
        // Reclaiming borrowed quota never evicts a higher priority: that victim, requeued,
        // would go first and borrow the room back, and be reclaimed again (issue 17).
        if meta.borrowing
            && !claim_borrows
            && meta.priority <= ctx.priority
            && ns != ctx.namespace
            && ctx.tenant.is_some()
            && snapshot.tenant_of(ns) == ctx.tenant
        {
            return Some(format!(
                "reclaiming tenant quota borrowed by project {ns} (priority {}) for project {} (priority {})",
                meta.priority, ctx.namespace, ctx.priority
            ));
        }
        None
    }

    /// The unit `key` belongs to, if every allocation of it is eligible.
    fn unit_of(
        &self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        claim_borrows: bool,
        batch: &Batch,
        key: &str,
    ) -> Option<Unit> {
        let meta = snapshot.allocation_meta(key)?;
        // An allocation already stopping is a unit of its own (its room comes free whatever
        // its gang does); the rest of a gang is preempted together.
        let mut keys: Vec<String> = match &meta.group {
            Some(group) if !meta.preempting => snapshot
                .gang_allocations(namespace_of(key), group)
                .into_iter()
                .filter(|k| !snapshot.allocation_meta(k).is_some_and(|m| m.preempting))
                .map(str::to_string)
                .collect(),
            _ => vec![key.to_string()],
        };
        // Sorted, so the unit reached from any of its members is the same and is counted once.
        keys.sort_unstable();
        let mut unit = Unit {
            keys: Vec::with_capacity(keys.len()),
            priority: i32::MIN,
            borrowing: false,
            preempting: true,
            created_ms: 0,
            reason: String::new(),
        };
        for k in keys {
            if batch.victims.contains(&k) {
                return None;
            }
            let m = snapshot.allocation_meta(&k)?;
            // Stopping for a preemptor whose room is held against this claim: its room is
            // that preemptor's, not free for this claim to wait for.
            if m.preempting && batch.held_victims.contains(&k) {
                return None;
            }
            // Back after this claim preempted it, and the claim still unplaced: preempting it
            // again would be a loop. (Its own victims still stopping are waited for.)
            if !m.preempting && self.preempted_before(ctx.key, &k) {
                return None;
            }
            let reason = self.eligible(snapshot, ctx, claim_borrows, &k, m)?;
            unit.priority = unit.priority.max(m.priority);
            unit.borrowing |= m.borrowing;
            unit.preempting &= m.preempting;
            unit.created_ms = unit.created_ms.max(m.created_ms);
            if unit.reason.is_empty() || !m.preempting {
                unit.reason = if meta.group.is_some() {
                    format!(
                        "{reason} (gang {})",
                        meta.group.as_deref().unwrap_or_default()
                    )
                } else {
                    reason
                };
            }
            unit.keys.push(k);
        }
        Some(unit)
    }

    fn sort_units(units: &mut [Unit]) {
        units.sort_by(|a, b| {
            b.preempting
                .cmp(&a.preempting)
                .then(b.borrowing.cmp(&a.borrowing))
                .then(a.priority.cmp(&b.priority))
                .then(b.created_ms.cmp(&a.created_ms))
                .then(a.keys.cmp(&b.keys))
        });
    }

    fn free_unit(snapshot: &Snapshot, batch: &mut Batch, unit: &Unit, free: bool) {
        for key in &unit.keys {
            // What it holds of quotas comes back with it: pool quotas matter to the capacity
            // search, all of them to a gang's later members.
            for &(qi, slot, n) in snapshot.quota_contributions(key) {
                batch.adjust_quota(qi, slot, if free { -n } else { n });
            }
            for part in snapshot.allocation(key).unwrap_or_default() {
                let Some((id, dims, items)) = snapshot.part_indices(part) else {
                    continue;
                };
                if free {
                    batch.overlay.free(id, &dims, &items);
                } else {
                    batch.overlay.unfree(id, &dims, &items);
                }
            }
        }
    }

    /// The fewest, cheapest units whose removal lets `fits` pass, or `None`.
    fn choose_units(
        units: &[Unit],
        batch: &mut Batch,
        mut take: impl FnMut(&mut Batch, &Unit, bool),
        mut fits: impl FnMut(&Batch) -> bool,
    ) -> Option<Vec<usize>> {
        let mut chosen = Vec::new();
        let mut ok = false;
        for (i, unit) in units.iter().enumerate() {
            take(batch, unit, true);
            chosen.push(i);
            if fits(batch) {
                ok = true;
                break;
            }
        }
        if ok {
            // Reprieve: keep every unit the claim fits without, most valuable first.
            for at in (0..chosen.len()).rev() {
                let unit = &units[chosen[at]];
                if unit.preempting {
                    continue;
                }
                take(batch, unit, false);
                if fits(batch) {
                    chosen.remove(at);
                } else {
                    take(batch, unit, true);
                }
            }
        }
        for &i in &chosen {
            take(batch, &units[i], false);
        }
        ok.then_some(chosen)
    }

    fn cost(units: &[Unit], chosen: &[usize]) -> Cost {
        let real = chosen.iter().map(|&i| &units[i]).filter(|u| !u.preempting);
        let mut cost: Cost = (i64::MIN, 0, 0);
        for u in real {
            cost.0 = cost.0.max(i64::from(u.priority));
            cost.1 += u.keys.len();
            cost.2 += i64::from(u.priority);
        }
        cost
    }

    /// The outcome for chosen units: preempt the real victims, or wait for those already
    /// being preempted.
    fn preemption_outcome(
        snapshot: &Snapshot,
        batch: &mut Batch,
        units: &[Unit],
        chosen: &[usize],
        node: Option<String>,
        explanation: Explanation,
    ) -> Outcome {
        let mut victims = Vec::new();
        let mut waiting = 0;
        for &i in chosen {
            let unit = &units[i];
            if unit.preempting {
                waiting += unit.keys.len();
                continue;
            }
            for key in &unit.keys {
                batch.victims.insert(key.clone());
                if snapshot.allocation_meta(key).is_some_and(|m| m.preempting) {
                    continue; // a gang member already stopping
                }
                victims.push(Victim {
                    allocation: key.clone(),
                    priority: snapshot.allocation_meta(key).map_or(0, |m| m.priority),
                    reason: unit.reason.clone(),
                });
            }
        }
        if victims.is_empty() {
            let at = node.map(|n| format!(" on node {n}")).unwrap_or_default();
            return Outcome::Unschedulable(Explanation {
                reason: WAITING_FOR_PREEMPTION,
                detail: Some(format!(
                    "waiting for {waiting} preempted allocation(s){at} to end; {}",
                    explanation.message()
                )),
                ..explanation
            });
        }
        Outcome::Preempt(PreemptionPlan {
            node,
            victims,
            explanation,
        })
    }

    /// The claim fits no node: find a node where preempting eligible allocations makes room.
    pub(crate) fn preempt_for_capacity(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        batch: &mut Batch,
        explanation: Explanation,
    ) -> Outcome {
        // A gang's members look for victims together (`decide_gang`).
        if ctx.claim.spec.group.is_some() {
            return Outcome::Unschedulable(explanation);
        }
        let Some(found) = self.find_capacity_victims(snapshot, ctx, batch, &explanation) else {
            return Outcome::Unschedulable(explanation);
        };
        let name = snapshot.node(found.node).name.clone();
        self.nominate(
            snapshot,
            ctx,
            ctx.key.to_string(),
            found.parts.clone(),
            found.found.keys(),
        );
        Self::preemption_outcome(
            snapshot,
            batch,
            &found.found.units,
            &found.found.chosen,
            Some(name),
            explanation,
        )
    }

    /// A node where preempting eligible allocations makes room for the claim (`explanation`
    /// says why it fits nowhere now), the cheapest victims there, and where it then lands.
    /// The batch is left as it was.
    pub(crate) fn find_capacity_victims(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        batch: &mut Batch,
        explanation: &Explanation,
    ) -> Option<CapacityVictims> {
        if !self.profile().preemption.enabled {
            return None;
        }
        let claim_borrows = check_quotas(snapshot, ctx, batch, &[]).unwrap_or(true);
        if !snapshot.may_preempt(
            ctx.priority,
            self.profile().preemption.min_priority_gap,
            ctx.policy,
            claim_borrows,
        ) {
            return None;
        }
        let anchor = ctx
            .requests
            .iter()
            .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
            .min_by_key(|r| snapshot.nodes_with(&r.class.name).len())?;
        // A pool quota is used up wherever its pool's allocations run: on every node, those
        // are candidates too.
        let pool_units: Vec<Unit> = if explanation
            .reasons
            .keys()
            .any(|r| r.starts_with("pool quota "))
        {
            let mut keys: Vec<&str> = ctx
                .pool_quotas
                .iter()
                .flat_map(|&qi| snapshot.allocations_in_quota(qi))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter()
                .filter_map(|key| self.unit_of(snapshot, ctx, claim_borrows, batch, key))
                .collect()
        } else {
            Vec::new()
        };
        let candidates = snapshot.nodes_with(&anchor.class.name);
        let want = self.profile().feasible_to_find(candidates.len());
        let mut best: Option<(Cost, NodeId, Vec<Unit>, Vec<usize>)> = None;
        let mut found = 0;
        // The node it was nominated for first: waiting there for its own victims costs
        // nothing, and searching elsewhere first would preempt more while they stop.
        let nominated = self.nominated_node(snapshot, ctx.key);
        let order = nominated
            .into_iter()
            .chain(candidates.iter().copied().filter(|n| Some(*n) != nominated));
        for node in order {
            let mut units: Vec<Unit> = snapshot
                .allocations_on_node(node)
                .into_iter()
                .filter_map(|key| self.unit_of(snapshot, ctx, claim_borrows, batch, key))
                .collect();
            units.extend(pool_units.iter().cloned());
            if units.is_empty() {
                continue;
            }
            dedup_units(&mut units);
            Self::sort_units(&mut units);
            let chosen = Self::choose_units(
                &units,
                batch,
                |b, unit, free| Self::free_unit(snapshot, b, unit, free),
                |b| self.evaluate(snapshot, Some(node), None, ctx, b).is_ok(),
            );
            let Some(chosen) = chosen else {
                continue;
            };
            found += 1;
            let cost = Self::cost(&units, &chosen);
            if best.as_ref().is_none_or(|(c, ..)| cost < *c) {
                best = Some((cost, node, units, chosen));
            }
            if found >= want {
                break;
            }
        }
        let (_, node, units, chosen) = best?;
        for &i in &chosen {
            Self::free_unit(snapshot, batch, &units[i], true);
        }
        let parts = match self.evaluate(snapshot, Some(node), None, ctx, batch) {
            Ok(_) => self.scratch_parts(snapshot, ctx),
            Err(_) => Vec::new(),
        };
        for &i in &chosen {
            Self::free_unit(snapshot, batch, &units[i], false);
        }
        Some(CapacityVictims {
            node,
            found: FoundVictims { units, chosen },
            parts,
        })
    }

    /// The node of the claim's nomination, if it has one on a node.
    pub(crate) fn nominated_node(&self, snapshot: &Snapshot, key: &str) -> Option<NodeId> {
        self.nominations
            .get(key)?
            .parts
            .iter()
            .find_map(|p| snapshot.resource_by_name(&p.resource)?.node)
    }

    /// Tentatively frees what `found`'s victims hold and marks them as victims (`take`), or
    /// undoes that: a gang's later members see the earlier members' victims gone.
    pub(crate) fn take_victims(
        snapshot: &Snapshot,
        batch: &mut Batch,
        found: &FoundVictims,
        take: bool,
    ) {
        for &i in &found.chosen {
            let unit = &found.units[i];
            Self::free_unit(snapshot, batch, unit, take);
            for key in &unit.keys {
                if take {
                    batch.victims.insert(key.clone());
                } else {
                    batch.victims.remove(key);
                }
            }
        }
    }

    /// The claim exceeds a tenant or project quota: preempt eligible allocations held
    /// against that quota until the claim fits every quota, and, if it then lacks capacity,
    /// what makes room on a node too. Its nomination holds where it lands once they are gone
    /// (capacity and quota), so a victim cannot take back either. If it would not fit even
    /// then, nothing is preempted.
    pub(crate) fn preempt_for_quota(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        batch: &mut Batch,
        block: QuotaBlock,
        explanation: Explanation,
    ) -> Outcome {
        if ctx.claim.spec.group.is_some() {
            return Outcome::Unschedulable(explanation);
        }
        let Some(found) = self.find_quota_victims(snapshot, ctx, batch, &block) else {
            return Outcome::Unschedulable(explanation);
        };
        Self::take_victims(snapshot, batch, &found, true);
        let landing = match check_quotas(snapshot, ctx, batch, &[]) {
            Err(_) => None,
            Ok(_) => match self.place(snapshot, ctx, batch) {
                Ok(placement) => Some((placement.node, placement.resources, None)),
                Err(e) => self
                    .find_capacity_victims(snapshot, ctx, batch, &e)
                    .filter(|c| !c.parts.is_empty())
                    .map(|c| {
                        let node = snapshot.node(c.node).name.clone();
                        (Some(node), c.parts.clone(), Some(c.found))
                    }),
            },
        };
        Self::take_victims(snapshot, batch, &found, false);
        let Some((node, parts, capacity)) = landing else {
            return Outcome::Unschedulable(explanation);
        };
        let mut waits_for = found.keys();
        if let Some(c) = &capacity {
            waits_for.extend(c.keys());
        }
        self.nominate(snapshot, ctx, ctx.key.to_string(), parts, waits_for);
        let mut sets = vec![&found];
        if let Some(c) = &capacity {
            sets.push(c);
        }
        Self::combined_outcome(snapshot, batch, &sets, node, explanation)
    }

    /// The outcome for several sets of chosen units (quota victims, then capacity victims).
    fn combined_outcome(
        snapshot: &Snapshot,
        batch: &mut Batch,
        sets: &[&FoundVictims],
        node: Option<String>,
        explanation: Explanation,
    ) -> Outcome {
        let mut victims: Vec<Victim> = Vec::new();
        let mut waiting = 0;
        for found in sets {
            waiting += found.waiting();
            for v in found.victims(snapshot) {
                if !victims.iter().any(|x| x.allocation == v.allocation) {
                    batch.victims.insert(v.allocation.clone());
                    victims.push(v);
                }
            }
        }
        if victims.is_empty() {
            let at = node.map(|n| format!(" on node {n}")).unwrap_or_default();
            return Outcome::Unschedulable(Explanation {
                reason: WAITING_FOR_PREEMPTION,
                detail: Some(format!(
                    "waiting for {waiting} preempted allocation(s){at} to end; {}",
                    explanation.message()
                )),
                ..explanation
            });
        }
        Outcome::Preempt(PreemptionPlan {
            node,
            victims,
            explanation,
        })
    }

    /// The cheapest eligible allocations held against the blocking quota whose removal lets
    /// the claim fit every tenant and project quota. The batch is left as it was.
    pub(crate) fn find_quota_victims(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        batch: &mut Batch,
        block: &QuotaBlock,
    ) -> Option<FoundVictims> {
        if !self.profile().preemption.enabled {
            return None;
        }
        // The claim reclaims only while it stays within its own project's limits.
        let claim_borrows = snapshot.quotas().iter().enumerate().any(|(qi, q)| {
            q.level == infraos_api::kinds::QuotaLevel::Project
                && q.applies_to(ctx.namespace, ctx.tenant)
                && q.dims.iter().enumerate().any(|(slot, d)| {
                    let need = ctx.need(d.gdim);
                    need > 0 && d.used + batch.quota_taken(qi, slot) + need > d.limit
                })
        });
        if !snapshot.may_preempt(
            ctx.priority,
            self.profile().preemption.min_priority_gap,
            ctx.policy,
            claim_borrows,
        ) {
            return None;
        }
        let mut keys: Vec<&str> = snapshot.allocations_in_quota(block.quota);
        keys.sort_unstable();
        let mut units: Vec<Unit> = keys
            .into_iter()
            .filter_map(|key| self.unit_of(snapshot, ctx, claim_borrows, batch, key))
            .collect();
        dedup_units(&mut units);
        Self::sort_units(&mut units);
        let mut freed: Vec<(usize, usize, i128)> = Vec::new();
        let chosen = {
            let freed = std::cell::RefCell::new(&mut freed);
            Self::choose_units(
                &units,
                batch,
                |_, unit, free| {
                    let mut freed = freed.borrow_mut();
                    for key in &unit.keys {
                        for &(qi, slot, n) in snapshot.quota_contributions(key) {
                            if free {
                                freed.push((qi, slot, n));
                            } else if let Some(at) = freed.iter().position(|f| *f == (qi, slot, n))
                            {
                                freed.swap_remove(at);
                            }
                        }
                    }
                },
                |b| check_quotas(snapshot, ctx, b, &freed.borrow()).is_ok(),
            )
        };
        chosen.map(|chosen| FoundVictims { units, chosen })
    }
}
