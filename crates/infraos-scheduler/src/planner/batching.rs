//! What earlier decisions of a batch took: the capacity overlay, quota and queue shares,
//! reservations that a gang gives back, and the holds of preemptors' nominations.

use super::claim_ctx::ClaimCtx;
use super::engine::Nomination;
use super::outcome::Placement;
use crate::governance::GovDim;
use crate::snapshot::{ResourceId, Snapshot};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use infraos_api::kinds::{AffinityTerm, QuotaLevel};

/// Resources and items taken by claims placed earlier in the batch, indexed by resource id
/// (a dense table: lookups on the hot path are an index, not a hash). Preemption also frees
/// victims' shares here, tentatively, to see whether a claim would then fit.
#[derive(Default)]
pub(crate) struct Overlay {
    pub(crate) taken: Vec<Option<Box<Taken>>>,
    pub(crate) any: bool,
}

#[derive(Default)]
pub(crate) struct Taken {
    /// Nano-units by the class's dimension index (negative where victims free more).
    pub(crate) dims: Vec<i128>,
    pub(crate) items: Vec<usize>,
    /// Items held in the snapshot that victims would give back.
    pub(crate) freed: Vec<usize>,
}

impl Overlay {
    pub(crate) fn get(&self, id: ResourceId) -> Option<&Taken> {
        if !self.any {
            return None;
        }
        self.taken.get(id).and_then(|t| t.as_deref())
    }

    pub(crate) fn slot(&mut self, resource: ResourceId) -> &mut Taken {
        if self.taken.len() <= resource {
            self.taken.resize_with(resource + 1, || None);
        }
        self.any = true;
        self.taken[resource].get_or_insert_with(Box::default)
    }

    pub(crate) fn change_dims(taken: &mut Taken, dims: &[(usize, i128)], sign: i128) {
        for &(i, nanos) in dims {
            if taken.dims.len() <= i {
                taken.dims.resize(i + 1, 0);
            }
            taken.dims[i] = taken.dims[i].saturating_add(sign * nanos);
        }
    }

    pub(crate) fn add(&mut self, resource: ResourceId, dims: &[(usize, i128)], items: &[usize]) {
        let taken = self.slot(resource);
        Self::change_dims(taken, dims, 1);
        taken.items.extend_from_slice(items);
    }

    /// Undoes [`Overlay::add`] (a gang that did not fit as a whole).
    pub(crate) fn remove(&mut self, resource: ResourceId, dims: &[(usize, i128)], items: &[usize]) {
        let taken = self.slot(resource);
        Self::change_dims(taken, dims, -1);
        for item in items {
            if let Some(at) = taken.items.iter().position(|i| i == item) {
                taken.items.swap_remove(at);
            }
        }
    }

    /// Tentatively gives back what a victim holds.
    pub(crate) fn free(&mut self, resource: ResourceId, dims: &[(usize, i128)], items: &[usize]) {
        let taken = self.slot(resource);
        Self::change_dims(taken, dims, -1);
        taken.freed.extend_from_slice(items);
    }

    pub(crate) fn unfree(&mut self, resource: ResourceId, dims: &[(usize, i128)], items: &[usize]) {
        let taken = self.slot(resource);
        Self::change_dims(taken, dims, 1);
        for item in items {
            if let Some(at) = taken.freed.iter().position(|i| i == item) {
                taken.freed.swap_remove(at);
            }
        }
    }
}

/// What one pick took of one resource: dimension amounts by index and item indices.
pub(crate) type Taking = (ResourceId, Vec<(usize, i128)>, Vec<usize>);

/// What a placed claim took in the batch, so a gang that does not fit can give it back.
pub(crate) struct Reservation {
    pub(crate) overlay: Vec<Taking>,
    pub(crate) quota: Vec<(usize, usize, i128)>,
    pub(crate) queue: String,
    pub(crate) usage: Vec<(GovDim, i128)>,
    /// A held nomination's owner, and what of its room its victims still hold (given back
    /// to the owner's budget when the hold is released).
    pub(crate) owner: String,
    pub(crate) covered: Vec<((ResourceId, usize), i128)>,
    pub(crate) covered_quota: Vec<((usize, usize), i128)>,
}

/// What a nominee's victims still hold, by resource dimension and by quota slot: its holds
/// take only what goes beyond it. Shared by every nomination of one owner (a gang).
#[derive(Default)]
pub(crate) struct VictimBudget {
    pub(crate) victims: Vec<String>,
    pub(crate) dims: HashMap<(ResourceId, usize), i128>,
    pub(crate) quota: HashMap<(usize, usize), i128>,
}

