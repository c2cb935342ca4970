//! Gangs: every pending member is placed in one batch, all or nothing, preempting together.

use super::batching::Batch;
use super::claim_ctx::ClaimCtx;
use super::engine::{Nomination, Scheduler};
use super::nominations::nomination;
use super::outcome::{
    Explanation, GANG_INCOMPLETE, Outcome, Placement, PreemptionPlan, QUOTA_EXCEEDED,
    WAITING_FOR_PREEMPTION,
};
use super::quota::check_quotas;
use crate::governance::namespace_of;
use crate::snapshot::Snapshot;
use infraos_api::kinds::{Claim, ScoreBreakdown};

impl Scheduler {
    /// A gang: every pending member is placed in this batch, and unless at least
    /// `minMembers` (counting members already allocated) fit, none is. Members that fit
    /// nowhere may preempt, as single claims do, with the members before them in place and
    /// those members' victims gone; if the gang then fits, the victims are preempted and no
    /// member is placed yet: each waits, what it will take held against lower priorities,
    /// until the victims have ended and the gang is placed whole.
    pub(crate) fn decide_gang(
        &mut self,
        snapshot: &Snapshot,
        claims: &[(String, &Claim)],
        members: &[usize],
        batch: &mut Batch,
    ) -> Vec<(usize, Outcome)> {
        let Some(group) = claims[members[0]].1.spec.group.as_ref() else {
            return Vec::new();
        };
        let ns = namespace_of(&claims[members[0]].0);
        let gang = format!("{ns}/{}", group.name);
        let owner = format!("gang:{gang}");
        // Members being stopped (preempted, or their gang broken by a lost member) do not
        // count: the gang is placed whole again once they have ended.
        let allocated = snapshot
            .gang_allocations(ns, &group.name)
            .into_iter()
            .filter(|k| snapshot.allocation_meta(k).is_some_and(|m| !m.preempting))
            .count();
        let min = group.min_members as usize;
        if members.len() + allocated < min {
            let detail = format!(
                "gang {gang}: {} of {min} members exist ({allocated} allocated, {} pending); \
                 waiting for the rest",
                members.len() + allocated,
                members.len()
            );
            for &i in members {
                self.give_up(&claims[i].0);
            }
            return members
                .iter()
                .map(|&i| {
                    (
                        i,
                        Outcome::Unschedulable(Explanation::detailed(
                            GANG_INCOMPLETE,
                            detail.clone(),
                        )),
                    )
                })
                .collect();
        }
        let mut outcomes = Vec::with_capacity(members.len());
        let mut reserved = Vec::new();
        let placed_before = batch.placed.len();
        let mut first_failure: Option<String> = None;
        // Members that fit only by preempting, and what every fitting member would hold
        // while the gang waits for them.
        let mut preempting: Vec<crate::preemption::FoundVictims> = Vec::new();
        let mut nominations: Vec<(String, Nomination)> = Vec::new();
        for &i in members {
            let (key, claim) = &claims[i];
            let outcome = match ClaimCtx::new(self, snapshot, batch, key, claim) {
                Err(e) => Outcome::Unschedulable(e),
                Ok(ctx) => {
                    self.sync_holds(snapshot, batch, &owner, ctx.priority);
                    // Over a tenant or project quota: preempt for it, as a single claim
                    // would, with the victims tentatively gone for what follows.
                    let mut quota_victims = None;
                    let quotas = match check_quotas(snapshot, &ctx, batch, &[]) {
                        Err(block) => {
                            match self.find_quota_victims(snapshot, &ctx, batch, &block) {
                                Some(found) => {
                                    Self::take_victims(snapshot, batch, &found, true);
                                    let again = check_quotas(snapshot, &ctx, batch, &[]);
                                    quota_victims = Some((found, block.message(snapshot)));
                                    again
                                }
                                None => Err(block),
                            }
                        }
                        ok => ok,
                    };
                    let outcome = match quotas {
                        Err(block) => Outcome::Unschedulable(Explanation::detailed(
                            QUOTA_EXCEEDED,
                            block.message(snapshot),
                        )),
                        Ok(borrowing) => match self.place(snapshot, &ctx, batch) {
                            Ok(mut placement) => {
                                placement.borrowing = borrowing;
                                reserved.push(batch.reserve(snapshot, &ctx, &placement));
                                let waits_for = quota_victims
                                    .as_ref()
                                    .map(|(f, _)| f.keys())
                                    .unwrap_or_default();
                                nominations.push((
                                    key.clone(),
                                    nomination(
                                        &ctx,
                                        &owner,
                                        placement.resources.clone(),
                                        waits_for,
                                    ),
                                ));
                                match &quota_victims {
                                    Some((found, why)) => Outcome::Preempt(PreemptionPlan {
                                        node: placement.node.clone(),
                                        victims: found.victims(snapshot),
                                        explanation: Explanation::detailed(
                                            QUOTA_EXCEEDED,
                                            why.clone(),
                                        ),
                                    }),
                                    None => Outcome::Placed(placement),
                                }
                            }
                            Err(e) => match self.find_capacity_victims(snapshot, &ctx, batch, &e) {
                                Some(found) if !found.parts.is_empty() => {
                                    Self::take_victims(snapshot, batch, &found.found, true);
                                    let node = snapshot.node(found.node).name.clone();
                                    let placement = Placement {
                                        node: Some(node.clone()),
                                        resources: found.parts.clone(),
                                        score: ScoreBreakdown::default(),
                                        runner_up: None,
                                        borrowing,
                                    };
                                    reserved.push(batch.reserve(snapshot, &ctx, &placement));
                                    let mut waits_for = found.found.keys();
                                    if let Some((q, _)) = &quota_victims {
                                        waits_for.extend(q.keys());
                                    }
                                    nominations.push((
                                        key.clone(),
                                        nomination(&ctx, &owner, found.parts.clone(), waits_for),
                                    ));
                                    let mut victims = found.found.victims(snapshot);
                                    if let Some((q, _)) = &quota_victims {
                                        victims.extend(q.victims(snapshot));
                                    }
                                    preempting.push(found.found);
                                    Outcome::Preempt(PreemptionPlan {
                                        node: Some(node),
                                        victims,
                                        explanation: e,
                                    })
                                }
                                _ => Outcome::Unschedulable(e),
                            },
                        },
                    };
                    if let Some((found, _)) = quota_victims {
                        if matches!(outcome, Outcome::Unschedulable(_)) {
                            Self::take_victims(snapshot, batch, &found, false);
                        } else {
                            preempting.push(found);
                        }
                    }
                    outcome
                }
            };
            if let (Outcome::Unschedulable(e), None) = (&outcome, &first_failure) {
                first_failure = Some(format!("{key}: {}", e.message()));
            }
            outcomes.push((i, outcome));
        }
        let fit = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Placed(_) | Outcome::Preempt(_)))
            .count();
        // Nothing of this attempt stays in the batch unless the gang is placed right now.
        let whole = fit + allocated >= min;
        if !(whole && preempting.is_empty()) {
            for reservation in reserved {
                batch.release(reservation);
            }
            batch.placed.truncate(placed_before);
            for found in preempting.iter().rev() {
                Self::take_victims(snapshot, batch, found, false);
            }
        }
        if whole && preempting.is_empty() {
            for (i, outcome) in &outcomes {
                match outcome {
                    Outcome::Placed(_) => self.placed(&claims[*i].0),
                    Outcome::Preempt(_) => self.record_victims(&claims[*i].0, outcome),
                    Outcome::Unschedulable(_) => self.give_up(&claims[*i].0),
                }
            }
            return outcomes;
        }
        if whole {
            // The victims are preempted (kept out of later searches in this batch); every
            // fitting member waits for them with its place held.
            let victims: usize = preempting.iter().map(|f| f.victims(snapshot).len()).sum();
            let waiting: usize = preempting.iter().map(|f| f.waiting()).sum();
            for found in &preempting {
                for v in found.victims(snapshot) {
                    batch.victims.insert(v.allocation);
                }
            }
            for (key, mut n) in nominations {
                self.keep_stopping_victims(snapshot, &key, &mut n.victims);
                self.nominations.insert(key, n);
            }
            let detail = format!(
                "gang {gang}: waiting for {} allocation(s) to be preempted before its members \
                 are placed together{}",
                victims + waiting,
                first_failure.map(|f| format!("; {f}")).unwrap_or_default()
            );
            return outcomes
                .into_iter()
                .map(|(i, outcome)| {
                    let outcome = match outcome {
                        Outcome::Preempt(plan) if !plan.victims.is_empty() => {
                            let outcome = Outcome::Preempt(plan);
                            self.record_victims(&claims[i].0, &outcome);
                            outcome
                        }
                        Outcome::Preempt(_) | Outcome::Placed(_) => Outcome::Unschedulable(
                            Explanation::detailed(WAITING_FOR_PREEMPTION, detail.clone()),
                        ),
                        other => {
                            self.give_up(&claims[i].0);
                            other
                        }
                    };
                    (i, outcome)
                })
                .collect();
        }
        // Victims its members preempted are still stopping: what the gang lacks now (room, or
        // a quota level) they free within their grace. It waits for them with its places
        // held, as a single preemptor does, instead of giving up and preempting again a round
        // later (issue 17: a gang evicted one more victim a second while its last ones stopped).
        let stopping: usize = members
            .iter()
            .map(|&i| self.stopping_victims(snapshot, &claims[i].0))
            .sum();
        if stopping > 0 {
            let detail = format!(
                "gang {gang}: waiting for {stopping} preempted allocation(s) to end; {fit} of \
                 {min} members fit before they have{}",
                first_failure.map(|f| format!("; {f}")).unwrap_or_default()
            );
            return outcomes
                .into_iter()
                .map(|(i, _)| {
                    (
                        i,
                        Outcome::Unschedulable(Explanation::detailed(
                            WAITING_FOR_PREEMPTION,
                            detail.clone(),
                        )),
                    )
                })
                .collect();
        }
        for &i in members {
            self.give_up(&claims[i].0);
        }
        let detail = format!(
            "gang {gang}: only {fit} of {min} members fit (all or nothing, preempting what \
             they may); {}",
            first_failure.unwrap_or_default()
        );
        outcomes
            .into_iter()
            .map(|(i, _)| {
                (
                    i,
                    Outcome::Unschedulable(Explanation::detailed(GANG_INCOMPLETE, detail.clone())),
                )
            })
            .collect()
    }
}
