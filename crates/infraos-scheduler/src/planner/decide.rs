//! The plan stage: claims in fair order, each decided by quotas (pre-filter), placement
//! (filter, score) and, if it fits nowhere and may preempt, preemption (post-filter).

use super::batching::Batch;
use super::claim_ctx::ClaimCtx;
use super::engine::{MEMO_LIMIT, Scheduler};
use super::outcome::{
    Decision, Explanation, Outcome, Plan, QUOTA_EXCEEDED, WAITING_FOR_PREEMPTION,
};
use super::quota::check_quotas;
use crate::order::{FairOrder, Next};
use crate::snapshot::Snapshot;
use infraos_api::kinds::Claim;

impl Scheduler {
    /// Decides every claim on `snapshot`, in fair order, without aging or a limit (what the
    /// tests and the core benchmark use).
    pub fn plan(&mut self, snapshot: &Snapshot, claims: &[(String, &Claim)]) -> Plan {
        self.plan_at(snapshot, claims, 0, usize::MAX)
    }

    /// Decides up to `limit` of `claims` (a gang counts whole) at time `now_ms`, taking them
    /// in fair order ([`FairOrder`]): by priority, then by the weighted dominant-resource
    /// share of their queue (aged by waiting time), then by age. Claims left undecided wait
    /// for the next batch.
    pub fn plan_at(
        &mut self,
        snapshot: &Snapshot,
        claims: &[(String, &Claim)],
        now_ms: i64,
        limit: usize,
    ) -> Plan {
        if self.memo_entries > MEMO_LIMIT {
            self.memo.clear();
            self.item_memo.clear();
            self.memo_entries = 0;
        }
        let affinity = claims.iter().any(|(_, c)| {
            !c.spec.affinity.is_empty()
                || !c.spec.anti_affinity.is_empty()
                || !c.spec.topology_spread.is_empty()
        }) || snapshot.has_anti_affinity();
        // A claim placed by an earlier plan and decided again: that placement did not
        // stick, whether or not the caller said so (`unplaced`).
        if !self.placing.is_empty() {
            for (key, _) in claims {
                let _ = self.unplaced(key);
            }
        }
        let mut batch = Batch::new(snapshot, affinity);
        let mut order = FairOrder::new(snapshot, claims, now_ms, &self.profile);
        let mut decisions = Vec::with_capacity(claims.len().min(limit));
        // Claims that would borrow quota wait until every claim of their priority that stays
        // within its own limits has been decided (as Kueue orders them): otherwise a borrower
        // takes what a claim within its limits then reclaims by preemption, over and over.
        let mut deferred: Vec<usize> = Vec::new();
        let mut deferred_priority = None;
        while decisions.len() < limit {
            let next = order.next(snapshot, &batch);
            let priority = order.last_priority();
            if !deferred.is_empty() && (next.is_none() || priority != deferred_priority) {
                for i in std::mem::take(&mut deferred) {
                    let (key, claim) = &claims[i];
                    if let Some(outcome) = self.decide(snapshot, key, claim, &mut batch, false) {
                        decisions.push(Decision {
                            claim_key: key.clone(),
                            outcome,
                        });
                    }
                }
            }
            match next {
                None => break,
                Some(Next::One(i)) => {
                    let (key, claim) = &claims[i];
                    match self.decide(snapshot, key, claim, &mut batch, true) {
                        Some(outcome) => decisions.push(Decision {
                            claim_key: key.clone(),
                            outcome,
                        }),
                        None => {
                            deferred.push(i);
                            deferred_priority = priority;
                        }
                    }
                }
                Some(Next::Gang(members)) => {
                    for (i, outcome) in self.decide_gang(snapshot, claims, &members, &mut batch) {
                        decisions.push(Decision {
                            claim_key: claims[i].0.clone(),
                            outcome,
                        });
                    }
                }
            }
        }
        Plan {
            snapshot_revision: snapshot.revision(),
            decisions,
        }
    }