impl VictimBudget {
    pub(crate) fn of(snapshot: &Snapshot, victims: &[&str]) -> Self {
        let mut budget = VictimBudget {
            victims: victims.iter().map(|v| v.to_string()).collect(),
            ..VictimBudget::default()
        };
        for v in victims {
            for part in snapshot.allocation(v).unwrap_or_default() {
                if let Some((id, dims, _)) = snapshot.part_indices(part) {
                    for (i, n) in dims {
                        *budget.dims.entry((id, i)).or_insert(0) += n;
                    }
                }
            }
            for &(qi, slot, n) in snapshot.quota_contributions(v) {
                *budget.quota.entry((qi, slot)).or_insert(0) += n;
            }
        }
        budget
    }
}

/// A claim placed earlier in the batch, as affinity and spread see it.
pub(crate) struct PlacedClaim {
    pub namespace: String,
    pub labels: infraos_api::Labels,
    pub node: Option<String>,
    pub anti_affinity: Vec<AffinityTerm>,
}

/// What earlier decisions of the batch took: capacity (the overlay), quota, queue shares,
/// and the allocations already chosen as victims.
pub(crate) struct Batch {
    pub overlay: Overlay,
    pub(crate) quota_taken: Vec<Vec<i128>>,
    pub queue_taken: HashMap<String, Vec<i128>>,
    pub victims: HashSet<String>,
    /// Nominations held against the claim being decided, by the nominee's key.
    pub(crate) held: Vec<(String, Reservation)>,
    /// Their victims: the room they free is held, so the claim cannot count them as free.
    pub held_victims: HashSet<String>,
    /// Per nomination owner, what its victims still hold.
    pub(crate) budgets: HashMap<String, VictimBudget>,
    /// Claims placed so far in the batch, for affinity and spread; kept only when a claim
    /// of the batch has such terms or an allocation has anti-affinity.
    pub placed: Vec<PlacedClaim>,
    pub(crate) track_placed: bool,
}

impl Batch {
    pub(crate) fn new(snapshot: &Snapshot, track_placed: bool) -> Self {
        Batch {
            track_placed,
            overlay: Overlay::default(),
            quota_taken: snapshot
                .quotas()
                .iter()
                .map(|q| vec![0; q.dims.len()])
                .collect(),
            queue_taken: HashMap::new(),
            victims: HashSet::new(),
            held: Vec::new(),
            held_victims: HashSet::new(),
            budgets: HashMap::new(),
            placed: Vec::new(),
        }
    }

    /// Adds `delta` to what the batch counts as taken of a quota dimension (negative: a
    /// victim tentatively gives it back).
    pub(crate) fn adjust_quota(&mut self, quota: usize, slot: usize, delta: i128) {
        if let Some(v) = self
            .quota_taken
            .get_mut(quota)
            .and_then(|q| q.get_mut(slot))
        {
            *v += delta;
        }
    }

    /// Takes what a nomination will take: its parts' capacity and quota, or (a quota
    /// nomination without a node) its share of the tenant and project quotas over it, less
    /// what its owner's victims (still stopping, so still counted) hold there: that room is
    /// the nominee's already, and counting it twice would keep others out of room that is
    /// free once they stop.
    pub(crate) fn hold(&mut self, snapshot: &Snapshot, nomination: &Nomination) -> Reservation {
        let mut budget = self.budgets.remove(&nomination.owner).unwrap_or_default();
        let mut covered = Vec::new();
        let mut overlay = Vec::new();
        for part in &nomination.parts {
            let Some((id, dims, items)) = snapshot.part_indices(part) else {
                continue;
            };
            let dims: Vec<(usize, i128)> = dims
                .into_iter()
                .map(|(i, n)| {
                    let left = budget.dims.entry((id, i)).or_insert(0);
                    let c = (*left).min(n).max(0);
                    *left -= c;
                    covered.push(((id, i), c));
                    (i, n - c)
                })
                .collect();
            self.overlay.add(id, &dims, &items);
            overlay.push((id, dims, items));
        }
        let tenant = nomination.tenant.as_deref();
        let wanted = if nomination.parts.is_empty() {
            let mut quota = Vec::new();
            for (qi, q) in snapshot.quotas().iter().enumerate() {
                if q.level == QuotaLevel::Pool || !q.applies_to(&nomination.namespace, tenant) {
                    continue;
                }
                for (slot, d) in q.dims.iter().enumerate() {
                    let need: i128 = nomination
                        .needs
                        .iter()
                        .filter(|(g, _)| *g == d.gdim)
                        .map(|(_, n)| *n)
                        .sum();
                    if need > 0 {
                        quota.push((qi, slot, need));
                    }
                }
            }
            quota
        } else {
            snapshot
                .contributions(&nomination.namespace, tenant, &nomination.parts)
                .0
        };
        let mut covered_quota = Vec::new();
        let quota: Vec<(usize, usize, i128)> = wanted
            .into_iter()
            .map(|(qi, slot, n)| {
                let left = budget.quota.entry((qi, slot)).or_insert(0);
                let c = (*left).min(n).max(0);
                *left -= c;
                covered_quota.push(((qi, slot), c));
                (qi, slot, n - c)
            })
            .collect();
        for &(qi, slot, n) in &quota {
            self.adjust_quota(qi, slot, n);
        }
        self.budgets.insert(nomination.owner.clone(), budget);
        Reservation {
            overlay,
            quota,
            queue: String::new(),
            usage: Vec::new(),
            owner: nomination.owner.clone(),
            covered,
            covered_quota,
        }
    }

