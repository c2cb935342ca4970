//! Nominations: what a claim waiting for its preemption victims will take, held against
//! the claims that could not preempt it once placed, until it is placed (confirmed), is
//! deleted, or gives up.

use super::batching::{Batch, VictimBudget};
use super::claim_ctx::ClaimCtx;
use super::engine::{Nomination, Placing, Scheduler};
use super::outcome::Outcome;
use crate::snapshot::Snapshot;
use infraos_api::kinds::AllocatedResource;

impl Scheduler {
    /// Forgets what the scheduler keeps about a claim whose placement is confirmed
    /// (committed), or that is deleted or no longer pending: its nomination and the victims
    /// it preempted.
    pub fn forget(&mut self, claim_key: &str) {
        self.nominations.remove(claim_key);
        self.preempted.remove(claim_key);
        self.placing.remove(claim_key);
    }

    /// A placement a plan made did not become an allocation (the applier refused it, or
    /// its batch did not commit): the claim is pending again, with the nomination and the
    /// memory of victims it had before that plan, so the room its victims freed stays held
    /// for it and it does not preempt again. A no-op for a claim placed without either.
    /// True when it had something to restore.
    pub fn unplaced(&mut self, claim_key: &str) -> bool {
        let Some(placing) = self.placing.remove(claim_key) else {
            return false;
        };
        if let Some(n) = placing.nomination {
            self.nominations.entry(claim_key.to_string()).or_insert(n);
        }
        if let Some(v) = placing.preempted {
            self.preempted
                .entry(claim_key.to_string())
                .or_default()
                .extend(v);
        }
        true
    }

    /// A plan placed the claim: what it had while it waited moves aside until the placement
    /// is confirmed ([`Scheduler::forget`]) or undone ([`Scheduler::unplaced`]).
    pub(crate) fn placed(&mut self, claim_key: &str) {
        let nomination = self.nominations.remove(claim_key);
        let preempted = self.preempted.remove(claim_key);
        if nomination.is_some() || preempted.is_some() {
            self.placing.insert(
                claim_key.to_string(),
                Placing {
                    nomination,
                    preempted,
                },
            );
        }
    }

    /// The claim gave up waiting for victims (it is decided otherwise): its nomination ends,
    /// but what it preempted is remembered until it is placed.
    pub(crate) fn give_up(&mut self, claim_key: &str) {
        self.nominations.remove(claim_key);
    }

    /// Remembers the victims a claim's decision preempts.
    pub(crate) fn record_victims(&mut self, claim_key: &str, outcome: &Outcome) {
        if let Outcome::Preempt(plan) = outcome
            && !plan.victims.is_empty()
        {
            self.preempted
                .entry(claim_key.to_string())
                .or_default()
                .extend(plan.victims.iter().map(|v| v.allocation.clone()));
        }
    }

    /// Whether the claim preempted `allocation` before and has not been placed since.
    pub(crate) fn preempted_before(&self, claim_key: &str, allocation: &str) -> bool {
        self.preempted
            .get(claim_key)
            .is_some_and(|v| v.contains(allocation))
    }

    /// Records that the claim of `ctx` waits for victims: `parts` on a node, or its quota
    /// share when `parts` is empty.
    pub(crate) fn nominate(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        owner: String,
        parts: Vec<AllocatedResource>,
        mut victims: Vec<String>,
    ) {
        self.keep_stopping_victims(snapshot, ctx.key, &mut victims);
        self.nominations
            .insert(ctx.key.to_string(), nomination(ctx, &owner, parts, victims));
    }

    /// A nomination made again (each decision while the claim waits makes it anew) keeps
    /// the victims of the one it replaces that are still stopping: their room stays the
    /// claim's until they end. Without this, a decision that found the claim's quota short
    /// elsewhere (another level, another node) listed only what it found then; the claim's
    /// own victims, no longer held for it, were counted on by another preemptor, and when
    /// they ended the two of them were one room short: one gave up and preempted a second
    /// round of victims (issue 17, seen in the churn scenario).
    pub(crate) fn keep_stopping_victims(
        &self,
        snapshot: &Snapshot,
        key: &str,
        victims: &mut Vec<String>,
    ) {
        let Some(old) = self.nominations.get(key) else {
            return;
        };
        for v in &old.victims {
            if !victims.contains(v) && snapshot.allocation_meta(v).is_some_and(|m| m.preempting) {
                victims.push(v.clone());
            }
        }
    }

    /// Before deciding a claim of `owner` at `priority`: holds in the batch what every
    /// nomination (of another owner) that the claim could not preempt once placed will take
    /// (priorities below the nominee's plus `minPriorityGap`: lower and equal ones), and
    /// gives back those that no longer apply. Claims come in priority order, so each is held
    /// about once. A claim that could preempt the nominee may take its room: it would
    /// preempt it anyway. What the nominee's own victims still hold counts once: the hold is
    /// only what the nominee will take beyond it.
    pub(crate) fn sync_holds(
        &self,
        snapshot: &Snapshot,
        batch: &mut Batch,
        owner: &str,
        priority: i32,
    ) {
        if self.nominations.is_empty() && batch.held.is_empty() {
            return;
        }
        let gap = i64::from(self.profile.preemption.min_priority_gap);
        let applies =
            |n: &Nomination| n.owner != owner && i64::from(priority) < i64::from(n.priority) + gap;
        let mut i = 0;
        while i < batch.held.len() {
            if self.nominations.get(&batch.held[i].0).is_some_and(applies) {
                i += 1;
            } else {
                let (_, reservation) = batch.held.swap_remove(i);
                batch.release(reservation);
            }
        }
        for (key, n) in &self.nominations {
            if applies(n) && !batch.held.iter().any(|(k, _)| k == key) {
                if !batch.budgets.contains_key(&n.owner) {
                    // What the owner's victims (all its members', for a gang) still hold:
                    // stopping, or chosen in this batch.
                    let victims: Vec<&str> = self
                        .nominations
                        .values()
                        .filter(|m| m.owner == n.owner)
                        .flat_map(|m| m.victims.iter().map(String::as_str))
                        .filter(|v| {
                            snapshot
                                .allocation_meta(v)
                                .is_some_and(|m| m.preempting || batch.victims.contains(*v))
                        })
                        .collect();
                    let budget = VictimBudget::of(snapshot, &victims);
                    batch.budgets.insert(n.owner.clone(), budget);
                }
                let reservation = batch.hold(snapshot, n);
                batch.held.push((key.clone(), reservation));
            }
        }
        // Victims whose room is held for their preemptor: not free for this claim to wait for.
        batch.held_victims = batch
            .held
            .iter()
            .filter_map(|(_, r)| batch.budgets.get(&r.owner))
            .flat_map(|b| b.victims.iter().cloned())
            .collect();
    }
}

pub(crate) fn nomination(
    ctx: &ClaimCtx<'_>,
    owner: &str,
    parts: Vec<AllocatedResource>,
    victims: Vec<String>,
) -> Nomination {
    Nomination {
        owner: owner.to_string(),
        priority: ctx.priority,
        namespace: ctx.namespace.to_string(),
        tenant: ctx.tenant.map(str::to_string),
        parts,
        needs: ctx.needs.clone(),
        victims,
    }
}