    /// One claim: quotas (pre-filter), then placement (filter, score), then, if it fits
    /// nowhere and may preempt, preemption (post-filter). `None`: the claim would borrow
    /// quota and `may_defer` lets it wait for the rest of its priority level.
    pub(crate) fn decide(
        &mut self,
        snapshot: &Snapshot,
        key: &str,
        claim: &Claim,
        batch: &mut Batch,
        may_defer: bool,
    ) -> Option<Outcome> {
        let ctx = match ClaimCtx::new(self, snapshot, batch, key, claim) {
            Ok(ctx) => ctx,
            Err(e) => return Some(Outcome::Unschedulable(e)),
        };
        self.sync_holds(snapshot, batch, key, ctx.priority);
        let borrowing = match check_quotas(snapshot, &ctx, batch, &[]) {
            Ok(true) if may_defer => return None,
            Ok(borrowing) => borrowing,
            Err(block) => {
                let explanation = Explanation::detailed(QUOTA_EXCEEDED, block.message(snapshot));
                let outcome = self.preempt_for_quota(snapshot, &ctx, batch, block, explanation);
                let outcome = self.keep_waiting(snapshot, key, outcome);
                self.settle_nomination(key, &outcome);
                return Some(note_holds(outcome, batch));
            }
        };
        let outcome = match self.place(snapshot, &ctx, batch) {
            Ok(mut placement) => {
                placement.borrowing = borrowing;
                batch.reserve(snapshot, &ctx, &placement);
                Outcome::Placed(placement)
            }
            Err(explanation) => self.preempt_for_capacity(snapshot, &ctx, batch, explanation),
        };
        let outcome = self.keep_waiting(snapshot, key, outcome);
        self.settle_nomination(key, &outcome);
        Some(note_holds(outcome, batch))
    }

    /// A preemptor whose victims are still stopping does not give up: a decision that finds
    /// no room or no quota for it now counts what they hold as taken, and they free it
    /// within their grace. It waits with its nomination, and gives up only if it still does
    /// not fit once they have ended. Before, a preemptor decided again between preempting
    /// and its victims' end (any allocation ending wakes it) could find itself short, for
    /// instance of a quota level its preemption did not cover, and give up: its room was
    /// then anyone's, and it preempted a second round of other victims (issue 17).
    pub(crate) fn keep_waiting(&self, snapshot: &Snapshot, key: &str, outcome: Outcome) -> Outcome {
        let Outcome::Unschedulable(e) = outcome else {
            return outcome;
        };
        if e.reason == WAITING_FOR_PREEMPTION {
            return Outcome::Unschedulable(e);
        }
        let stopping = self.stopping_victims(snapshot, key);
        if stopping == 0 {
            return Outcome::Unschedulable(e);
        }
        Outcome::Unschedulable(Explanation {
            reason: WAITING_FOR_PREEMPTION,
            detail: Some(format!(
                "waiting for {stopping} preempted allocation(s) to end; {}",
                e.message()
            )),
            ..e
        })
    }

    /// How many of the victims claim `key` preempted are still stopping.
    pub(crate) fn stopping_victims(&self, snapshot: &Snapshot, key: &str) -> usize {
        self.nominations.get(key).map_or(0, |n| {
            n.victims
                .iter()
                .filter(|v| snapshot.allocation_meta(v).is_some_and(|m| m.preempting))
                .count()
        })
    }

    /// After a claim's decision: placed, it is forgotten; waiting for victims, it keeps its
    /// nomination and remembers them; otherwise it gives up its nomination.
    pub(crate) fn settle_nomination(&mut self, key: &str, outcome: &Outcome) {
        match outcome {
            Outcome::Placed(_) => self.placed(key),
            Outcome::Preempt(_) => self.record_victims(key, outcome),
            Outcome::Unschedulable(e) if e.reason == WAITING_FOR_PREEMPTION => {}
            Outcome::Unschedulable(_) => self.give_up(key),
        }
    }
}

/// Says, on a claim left pending, that capacity or quota was held for preempting claims of
/// higher priority while it was decided: their rejections read as insufficient capacity.
pub(crate) fn note_holds(outcome: Outcome, batch: &Batch) -> Outcome {
    match outcome {
        Outcome::Unschedulable(mut e) if !batch.held.is_empty() && e.detail.is_none() => {
            e.reasons.insert(
                format!(
                    "capacity held for {} preempting claim(s) of higher priority",
                    batch.held.len()
                ),
                0,
            );
            Outcome::Unschedulable(e)
        }
        Outcome::Unschedulable(mut e) if !batch.held.is_empty() => {
            if let Some(detail) = e.detail.as_mut() {
                detail.push_str(&format!(
                    " (quota or capacity held for {} preempting claim(s) of higher priority)",
                    batch.held.len()
                ));
            }
            Outcome::Unschedulable(e)
        }
        other => other,
    }
}