    pub(crate) fn any_anti_affinity(&self) -> bool {
        self.placed.iter().any(|p| !p.anti_affinity.is_empty())
    }

    pub fn quota_taken(&self, quota: usize, slot: usize) -> i128 {
        self.quota_taken
            .get(quota)
            .and_then(|q| q.get(slot))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn reserve(
        &mut self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
        placement: &Placement,
    ) -> Reservation {
        let mut overlay = Vec::new();
        for part in &placement.resources {
            let Some(id) = snapshot.resource_id(&part.resource) else {
                continue;
            };
            let Some(request) = ctx
                .requests
                .iter()
                .find(|r| r.name == part.request.as_str())
            else {
                continue;
            };
            let items: Vec<usize> = snapshot.resource(id).map_or_else(Vec::new, |e| {
                part.items
                    .iter()
                    .filter_map(|n| e.item_index.get(n).copied())
                    .collect()
            });
            let dims = request.need.dims().to_vec();
            self.overlay.add(id, &dims, &items);
            overlay.push((id, dims, items));
        }
        let (quota, usage) =
            snapshot.contributions(ctx.namespace, ctx.tenant, &placement.resources);
        for &(qi, slot, n) in &quota {
            if let Some(v) = self.quota_taken.get_mut(qi).and_then(|q| q.get_mut(slot)) {
                *v += n;
            }
        }
        if self.track_placed && !ctx.claim.metadata.labels.is_empty() {
            self.placed.push(PlacedClaim {
                namespace: ctx.namespace.to_string(),
                labels: ctx.claim.metadata.labels.clone(),
                node: placement.node.clone(),
                anti_affinity: ctx
                    .claim
                    .spec
                    .anti_affinity
                    .iter()
                    .filter(|t| !t.preferred)
                    .cloned()
                    .collect(),
            });
        }
        let queue = ctx.claim.spec.queue_name();
        let taken = match self.queue_taken.get_mut(queue) {
            Some(t) => t,
            None => self.queue_taken.entry(queue.to_string()).or_default(),
        };
        for &(g, n) in &usage {
            if taken.len() <= g as usize {
                taken.resize(g as usize + 1, 0);
            }
            taken[g as usize] += n;
        }
        Reservation {
            overlay,
            quota,
            queue: queue.to_string(),
            usage,
            owner: String::new(),
            covered: Vec::new(),
            covered_quota: Vec::new(),
        }
    }

    pub(crate) fn release(&mut self, reservation: Reservation) {
        for (id, dims, items) in &reservation.overlay {
            self.overlay.remove(*id, dims, items);
        }
        if let Some(budget) = self.budgets.get_mut(&reservation.owner) {
            for (at, c) in reservation.covered {
                *budget.dims.entry(at).or_insert(0) += c;
            }
            for (at, c) in reservation.covered_quota {
                *budget.quota.entry(at).or_insert(0) += c;
            }
        }
        for (qi, slot, n) in reservation.quota {
            if let Some(v) = self.quota_taken.get_mut(qi).and_then(|q| q.get_mut(slot)) {
                *v -= n;
            }
        }
        if let Some(taken) = self.queue_taken.get_mut(&reservation.queue) {
            for (g, n) in reservation.usage {
                if let Some(v) = taken.get_mut(g as usize) {
                    *v -= n;
                }
            }
        }
    }
}
