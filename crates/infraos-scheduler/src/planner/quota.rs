//! Quotas: tenant and project quotas checked before placement (they do not depend on it),
//! pool quotas checked per candidate.

use super::batching::Batch;
use super::claim_ctx::ClaimCtx;
use super::engine::Scheduler;
use super::explanation::Reject;
use crate::snapshot::Snapshot;
use infraos_api::Quantity;
use infraos_api::kinds::QuotaLevel;

/// A tenant or project quota a claim would exceed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuotaBlock {
    pub quota: usize,
    pub slot: usize,
    /// Usage after the claim, in nano-units.
    pub after: i128,
}

impl QuotaBlock {
    /// `quota team (project ml) exceeded: compute/cpu would be 70 of 64 (+8 borrowable)`.
    pub fn message(&self, snapshot: &Snapshot) -> String {
        let q = &snapshot.quotas()[self.quota];
        let d = &q.dims[self.slot];
        let borrow = if d.borrow > 0 {
            format!(" (+{} borrowable)", Quantity::from_nanos(d.borrow))
        } else {
            String::new()
        };
        format!(
            "quota {} ({} level: {}) exceeded: {}/{} would be {} of {}{borrow}",
            q.name,
            q.level.as_str(),
            q.scope,
            d.class,
            d.dim,
            Quantity::from_nanos(self.after),
            Quantity::from_nanos(d.limit),
        )
    }
}

/// The tenant and project quotas (which do not depend on placement): `Ok(borrowing)` when the
/// claim fits them, borrowing when it goes beyond a project's limits into its borrowing
/// limit. `freed` gives back, per (quota, slot), what tentative victims hold.
pub(crate) fn check_quotas(
    snapshot: &Snapshot,
    ctx: &ClaimCtx<'_>,
    batch: &Batch,
    freed: &[(usize, usize, i128)],
) -> Result<bool, QuotaBlock> {
    let mut borrowing = false;
    for (qi, q) in snapshot.quotas().iter().enumerate() {
        if q.level == QuotaLevel::Pool || !q.applies_to(ctx.namespace, ctx.tenant) {
            continue;
        }
        for (slot, d) in q.dims.iter().enumerate() {
            let need = ctx.need(d.gdim);
            if need == 0 {
                continue;
            }
            let given_back: i128 = freed
                .iter()
                .filter(|(fq, fs, _)| *fq == qi && *fs == slot)
                .map(|(_, _, n)| *n)
                .sum();
            let after = d.used + batch.quota_taken(qi, slot) - given_back + need;
            if after > d.limit + d.borrow {
                return Err(QuotaBlock {
                    quota: qi,
                    slot,
                    after,
                });
            }
            if after > d.limit {
                borrowing = true;
            }
        }
    }
    Ok(borrowing)
}

impl Scheduler {
    /// Pool quotas depend on where the claim lands: what its picks take on the pool's
    /// resources must fit what is left of each pool quota that applies to it.
    pub(crate) fn check_pool_quotas<'c>(
        &self,
        snapshot: &'c Snapshot,
        ctx: &ClaimCtx<'c>,
        batch: &Batch,
    ) -> Result<(), Reject<'c>> {
        for &qi in &ctx.pool_quotas {
            let quota = &snapshot.quotas()[qi];
            let Some(pool) = &quota.pool else {
                continue;
            };
            let in_pool: Vec<bool> = self
                .scratch
                .picks
                .iter()
                .map(|pick| {
                    snapshot
                        .resource(pick.resource)
                        .is_some_and(|r| pool.matches_with(|k| snapshot.label(r, k)))
                })
                .collect();
            if !in_pool.iter().any(|x| *x) {
                continue;
            }
            for (slot, d) in quota.dims.iter().enumerate() {
                let add: i128 = self
                    .scratch
                    .picks
                    .iter()
                    .zip(&in_pool)
                    .filter(|(_, inside)| **inside)
                    .flat_map(|(pick, _)| ctx.requests[pick.request].gdims.iter())
                    .filter(|(g, _)| *g == d.gdim)
                    .map(|(_, n)| *n)
                    .sum();
                if add > 0 && d.used + batch.quota_taken(qi, slot) + add > d.limit + d.borrow {
                    return Err(Reject::PoolQuota(&quota.name));
                }
            }
        }
        Ok(())
    }
}
