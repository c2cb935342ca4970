//! Placing claims: snapshot in, plan out.
//!
//! ```text
//!  for each claim of the batch, in order:
//!    compile requests against classes ──(unknown class/dimension)──► Unschedulable
//!    candidates = nodes holding the rarest node-bound class       (or pools, if none is)
//!    from a rotating start, for each candidate:
//!      filter: node registered, ready, schedulable
//!              each request: a resource on the node, else a pool, that matches the label
//!              selector, the CEL item selector, the topology (colocate) and has room
//!      score:  weighted plugins (binpack, spread) on utilization after placement
//!      stop after enough feasible candidates (sampling, as kube-scheduler does)
//!    best candidate ──► Placed (+ score breakdown, runner-up), reserved in the batch overlay
//!    none          ──► Unschedulable with per-reason rejection counts
//! ```
//! The snapshot is never mutated: claims earlier in the batch are accounted for in an overlay,
//! and the server's plan applier re-checks every placement against current state
//! ([`Snapshot::fits`]) before it commits.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeMap;
use std::sync::Arc;

use infraos_api::kinds::{
    AffinityTerm, AllocatedResource, Claim, ClassKind, ITEMS_DIMENSION, PreemptionPolicy,
    QuotaLevel, RunnerUp, ScoreBreakdown, SpreadTerm, Tier, Unsatisfiable,
};
use infraos_api::quantity::NANOS_PER_UNIT;
use infraos_api::{ItemSelector, LabelSelector, Quantity};

use crate::governance::{GovDim, namespace_of};
use crate::order::{FairOrder, Next};

use crate::plugins::{self, ScoreInput, ScorePlugin};
use crate::profile::{Profile, ProfileError};
use crate::snapshot::{ClassInfo, NodeEntry, NodeId, ResourceEntry, ResourceId, Snapshot};

/// The scheduler's decisions for one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub snapshot_revision: u64,
    pub decisions: Vec<Decision>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `namespace/name` of the claim.
    pub claim_key: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Placed(Placement),
    Unschedulable(Explanation),
    /// The claim fits once these allocations are preempted; it stays pending meanwhile.
    Preempt(PreemptionPlan),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub node: Option<String>,
    pub resources: Vec<AllocatedResource>,
    pub score: ScoreBreakdown,
    pub runner_up: Option<RunnerUp>,
    /// Placed on capacity the claim's project borrows from its tenant's quota.
    pub borrowing: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreemptionPlan {
    /// The node the claim will fit on (none when the victims free quota, not capacity).
    pub node: Option<String>,
    pub victims: Vec<Victim>,
    /// Why the claim does not fit without preempting.
    pub explanation: Explanation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    /// `namespace/name` of the allocation (and its claim).
    pub allocation: String,
    pub priority: i32,
    /// `priority 1000 > 10`, `reclaiming borrowed quota`, `gang member`.
    pub reason: String,
}

/// Why a claim is not placed: a reason code, and per filter how many candidates it rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    /// `Unschedulable`, `QuotaExceeded`, `GangIncomplete` or `WaitingForPreemption`.
    pub reason: &'static str,
    /// For reasons other than capacity: the whole message (naming the quota, level and
    /// dimension, or the gang).
    pub detail: Option<String>,
    /// `nodes` or `pools`.
    pub candidate_kind: &'static str,
    pub candidates: u64,
    pub reasons: BTreeMap<String, u64>,
}

pub const UNSCHEDULABLE: &str = "Unschedulable";
pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
pub const GANG_INCOMPLETE: &str = "GangIncomplete";
pub const WAITING_FOR_PREEMPTION: &str = "WaitingForPreemption";

impl Explanation {
    fn detailed(reason: &'static str, detail: String) -> Self {
        Explanation {
            reason,
            detail: Some(detail),
            candidate_kind: "nodes",
            ..Explanation::default()
        }
    }

    /// `0/1000 nodes are available: 620 insufficient gpu, 380 selector mismatch.`, or the
    /// detail for quota, gang and preemption reasons.
    pub fn message(&self) -> String {
        if let Some(detail) = &self.detail {
            return detail.clone();
        }
        let mut reasons: Vec<(&String, &u64)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let detail = reasons
            .iter()
            // A reason counted 0 is a note about the whole cluster ("no ipv4"), not per candidate.
            .map(|(r, n)| {
                if **n == 0 {
                    r.to_string()
                } else {
                    format!("{n} {r}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        if detail.is_empty() {
            format!(
                "0/{} {} are available.",
                self.candidates, self.candidate_kind
            )
        } else {
            format!(
                "0/{} {} are available: {detail}.",
                self.candidates, self.candidate_kind
            )
        }
    }
}

/// Rejection reasons; their text is what users read in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject<'a> {
    NodeNotRegistered,
    NodeNotReady,
    NodeUnschedulable,
    SelectorMismatch,
    TopologyMismatch,
    Insufficient(&'a str),
    NoResource(&'a str),
    PoolQuota(&'a str),
    Untolerated(&'a str),
    Affinity(&'a str),
    AntiAffinity(&'a str),
    /// Another claim's required anti-affinity keeps this one out.
    AntiAffinityOfOther,
    Spread(&'a str),
    TenantPlacement,
    Isolated,
    MissingTier(&'static str),
    WorkloadNeedsNode,
}

impl Reject<'_> {
    /// Which reason to report when several resources were rejected for different ones: the
    /// one closest to fitting.
    fn rank(&self) -> u8 {
        match self {
            Reject::Isolated => 1,
            Reject::TenantPlacement => 2,
            Reject::SelectorMismatch => 3,
            Reject::TopologyMismatch => 4,
            Reject::Insufficient(_) => 5,
            _ => 0,
        }
    }
}

fn closer<'a>(current: Option<Reject<'a>>, new: Reject<'a>) -> Option<Reject<'a>> {
    match current {
        Some(c) if c.rank() >= new.rank() => Some(c),
        _ => Some(new),
    }
}

impl std::fmt::Display for Reject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::NodeNotRegistered => f.write_str("node not registered"),
            Reject::NodeNotReady => f.write_str("node not ready"),
            Reject::NodeUnschedulable => f.write_str("node unschedulable"),
            Reject::SelectorMismatch => f.write_str("selector mismatch"),
            Reject::TopologyMismatch => f.write_str("topology mismatch"),
            Reject::Insufficient(class) => write!(f, "insufficient {class}"),
            Reject::NoResource(class) => write!(f, "no {class}"),
            Reject::PoolQuota(quota) => write!(f, "pool quota {quota} exceeded"),
            Reject::Untolerated(key) => write!(f, "untolerated taint {key}"),
            Reject::Affinity(key) => write!(f, "affinity: no matching claim in this {key}"),
            Reject::AntiAffinity(key) => write!(f, "anti-affinity: a matching claim in this {key}"),
            Reject::AntiAffinityOfOther => {
                f.write_str("anti-affinity of a claim there excludes this one")
            }
            Reject::Spread(key) => write!(f, "topology spread: this {key} would exceed maxSkew"),
            Reject::TenantPlacement => f.write_str("outside the tenant's placement"),
            Reject::Isolated => f.write_str("isolated for another tenant"),
            Reject::MissingTier(tier) => write!(f, "node lacks the {tier} tier"),
            Reject::WorkloadNeedsNode => f.write_str("a workload needs a node-bound request"),
        }
    }
}

/// Resources and items taken by claims placed earlier in the batch, indexed by resource id
/// (a dense table: lookups on the hot path are an index, not a hash). Preemption also frees
/// victims' shares here, tentatively, to see whether a claim would then fit.
#[derive(Default)]
pub(crate) struct Overlay {
    taken: Vec<Option<Box<Taken>>>,
    any: bool,
}

#[derive(Default)]
pub(crate) struct Taken {
    /// Nano-units by the class's dimension index (negative where victims free more).
    dims: Vec<i128>,
    items: Vec<usize>,
    /// Items held in the snapshot that victims would give back.
    freed: Vec<usize>,
}

impl Overlay {
    fn get(&self, id: ResourceId) -> Option<&Taken> {
        if !self.any {
            return None;
        }
        self.taken.get(id).and_then(|t| t.as_deref())
    }

    fn slot(&mut self, resource: ResourceId) -> &mut Taken {
        if self.taken.len() <= resource {
            self.taken.resize_with(resource + 1, || None);
        }
        self.any = true;
        self.taken[resource].get_or_insert_with(Box::default)
    }

    fn change_dims(taken: &mut Taken, dims: &[(usize, i128)], sign: i128) {
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

/// One compiled request of a claim.
pub(crate) struct Request<'c> {
    name: &'c str,
    /// What the request takes by interned (class, dimension), for quotas and fair share.
    gdims: Vec<(GovDim, i128)>,
    pub(crate) class: &'c ClassInfo,
    /// The class's node-less resources, looked up once per claim.
    pools: &'c [ResourceId],
    need: Need<'c>,
}

pub(crate) enum Need<'c> {
    Counted {
        amount: &'c BTreeMap<String, Quantity>,
        /// The amount by the class's dimension index, in nano-units.
        dims: Vec<(usize, i128)>,
    },
    Items {
        count: usize,
        selector: Option<&'c ItemSelector>,
    },
}

impl Need<'_> {
    fn dims(&self) -> &[(usize, i128)] {
        match self {
            Need::Counted { dims, .. } => dims,
            Need::Items { .. } => &[],
        }
    }
}

#[derive(Clone)]
struct Pick {
    request: usize,
    resource: ResourceId,
    items: Vec<usize>,
}

const MAX_PLUGINS: usize = 8;

struct Candidate {
    node: Option<NodeId>,
    picks: Vec<Pick>,
    score: f64,
    plugin_scores: [f64; MAX_PLUGINS],
}

/// Per-evaluation buffers, reused so that filtering a candidate allocates nothing.
#[derive(Default)]
struct Scratch {
    picks: Vec<Pick>,
    utilizations: Vec<f64>,
    /// What the candidate's earlier requests took: (resource, dimension index, nanos).
    dims: Vec<(ResourceId, usize, i128)>,
    items: Vec<(ResourceId, usize)>,
}

impl Scratch {
    fn clear(&mut self) {
        self.picks.clear();
        self.utilizations.clear();
        self.dims.clear();
        self.items.clear();
    }

    fn used(&self, id: ResourceId, dim: usize) -> i128 {
        self.dims
            .iter()
            .filter(|(r, d, _)| *r == id && *d == dim)
            .map(|(_, _, n)| *n)
            .sum()
    }
}

/// Memoized CEL results: selector source → (resource, stamp) → match per item.
type SelectorMemo = HashMap<Arc<str>, HashMap<(ResourceId, u64), Arc<[bool]>>>;
/// Memoized CEL results by item content: selector source → item → match. Items repeat across
/// machines (the same GPU names and attributes on every node of a model), so a new resource
/// is mostly answered without evaluating anything.
type ItemMemo = HashMap<Arc<str>, HashMap<infraos_api::Item, bool>>;
const MEMO_LIMIT: usize = 100_000;

/// The scheduler: a profile, its plugins, and the little state that makes it fair and fast
/// (where the next scan starts, memoized CEL results, reusable buffers).
pub struct Scheduler {
    profile: Profile,
    /// Every plugin, by index in `plugins::NAMES`.
    plugins: Vec<Box<dyn ScorePlugin>>,
    /// The profile's weight per plugin (0: off unless a claim weights it).
    weights: [f64; MAX_PLUGINS],
    next_start: usize,
    memo: SelectorMemo,
    item_memo: ItemMemo,
    memo_entries: usize,
    scratch: Scratch,
    /// Claims waiting for their preemption victims to end, by claim key: what each will
    /// take is held against every claim that could not preempt it once placed (lower and
    /// equal priorities) meanwhile, so they cannot take what the victims free (Kubernetes'
    /// nominated node, narrowed to the claim's own resources).
    pub(crate) nominations: HashMap<String, Nomination>,
    /// The allocations each claim has preempted since it was last placed: it never preempts
    /// one of them again before it is placed (a victim back in the room it was preempted
    /// from means the nomination did not hold; preempting it again would be a loop).
    pub(crate) preempted: HashMap<String, HashSet<String>>,
    /// Claims a plan placed that had a nomination or victims: what they had, kept until the
    /// placement is confirmed ([`Scheduler::forget`]) or undone ([`Scheduler::unplaced`]).
    /// A placement the applier refuses, or a batch that does not commit, puts the claim
    /// back to pending; dropping its nomination at plan time let a claim of its priority
    /// take the room its victims freed, and the preemptor preempted a second round of
    /// other victims (issue 17). Not held meanwhile: the placement itself holds the room.
    pub(crate) placing: HashMap<String, Placing>,
}

/// What a placed claim had while it waited, until its placement is confirmed or undone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placing {
    nomination: Option<Nomination>,
    preempted: Option<HashSet<String>>,
}

/// What a claim waiting for its preemption victims will take: its resources on the node it
/// was nominated for (preempting for capacity), or its share of the tenant and project
/// quotas it preempts for. Kept by names, not snapshot indices, which may be reused.
#[derive(Clone, Debug)]
pub(crate) struct Nomination {
    /// The claim's key, or `gang:ns/group` for a gang's members: they never hold against
    /// each other.
    pub owner: String,
    pub priority: i32,
    pub namespace: String,
    pub tenant: Option<String>,
    /// Where it will land; empty when it preempts for a quota and no node is known.
    pub parts: Vec<AllocatedResource>,
    /// The allocations whose end it waits for (those it preempted, and those already being
    /// preempted that it counted on): their room is its room, held against the same claims
    /// as the rest of the nomination.
    pub victims: Vec<String>,
    /// What the whole claim takes, by interned dimension (for a quota nomination).
    pub needs: Vec<(GovDim, i128)>,
}

impl Scheduler {
    pub fn new(profile: Profile) -> Result<Self, ProfileError> {
        let (plugins, profile_weights) = profile.build_plugins()?;
        if plugins.len() > MAX_PLUGINS {
            return Err(ProfileError::TooManyPlugins(MAX_PLUGINS));
        }
        let mut weights = [0.0; MAX_PLUGINS];
        for (w, p) in weights.iter_mut().zip(profile_weights) {
            *w = p;
        }
        Ok(Scheduler {
            profile,
            plugins,
            weights,
            next_start: 0,
            memo: HashMap::new(),
            item_memo: HashMap::new(),
            memo_entries: 0,
            scratch: Scratch::default(),
            nominations: HashMap::new(),
            preempted: HashMap::new(),
            placing: HashMap::new(),
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Where the next claim's scan over candidate nodes begins: a replay sets it to what the
    /// decision recorded.
    pub fn set_scan_start(&mut self, start: usize) {
        self.next_start = start;
    }

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
    fn placed(&mut self, claim_key: &str) {
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
    fn give_up(&mut self, claim_key: &str) {
        self.nominations.remove(claim_key);
    }

    /// Remembers the victims a claim's decision preempts.
    fn record_victims(&mut self, claim_key: &str, outcome: &Outcome) {
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
    fn keep_stopping_victims(&self, snapshot: &Snapshot, key: &str, victims: &mut Vec<String>) {
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
    fn sync_holds(&self, snapshot: &Snapshot, batch: &mut Batch, owner: &str, priority: i32) {
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
    fn decide(
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
    fn keep_waiting(&self, snapshot: &Snapshot, key: &str, outcome: Outcome) -> Outcome {
        let Outcome::Unschedulable(e) = outcome else {
            return outcome;
        };
        if e.reason == WAITING_FOR_PREEMPTION {
            return Outcome::Unschedulable(e);
        }
        let stopping = self.nominations.get(key).map_or(0, |n| {
            n.victims
                .iter()
                .filter(|v| snapshot.allocation_meta(v).is_some_and(|m| m.preempting))
                .count()
        });
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

    /// After a claim's decision: placed, it is forgotten; waiting for victims, it keeps its
    /// nomination and remembers them; otherwise it gives up its nomination.
    fn settle_nomination(&mut self, key: &str, outcome: &Outcome) {
        match outcome {
            Outcome::Placed(_) => self.placed(key),
            Outcome::Preempt(_) => self.record_victims(key, outcome),
            Outcome::Unschedulable(e) if e.reason == WAITING_FOR_PREEMPTION => {}
            Outcome::Unschedulable(_) => self.give_up(key),
        }
    }

    /// A gang: every pending member is placed in this batch, and unless at least
    /// `minMembers` (counting members already allocated) fit, none is. Members that fit
    /// nowhere may preempt, as single claims do, with the members before them in place and
    /// those members' victims gone; if the gang then fits, the victims are preempted and no
    /// member is placed yet: each waits, what it will take held against lower priorities,
    /// until the victims have ended and the gang is placed whole.
    fn decide_gang(
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

    /// Filters and scores the candidates for one claim; on success the chosen resources are
    /// returned (and not yet reserved in the batch).
    pub(crate) fn place<'c>(
        &mut self,
        snapshot: &'c Snapshot,
        ctx: &ClaimCtx<'c>,
        batch: &Batch,
    ) -> Result<Placement, Explanation> {
        let requests = &ctx.requests;
        // A claim nominated for a node goes there if it fits (kube-scheduler tries the
        // nominated node first too): that room was freed and held for it.
        if let Some(node) = self.nominated_node(snapshot, ctx.key)
            && let Ok((score, plugin_scores)) =
                self.evaluate(snapshot, Some(node), None, ctx, batch)
        {
            let best = Candidate {
                node: Some(node),
                picks: self.scratch.picks.clone(),
                score,
                plugin_scores,
            };
            return Ok(self.placement(snapshot, &ctx.weights, requests, best, None, 1));
        }
        // The rarest node-bound class decides which nodes are candidates at all.
        let anchor = requests
            .iter()
            .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
            .min_by_key(|r| snapshot.nodes_with(&r.class.name).len());
        let mut explanation = Explanation {
            reason: UNSCHEDULABLE,
            ..Explanation::default()
        };
        let mut rejections: Vec<(Reject<'_>, u64)> = Vec::new();
        let mut best: Option<Candidate> = None;
        let mut runner_up: Option<Candidate> = None;
        let mut feasible = 0usize;
        let mut scan_start = 0usize;
        // With relative plugins every feasible candidate is kept, to normalize over them.
        let mut all: Vec<Candidate> = Vec::new();
        let mut consider =
            |this: &mut Scheduler, node: Option<NodeId>, pool: Option<ResourceId>| match this
                .evaluate(snapshot, node, pool, ctx, batch)
            {
                Ok((score, plugin_scores)) => {
                    feasible += 1;
                    if ctx.relative {
                        all.push(Candidate {
                            node,
                            picks: this.scratch.picks.clone(),
                            score,
                            plugin_scores,
                        });
                        return true;
                    }
                    let beats_runner_up = runner_up.as_ref().is_none_or(|r| score > r.score);
                    if best.as_ref().is_none_or(|b| score > b.score) {
                        runner_up = best.take();
                        best = Some(Candidate {
                            node,
                            picks: this.scratch.picks.clone(),
                            score,
                            plugin_scores,
                        });
                    } else if beats_runner_up {
                        runner_up = Some(Candidate {
                            node,
                            picks: Vec::new(),
                            score,
                            plugin_scores,
                        });
                    }
                    true
                }
                Err(reason) => {
                    match rejections.iter_mut().find(|(r, _)| *r == reason) {
                        Some((_, n)) => *n += 1,
                        None => rejections.push((reason, 1)),
                    }
                    false
                }
            };

        match anchor {
            Some(anchor) => {
                let mut candidates = snapshot.nodes_with(&anchor.class.name);
                let total_nodes = snapshot.node_count().max(candidates.len());
                explanation.candidate_kind = "nodes";
                explanation.candidates = total_nodes as u64;
                let without = total_nodes.saturating_sub(candidates.len());
                if without > 0 {
                    explanation.reasons.insert(
                        Reject::NoResource(&anchor.class.name).to_string(),
                        without as u64,
                    );
                }
                // An items request needs a node with a free item of its class: when those are
                // fewer (GPUs running out), scan only them; the other nodes of the anchor
                // class are short of the items (or lack the class) and are counted so.
                let narrower = requests
                    .iter()
                    .filter(|r| matches!(r.need, Need::Items { .. }))
                    .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
                    .map(|r| (r, snapshot.nodes_with_free_items(&r.class.name)))
                    .min_by_key(|(_, free)| free.len())
                    .filter(|(_, free)| free.len() < candidates.len());
                if let Some((request, free)) = narrower {
                    let with_class = snapshot.nodes_with(&request.class.name).len();
                    let short = with_class.saturating_sub(free.len()) as u64;
                    let lacking = candidates.len().saturating_sub(with_class) as u64;
                    for (reason, n) in [
                        (Reject::Insufficient(&request.class.name), short),
                        (Reject::NoResource(&request.class.name), lacking),
                    ] {
                        if n > 0 {
                            *explanation.reasons.entry(reason.to_string()).or_insert(0) += n;
                        }
                    }
                    candidates = free;
                }
                if candidates.is_empty() {
                    return Err(explanation);
                }
                let want = self.profile.feasible_to_find(candidates.len());
                let start = self.next_start % candidates.len();
                scan_start = start;
                let mut examined = 0;
                let mut found = 0;
                for offset in 0..candidates.len() {
                    let node = candidates[(start + offset) % candidates.len()];
                    examined += 1;
                    if consider(self, Some(node), None) {
                        found += 1;
                        if found >= want {
                            break;
                        }
                    }
                }
                self.next_start = (start + examined) % candidates.len().max(1);
            }
            None => {
                // No request needs a node: anchor on the first request's pools.
                let pools = snapshot.pools_of(&requests[0].class.name);
                explanation.candidate_kind = "pools";
                explanation.candidates = pools.len() as u64;
                if pools.is_empty() {
                    explanation
                        .reasons
                        .insert(Reject::NoResource(&requests[0].class.name).to_string(), 0);
                }
                for &pool in pools {
                    consider(self, None, Some(pool));
                }
            }
        }
        for (reason, n) in rejections {
            *explanation.reasons.entry(reason.to_string()).or_insert(0) += n;
        }
        if !all.is_empty() {
            normalize(&mut all, &self.plugins, &ctx.weights);
            // The highest total wins; among equal totals, the first found (as without
            // relative plugins).
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.sort_by(|a, b| all[*b].score.total_cmp(&all[*a].score).then(a.cmp(b)));
            let mut taken: Vec<Option<Candidate>> = all.into_iter().map(Some).collect();
            best = order.first().and_then(|&i| taken[i].take());
            runner_up = order.get(1).and_then(|&i| taken[i].take());
        }

        let Some(best) = best else {
            return Err(explanation);
        };
        let mut placement =
            self.placement(snapshot, &ctx.weights, requests, best, runner_up, feasible);
        placement.score.scan_start = scan_start as u64;
        Ok(placement)
    }

    fn placement(
        &self,
        snapshot: &Snapshot,
        weights: &[f64; MAX_PLUGINS],
        requests: &[Request<'_>],
        best: Candidate,
        runner_up: Option<Candidate>,
        feasible: usize,
    ) -> Placement {
        let resources = parts_of(snapshot, requests, &best.picks);
        let plugins = self
            .plugins
            .iter()
            .enumerate()
            .filter(|(i, _)| weights[*i] > 0.0)
            .map(|(i, p)| (p.name().to_string(), round2(best.plugin_scores[i])))
            .collect();
        Placement {
            node: best.node.map(|n| snapshot.node(n).name.clone()),
            resources,
            score: ScoreBreakdown {
                total: round2(best.score),
                plugins,
                feasible: feasible as u64,
                scan_start: 0,
            },
            runner_up: runner_up.map(|r| RunnerUp {
                node: r.node.map(|n| snapshot.node(n).name.clone()),
                total: round2(r.score),
            }),
            borrowing: false,
        }
    }

    /// Filters and scores one candidate: a node, or (for pool-only claims) an anchor pool for
    /// the first request. On success the chosen resources are in `self.scratch.picks`.
    pub(crate) fn evaluate<'c>(
        &mut self,
        snapshot: &'c Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        ctx: &ClaimCtx<'c>,
        batch: &Batch,
    ) -> Result<(f64, [f64; MAX_PLUGINS]), Reject<'c>> {
        let (requests, selector, colocate) = (&ctx.requests, ctx.selector, ctx.colocate);
        let overlay = &batch.overlay;
        if !ctx.needs_tiers.is_empty() {
            let Some(n) = node else {
                return Err(Reject::WorkloadNeedsNode);
            };
            let held = snapshot.node(n).tiers;
            if let Some(tier) = ctx.needs_tiers.iter().find(|t| held & t.bit() == 0) {
                return Err(Reject::MissingTier(tier.as_str()));
            }
        }
        if let Some(n) = node {
            let entry = snapshot.node(n);
            if !entry.registered {
                return Err(Reject::NodeNotRegistered);
            }
            if !entry.ready {
                return Err(Reject::NodeNotReady);
            }
            if entry.unschedulable {
                return Err(Reject::NodeUnschedulable);
            }
            for term in &ctx.affinity {
                let ok = match entry.topology_value(term.key) {
                    Some(v) => term.domains.contains(v) || (term.domains.is_empty() && term.first),
                    None => false,
                };
                if !ok {
                    return Err(Reject::Affinity(term.key));
                }
            }
            for term in &ctx.anti_affinity {
                if entry
                    .topology_value(term.key)
                    .is_some_and(|v| term.domains.contains(v))
                {
                    return Err(Reject::AntiAffinity(term.key));
                }
            }
            for (key, domains) in &ctx.excluded_by_others {
                if entry
                    .topology_value(key)
                    .is_some_and(|v| domains.contains(v))
                {
                    return Err(Reject::AntiAffinityOfOther);
                }
            }
            for spread in &ctx.spread {
                if !spread.allows(entry.topology_value(spread.key)) {
                    return Err(Reject::Spread(spread.key));
                }
            }
            if let Some(owner) = &entry.tenant
                && ctx.tenant != Some(owner.as_str())
            {
                return Err(Reject::Isolated);
            }
            for (key, value) in &entry.taints {
                let tolerated = ctx
                    .claim
                    .spec
                    .tolerations
                    .iter()
                    .any(|t| t.tolerates(key, value.as_deref()));
                if !tolerated {
                    return Err(Reject::Untolerated(key));
                }
            }
        }
        // The topology values every pool must share: the node's, or the anchor pool's.
        let reference: Vec<Option<&str>> = if colocate.is_empty() {
            Vec::new()
        } else {
            colocate
                .iter()
                .map(|key| match (node, anchor_pool) {
                    (Some(n), _) => snapshot.node(n).labels.get(key).map(String::as_str),
                    (None, Some(p)) => snapshot.resource(p).and_then(|r| snapshot.label(r, key)),
                    (None, None) => None,
                })
                .collect()
        };
        self.scratch.clear();
        let on_node: &[ResourceId] = node.map_or(&[], |n| snapshot.node(n).resources.as_slice());
        for (index, request) in requests.iter().enumerate() {
            let pools = request.pools;
            let anchor = [anchor_pool.unwrap_or_default()];
            let (first, second): (&[ResourceId], &[ResourceId]) = match (index, anchor_pool) {
                (0, Some(_)) => (&anchor, &[]),
                _ => (on_node, pools),
            };
            let mut worst = None;
            let mut found = false;
            for &id in first.iter().chain(second) {
                let Some(entry) = snapshot.resource(id) else {
                    continue;
                };
                if entry.class_id != Some(request.class.id) {
                    continue;
                }
                if let Some(owner) = &entry.tenant
                    && ctx.tenant != Some(owner.as_str())
                {
                    worst = closer(worst, Reject::Isolated);
                    continue;
                }
                if let Some(sel) = ctx.tenant_placement
                    && !sel.matches_with(|k| snapshot.label(entry, k))
                {
                    worst = closer(worst, Reject::TenantPlacement);
                    continue;
                }
                if let Some(sel) = selector
                    && !sel.matches_with(|k| snapshot.label(entry, k))
                {
                    worst = closer(worst, Reject::SelectorMismatch);
                    continue;
                }
                if entry.node.is_none() && !colocate.is_empty() {
                    let same = colocate
                        .iter()
                        .zip(&reference)
                        .all(|(key, want)| want.is_some() && snapshot.label(entry, key) == *want);
                    if !same {
                        worst = closer(worst, Reject::TopologyMismatch);
                        continue;
                    }
                }
                if let Some(utilization) = self.fit(id, entry, request, overlay) {
                    self.scratch.utilizations.push(utilization);
                    found = true;
                    break;
                }
                worst = closer(worst, Reject::Insufficient(&request.class.name));
            }
            if !found {
                return Err(worst.unwrap_or(Reject::NoResource(&request.class.name)));
            }
            if let Some(pick) = self.scratch.picks.last_mut() {
                pick.request = index;
            }
        }
        self.check_pool_quotas(snapshot, ctx, batch)?;
        let w = &ctx.weights;
        let input = ScoreInput {
            utilizations: &self.scratch.utilizations,
            cost: if w[plugins::COST] > 0.0 {
                self.picks_cost(snapshot, ctx)
            } else {
                0.0
            },
            watts: if w[plugins::ENERGY] > 0.0 {
                self.picks_watts(snapshot, ctx)
            } else {
                0.0
            },
            distance: if w[plugins::NETWORK] > 0.0 {
                self.distance(snapshot, node, anchor_pool, ctx)
            } else {
                0.0
            },
            affinity: match node {
                Some(n) if w[plugins::AFFINITY] > 0.0 => ctx.soft_score(snapshot.node(n)),
                _ => 100.0,
            },
        };
        let mut plugin_scores = [0.0; MAX_PLUGINS];
        for (i, plugin) in self.plugins.iter().enumerate() {
            if w[i] > 0.0 {
                let v = plugin.score(&input);
                plugin_scores[i] = if plugin.relative() {
                    v
                } else {
                    v.clamp(0.0, 100.0)
                };
            }
        }
        // With relative plugins the total needs every candidate: `place` computes it.
        let score = if ctx.relative {
            0.0
        } else {
            weighted_total(w, &plugin_scores)
        };
        Ok((score, plugin_scores))
    }

    /// Whether `request` fits on resource `id`; on success records the pick (and what it
    /// takes) in the scratch buffers and returns the resource's utilization after placement
    /// (0..=1), used for scoring.
    fn fit(
        &mut self,
        id: ResourceId,
        entry: &ResourceEntry,
        request: &Request<'_>,
        overlay: &Overlay,
    ) -> Option<f64> {
        let taken = overlay.get(id);
        match &request.need {
            Need::Counted { dims, .. } => {
                let mut utilization: f64 = 0.0;
                for &(i, want) in dims {
                    let cap = *entry.cap.get(i)?;
                    let used = entry.used.get(i).copied().unwrap_or(0)
                        + taken.and_then(|t| t.dims.get(i)).copied().unwrap_or(0)
                        + self.scratch.used(id, i);
                    let after = used.checked_add(want)?;
                    if after > cap {
                        return None;
                    }
                    if cap > 0 {
                        utilization = utilization.max(after as f64 / cap as f64);
                    }
                }
                for &(i, want) in dims {
                    self.scratch.dims.push((id, i, want));
                }
                self.scratch.picks.push(Pick {
                    request: 0,
                    resource: id,
                    items: Vec::new(),
                });
                Some(utilization)
            }
            Need::Items { count, selector } => {
                let in_batch = taken.map_or(0, |t| t.items.len());
                let freed = taken.map_or(0, |t| t.freed.len());
                let in_candidate = self.scratch.items.iter().filter(|(r, _)| *r == id).count();
                if entry.items_free + freed < in_batch + in_candidate + count {
                    return None;
                }
                let matches = selector.map(|s| self.selector_matches(id, entry, s));
                let mut chosen = Vec::with_capacity(*count);
                for i in 0..entry.items.len() {
                    let held = entry.item_used[i] && !taken.is_some_and(|t| t.freed.contains(&i));
                    if held
                        || taken.is_some_and(|t| t.items.contains(&i))
                        || self.scratch.items.contains(&(id, i))
                    {
                        continue;
                    }
                    if matches.as_ref().is_some_and(|m| !m[i]) {
                        continue;
                    }
                    chosen.push(i);
                    if chosen.len() == *count {
                        break;
                    }
                }
                if chosen.len() < *count {
                    return None;
                }
                let total = entry.items.len().max(1) as f64;
                let used_after = (entry.items.len() + in_batch + in_candidate + count)
                    .saturating_sub(entry.items_free + freed)
                    as f64;
                self.scratch.items.extend(chosen.iter().map(|&i| (id, i)));
                self.scratch.picks.push(Pick {
                    request: 0,
                    resource: id,
                    items: chosen,
                });
                Some(used_after / total)
            }
        }
    }

    fn selector_matches(
        &mut self,
        id: ResourceId,
        entry: &ResourceEntry,
        selector: &ItemSelector,
    ) -> Arc<[bool]> {
        if let Some(hit) = self
            .memo
            .get(selector.source())
            .and_then(|by_resource| by_resource.get(&(id, entry.stamp)))
        {
            return Arc::clone(hit);
        }
        // An evaluation error (an attribute the item lacks) counts as no match, as in DRA.
        let by_item = match self.item_memo.get_mut(selector.source()) {
            Some(m) => m,
            None => self
                .item_memo
                .entry(Arc::from(selector.source()))
                .or_default(),
        };
        let mut evaluated = 0;
        let result: Arc<[bool]> = entry
            .items
            .iter()
            .map(|item| match by_item.get(item) {
                Some(hit) => *hit,
                None => {
                    let matched = selector.matches(item).unwrap_or(false);
                    by_item.insert(item.clone(), matched);
                    evaluated += 1;
                    matched
                }
            })
            .collect();
        self.memo_entries += evaluated;
        self.memo
            .entry(Arc::from(selector.source()))
            .or_default()
            .insert((id, entry.stamp), Arc::clone(&result));
        self.memo_entries += 1;
        result
    }
}

/// Σ(wᵢ·sᵢ)/Σwᵢ over the plugins with a weight, 0 when none has one.
fn weighted_total(weights: &[f64; MAX_PLUGINS], scores: &[f64; MAX_PLUGINS]) -> f64 {
    let (sum, total) = weights
        .iter()
        .zip(scores)
        .filter(|(w, _)| **w > 0.0)
        .fold((0.0, 0.0), |(sum, total), (w, s)| (sum + w * s, total + w));
    if total > 0.0 { sum / total } else { 0.0 }
}

/// Turns relative plugins' raw figures (lower is better) into 0–100 over the candidates,
/// then sets each candidate's weighted total.
fn normalize(
    candidates: &mut [Candidate],
    plugins: &[Box<dyn ScorePlugin>],
    weights: &[f64; MAX_PLUGINS],
) {
    for (i, plugin) in plugins.iter().enumerate() {
        if weights[i] <= 0.0 || !plugin.relative() {
            continue;
        }
        let (lo, hi) = candidates.iter().fold((f64::MAX, f64::MIN), |(lo, hi), c| {
            (lo.min(c.plugin_scores[i]), hi.max(c.plugin_scores[i]))
        });
        for c in candidates.iter_mut() {
            c.plugin_scores[i] = if hi > lo {
                100.0 * (hi - c.plugin_scores[i]) / (hi - lo)
            } else {
                100.0
            };
        }
    }
    for c in candidates.iter_mut() {
        c.score = weighted_total(weights, &c.plugin_scores);
    }
}

impl Scheduler {
    /// Price per hour of the candidate's picks.
    fn picks_cost(&self, snapshot: &Snapshot, ctx: &ClaimCtx<'_>) -> f64 {
        let mut cost = 0.0;
        for pick in &self.scratch.picks {
            let Some(entry) = snapshot.resource(pick.resource) else {
                continue;
            };
            match &ctx.requests[pick.request].need {
                Need::Counted { dims, .. } => {
                    for &(i, nanos) in dims {
                        let price = entry.prices.get(i).copied().unwrap_or(0.0);
                        cost += price * nanos as f64 / NANOS_PER_UNIT as f64;
                    }
                }
                Need::Items { count, .. } => cost += entry.item_price * *count as f64,
            }
        }
        cost
    }

    /// Watts the candidate's share of each resource draws.
    fn picks_watts(&self, snapshot: &Snapshot, ctx: &ClaimCtx<'_>) -> f64 {
        let mut watts = 0.0;
        for pick in &self.scratch.picks {
            let Some(entry) = snapshot.resource(pick.resource) else {
                continue;
            };
            if entry.watts <= 0.0 {
                continue;
            }
            let share = match &ctx.requests[pick.request].need {
                Need::Counted { dims, .. } => dims
                    .iter()
                    .map(|&(i, nanos)| {
                        let cap = entry.cap.get(i).copied().unwrap_or(0);
                        if cap > 0 {
                            nanos as f64 / cap as f64
                        } else {
                            0.0
                        }
                    })
                    .fold(0.0, f64::max),
                Need::Items { count, .. } => *count as f64 / entry.items.len().max(1) as f64,
            };
            watts += entry.watts * share;
        }
        watts
    }

    /// Distance from the claim's preferred location (`spec.scoring.near`).
    fn distance(
        &self,
        snapshot: &Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        ctx: &ClaimCtx<'_>,
    ) -> f64 {
        ctx.near
            .iter()
            .map(|(key, want)| {
                let have = match (node, anchor_pool) {
                    (Some(n), _) => snapshot.node(n).topology_value(key),
                    (None, Some(p)) => snapshot.resource(p).and_then(|r| snapshot.label(r, key)),
                    (None, None) => None,
                };
                match have {
                    Some(have) => self.profile.distance(want, have),
                    None => self.profile.default_network_distance,
                }
            })
            .sum()
    }

    /// Pool quotas depend on where the claim lands: what its picks take on the pool's
    /// resources must fit what is left of each pool quota that applies to it.
    fn check_pool_quotas<'c>(
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

/// A claim compiled for one decision: its requests, constraints and the quotas over it.
pub(crate) struct ClaimCtx<'c> {
    pub key: &'c str,
    pub namespace: &'c str,
    pub tenant: Option<&'c str>,
    pub claim: &'c Claim,
    pub requests: Vec<Request<'c>>,
    pub selector: Option<&'c LabelSelector>,
    pub colocate: &'c [String],
    /// A workload runs only on a node granted its driver's tier and the tiers it asks for.
    pub needs_tiers: Vec<Tier>,
    /// What the whole claim takes, by interned dimension.
    pub needs: Vec<(GovDim, i128)>,
    /// Indices of the pool quotas that apply to the claim's project.
    pub pool_quotas: Vec<usize>,
    pub priority: i32,
    pub policy: PreemptionPolicy,
    pub affinity: Vec<Domains<'c>>,
    pub anti_affinity: Vec<Domains<'c>>,
    /// Domains (by topology key) that allocations' own required anti-affinity terms keep
    /// this claim out of, because it matches their selectors.
    pub excluded_by_others: Vec<(String, HashSet<&'c str>)>,
    /// Required (`DoNotSchedule`) spread terms.
    pub spread: Vec<Spread<'c>>,
    /// Soft terms, for the `affinity` score plugin.
    pub preferred_affinity: Vec<Domains<'c>>,
    pub preferred_anti_affinity: Vec<Domains<'c>>,
    pub preferred_spread: Vec<Spread<'c>>,
    /// The tenant's compliance domain, which every resource must match.
    pub tenant_placement: Option<&'c LabelSelector>,
    /// Score plugin weights: the profile's, replaced by the claim's own where it names them.
    pub weights: [f64; MAX_PLUGINS],
    /// Whether a relative plugin (cost, energy, network) has a weight.
    pub relative: bool,
    /// Topology values to be near, for the network plugin.
    pub near: Vec<(&'c str, &'c str)>,
}

/// For one affinity term: the topology domains (values of `key` on nodes) where matching
/// claims of the project hold allocations, or were placed earlier in the batch.
pub(crate) struct Domains<'c> {
    pub key: &'c str,
    pub domains: HashSet<String>,
    /// No matching claim exists anywhere and the claim matches its own selector: it may go
    /// first, anywhere (as Kubernetes lets the first pod of a group through).
    pub first: bool,
}

/// For one spread term: matching claims per eligible domain (the values of `key` on the
/// ready nodes with a resource of the claim's node-bound class that its selector and its
/// tenant's placement accept, and whose taints it tolerates: Kubernetes' `Honor` policies).
pub(crate) struct Spread<'c> {
    pub key: &'c str,
    pub max_skew: u32,
    pub counts: HashMap<&'c str, u32>,
    pub min: u32,
    pub max: u32,
}

impl Spread<'_> {
    /// Whether one more matching claim in domain `value` keeps the skew within bounds.
    fn allows(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return false;
        };
        let count = self.counts.get(v).copied().unwrap_or(0);
        count < self.min + self.max_skew
    }

    /// 1 for the emptiest domains down to near 0 for the fullest; 0 without the key.
    fn preference(&self, value: Option<&str>) -> f64 {
        let Some(v) = value else {
            return 0.0;
        };
        let count = self.counts.get(v).copied().unwrap_or(0);
        1.0 - f64::from(count.saturating_sub(self.min)) / f64::from(self.max - self.min + 1)
    }
}

struct Eligibility<'a> {
    requests: &'a [Request<'a>],
    selector: Option<&'a LabelSelector>,
    tenant_placement: Option<&'a LabelSelector>,
}

fn spread<'c>(
    snapshot: &'c Snapshot,
    batch: &Batch,
    namespace: &str,
    claim: &Claim,
    eligible: &Eligibility<'_>,
    term: &'c SpreadTerm,
) -> Spread<'c> {
    let key = term.topology_key.as_str();
    let mut counts: HashMap<&'c str, u32> = HashMap::new();
    let class = eligible
        .requests
        .iter()
        .map(|r| r.class)
        .find(|c| !snapshot.nodes_with(&c.name).is_empty());
    for &n in class.map_or(&[][..], |c| snapshot.nodes_with(&c.name)) {
        let e = snapshot.node(n);
        let accepted = e.resources.iter().any(|&id| {
            snapshot.resource(id).is_some_and(|r| {
                class.is_some_and(|c| r.class_id == Some(c.id))
                    && [eligible.selector, eligible.tenant_placement]
                        .into_iter()
                        .flatten()
                        .all(|sel| sel.matches_with(|k| snapshot.label(r, k)))
            })
        });
        if !accepted {
            continue;
        }
        let tolerated = e.taints.iter().all(|(k, v)| {
            claim
                .spec
                .tolerations
                .iter()
                .any(|t| t.tolerates(k, v.as_deref()))
        });
        if e.registered
            && e.ready
            && !e.unschedulable
            && tolerated
            && let Some(v) = e.topology_value(key)
        {
            counts.entry(v).or_insert(0);
        }
    }
    let mut note = |labels: &infraos_api::Labels, node: Option<&str>| {
        if !term.selector.matches(labels) {
            return;
        }
        if let Some(c) = node
            .and_then(|n| snapshot.node_by_name(n))
            .and_then(|n| n.topology_value(key))
            .and_then(|v| counts.get_mut(v))
        {
            *c += 1;
        }
    };
    for meta in snapshot.allocations_in_project(namespace) {
        if !meta.preempting {
            note(&meta.labels, meta.node.as_deref());
        }
    }
    for placed in &batch.placed {
        if placed.namespace == namespace {
            note(&placed.labels, placed.node.as_deref());
        }
    }
    let min = counts.values().min().copied().unwrap_or(0);
    let max = counts.values().max().copied().unwrap_or(0);
    Spread {
        key,
        max_skew: term.max_skew,
        counts,
        min,
        max,
    }
}

/// The domains that claims already placed in the project keep this claim out of with their
/// own required anti-affinity terms (anti-affinity binds both ways, as in Kubernetes).
fn excluded_by_others<'c>(
    snapshot: &'c Snapshot,
    batch: &Batch,
    namespace: &str,
    claim: &Claim,
) -> Vec<(String, HashSet<&'c str>)> {
    let mut out: Vec<(String, HashSet<&'c str>)> = Vec::new();
    let mut note = |terms: &[AffinityTerm], node: Option<&str>| {
        for term in terms {
            if !term.selector.matches(&claim.metadata.labels) {
                continue;
            }
            let Some(node) = node.and_then(|n| snapshot.node_by_name(n)) else {
                continue;
            };
            let Some(value) = node.topology_value(&term.topology_key) else {
                continue;
            };
            let key = term.topology_key.as_str();
            match out.iter_mut().find(|(k, _)| k == key) {
                Some((_, set)) => {
                    set.insert(value);
                }
                None => out.push((key.to_string(), HashSet::from_iter([value]))),
            }
        }
    };
    for meta in snapshot.anti_affinity_in_project(namespace) {
        if !meta.preempting {
            note(&meta.anti_affinity, meta.node.as_deref());
        }
    }
    for placed in &batch.placed {
        if placed.namespace == namespace {
            note(&placed.anti_affinity, placed.node.as_deref());
        }
    }
    out
}

fn domains<'c>(
    snapshot: &Snapshot,
    batch: &Batch,
    namespace: &str,
    claim: &Claim,
    term: &'c AffinityTerm,
) -> Domains<'c> {
    let key = term.topology_key.as_str();
    let mut domains = HashSet::new();
    let mut any = false;
    let mut note = |labels: &infraos_api::Labels, node: Option<&str>| {
        if !term.selector.matches(labels) {
            return;
        }
        any = true;
        if let Some(v) = node
            .and_then(|n| snapshot.node_by_name(n))
            .and_then(|n| n.topology_value(key))
        {
            domains.insert(v.to_string());
        }
    };
    for meta in snapshot.allocations_in_project(namespace) {
        if !meta.preempting {
            note(&meta.labels, meta.node.as_deref());
        }
    }
    for placed in &batch.placed {
        if placed.namespace == namespace {
            note(&placed.labels, placed.node.as_deref());
        }
    }
    Domains {
        key,
        domains,
        first: !any && term.selector.matches(&claim.metadata.labels),
    }
}

impl<'c> ClaimCtx<'c> {
    /// 0–100: the share of the claim's soft terms a node honours (spread terms partly).
    fn soft_score(&self, node: &NodeEntry) -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for t in &self.preferred_affinity {
            n += 1;
            if let Some(v) = node.topology_value(t.key)
                && (t.domains.is_empty() || t.domains.contains(v))
            {
                sum += 1.0;
            }
        }
        for t in &self.preferred_anti_affinity {
            n += 1;
            if !node
                .topology_value(t.key)
                .is_some_and(|v| t.domains.contains(v))
            {
                sum += 1.0;
            }
        }
        for s in &self.preferred_spread {
            n += 1;
            sum += s.preference(node.topology_value(s.key));
        }
        if n == 0 {
            100.0
        } else {
            100.0 * sum / n as f64
        }
    }

    /// What the whole claim takes of one interned dimension.
    pub fn need(&self, gdim: GovDim) -> i128 {
        self.needs
            .iter()
            .filter(|(g, _)| *g == gdim)
            .map(|(_, n)| *n)
            .sum()
    }

    fn new(
        scheduler: &Scheduler,
        snapshot: &'c Snapshot,
        batch: &Batch,
        key: &'c str,
        claim: &'c Claim,
    ) -> Result<Self, Explanation> {
        let requests = compile(snapshot, claim).map_err(|reason| {
            let mut e = Explanation {
                reason: UNSCHEDULABLE,
                candidate_kind: "nodes",
                candidates: snapshot.node_count() as u64,
                ..Explanation::default()
            };
            e.reasons.insert(reason, e.candidates.max(1));
            e
        })?;
        let namespace = namespace_of(key);
        let tenant = snapshot.tenant_of(namespace);
        let mut needs: Vec<(GovDim, i128)> = Vec::new();
        for &(g, n) in requests.iter().flat_map(|r| r.gdims.iter()) {
            match needs.iter_mut().find(|(x, _)| *x == g) {
                Some((_, total)) => *total += n,
                None => needs.push((g, n)),
            }
        }
        let pool_quotas = snapshot
            .quotas()
            .iter()
            .enumerate()
            .filter(|(_, q)| q.pool.is_some() && q.applies_to(namespace, tenant))
            .map(|(i, _)| i)
            .collect();
        let (priority, policy) = claim_priority(snapshot, claim);
        let terms = |list: &'c [AffinityTerm], preferred: bool| -> Vec<Domains<'c>> {
            list.iter()
                .filter(|t| t.preferred == preferred)
                .map(|t| domains(snapshot, batch, namespace, claim, t))
                .collect()
        };
        let affinity = terms(&claim.spec.affinity, false);
        let anti_affinity = terms(&claim.spec.anti_affinity, false);
        let preferred_affinity = terms(&claim.spec.affinity, true);
        let preferred_anti_affinity = terms(&claim.spec.anti_affinity, true);
        let tenant_placement = tenant.and_then(|t| snapshot.tenant_placement(t));
        let (mut spread_hard, mut preferred_spread) = (Vec::new(), Vec::new());
        let eligible = Eligibility {
            requests: &requests,
            selector: claim.spec.selector.as_ref(),
            tenant_placement,
        };
        for term in &claim.spec.topology_spread {
            let s = spread(snapshot, batch, namespace, claim, &eligible, term);
            match term.when_unsatisfiable {
                Unsatisfiable::DoNotSchedule => spread_hard.push(s),
                Unsatisfiable::ScheduleAnyway => preferred_spread.push(s),
            }
        }
        let excluded = if snapshot.has_anti_affinity() || batch.any_anti_affinity() {
            excluded_by_others(snapshot, batch, namespace, claim)
        } else {
            Vec::new()
        };
        let mut weights = scheduler.weights;
        let mut near = Vec::new();
        if let Some(scoring) = &claim.spec.scoring {
            for (name, w) in &scoring.weights {
                if let Some(i) = plugins::NAMES.iter().position(|n| n == name)
                    && w.is_finite()
                    && *w >= 0.0
                {
                    weights[i] = *w;
                }
            }
            near = scoring
                .near
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
        }
        let soft = !preferred_affinity.is_empty()
            || !preferred_anti_affinity.is_empty()
            || !preferred_spread.is_empty();
        if !soft {
            weights[plugins::AFFINITY] = 0.0;
        }
        let relative = scheduler
            .plugins
            .iter()
            .enumerate()
            .any(|(i, p)| p.relative() && weights[i] > 0.0);
        Ok(ClaimCtx {
            weights,
            relative,
            near,
            affinity,
            anti_affinity,
            excluded_by_others: excluded,
            spread: spread_hard,
            preferred_affinity,
            preferred_anti_affinity,
            preferred_spread,
            tenant_placement,
            key,
            namespace,
            tenant,
            claim,
            requests,
            selector: claim.spec.selector.as_ref(),
            colocate: claim
                .spec
                .topology
                .as_ref()
                .map_or(&[], |t| t.colocate.as_slice()),
            needs_tiers: claim
                .spec
                .workload
                .as_ref()
                .map(|w| w.required_tiers())
                .unwrap_or_default(),
            needs,
            pool_quotas,
            priority,
            policy,
        })
    }
}

/// The claim's priority (as admission recorded it, else its class's) and preemption policy.
pub fn claim_priority(snapshot: &Snapshot, claim: &Claim) -> (i32, PreemptionPolicy) {
    let class = claim
        .spec
        .priority_class_name
        .as_deref()
        .and_then(|name| snapshot.priority_class(name));
    let value = claim.spec.priority.or(class.map(|c| c.value)).unwrap_or(0);
    let policy = class.map_or(PreemptionPolicy::PreemptLowerPriority, |c| c.policy);
    (value, policy)
}

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

fn nomination(
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

/// The allocation parts that picks stand for.
fn parts_of(
    snapshot: &Snapshot,
    requests: &[Request<'_>],
    picks: &[Pick],
) -> Vec<AllocatedResource> {
    picks
        .iter()
        .filter_map(|pick| {
            let entry = snapshot.resource(pick.resource)?;
            let request = &requests[pick.request];
            Some(AllocatedResource {
                request: request.name.to_string(),
                resource: entry.name.clone(),
                class: entry.class.clone(),
                amount: match &request.need {
                    Need::Counted { amount, .. } => (*amount).clone(),
                    Need::Items { .. } => BTreeMap::new(),
                },
                items: pick
                    .items
                    .iter()
                    .map(|&i| entry.items[i].name.clone())
                    .collect(),
            })
        })
        .collect()
}

/// The parts of the candidate `evaluate` accepted last.
impl Scheduler {
    pub(crate) fn scratch_parts(
        &self,
        snapshot: &Snapshot,
        ctx: &ClaimCtx<'_>,
    ) -> Vec<AllocatedResource> {
        parts_of(snapshot, &ctx.requests, &self.scratch.picks)
    }
}

/// Says, on a claim left pending, that capacity or quota was held for preempting claims of
/// higher priority while it was decided: their rejections read as insufficient capacity.
fn note_holds(outcome: Outcome, batch: &Batch) -> Outcome {
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

/// What one pick took of one resource: dimension amounts by index and item indices.
type Taking = (ResourceId, Vec<(usize, i128)>, Vec<usize>);

/// What a placed claim took in the batch, so a gang that does not fit can give it back.
pub(crate) struct Reservation {
    overlay: Vec<Taking>,
    quota: Vec<(usize, usize, i128)>,
    queue: String,
    usage: Vec<(GovDim, i128)>,
    /// A held nomination's owner, and what of its room its victims still hold (given back
    /// to the owner's budget when the hold is released).
    owner: String,
    covered: Vec<((ResourceId, usize), i128)>,
    covered_quota: Vec<((usize, usize), i128)>,
}

/// What a nominee's victims still hold, by resource dimension and by quota slot: its holds
/// take only what goes beyond it. Shared by every nomination of one owner (a gang).
#[derive(Default)]
pub(crate) struct VictimBudget {
    victims: Vec<String>,
    dims: HashMap<(ResourceId, usize), i128>,
    quota: HashMap<(usize, usize), i128>,
}

impl VictimBudget {
    fn of(snapshot: &Snapshot, victims: &[&str]) -> Self {
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
    quota_taken: Vec<Vec<i128>>,
    pub queue_taken: HashMap<String, Vec<i128>>,
    pub victims: HashSet<String>,
    /// Nominations held against the claim being decided, by the nominee's key.
    held: Vec<(String, Reservation)>,
    /// Their victims: the room they free is held, so the claim cannot count them as free.
    pub held_victims: HashSet<String>,
    /// Per nomination owner, what its victims still hold.
    budgets: HashMap<String, VictimBudget>,
    /// Claims placed so far in the batch, for affinity and spread; kept only when a claim
    /// of the batch has such terms or an allocation has anti-affinity.
    pub placed: Vec<PlacedClaim>,
    track_placed: bool,
}

impl Batch {
    fn new(snapshot: &Snapshot, track_placed: bool) -> Self {
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
    fn hold(&mut self, snapshot: &Snapshot, nomination: &Nomination) -> Reservation {
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

    fn any_anti_affinity(&self) -> bool {
        self.placed.iter().any(|p| !p.anti_affinity.is_empty())
    }

    pub fn quota_taken(&self, quota: usize, slot: usize) -> i128 {
        self.quota_taken
            .get(quota)
            .and_then(|q| q.get(slot))
            .copied()
            .unwrap_or(0)
    }

    fn reserve(
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

    fn release(&mut self, reservation: Reservation) {
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

fn compile<'c>(snapshot: &'c Snapshot, claim: &'c Claim) -> Result<Vec<Request<'c>>, String> {
    claim
        .spec
        .requests
        .iter()
        .map(|r| {
            let class = snapshot
                .class(&r.class)
                .ok_or_else(|| format!("unknown class {}", r.class))?;
            let need = match (class.kind, r.count) {
                (ClassKind::Counted, None) => {
                    let mut dims = Vec::with_capacity(r.amount.len());
                    for (dim, q) in &r.amount {
                        let i = class.dimension_index(dim).ok_or_else(|| {
                            format!("class {} has no dimension {dim}", class.name)
                        })?;
                        dims.push((i, q.nanos()));
                    }
                    Need::Counted {
                        amount: &r.amount,
                        dims,
                    }
                }
                (ClassKind::Items, Some(count)) => Need::Items {
                    count: count as usize,
                    selector: r.selector.as_ref(),
                },
                (ClassKind::Counted, Some(_)) => {
                    return Err(format!(
                        "class {} is counted: request an amount",
                        class.name
                    ));
                }
                (ClassKind::Items, None) => {
                    return Err(format!("class {} has items: request a count", class.name));
                }
            };
            let gdims = match &need {
                Need::Counted { amount, .. } => amount
                    .iter()
                    .filter_map(|(dim, q)| {
                        Some((snapshot.gov.lookup(&class.name, dim)?, q.nanos()))
                    })
                    .collect(),
                Need::Items { count, .. } => snapshot
                    .gov
                    .lookup(&class.name, ITEMS_DIMENSION)
                    .map(|g| (g, *count as i128 * NANOS_PER_UNIT))
                    .into_iter()
                    .collect(),
            };
            Ok(Request {
                gdims,
                name: r.effective_name(),
                class,
                pools: snapshot.pools_of(&class.name),
                need,
            })
        })
        .collect()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
