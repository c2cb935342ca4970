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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use infraos_api::kinds::{AllocatedResource, Claim, ClassKind, RunnerUp, ScoreBreakdown};
use infraos_api::{ItemSelector, LabelSelector, Quantity};

use crate::plugins::ScoreInput;
use crate::profile::{Profile, ProfileError, WeightedPlugins};
use crate::snapshot::{ClassInfo, NodeId, ResourceEntry, ResourceId, Snapshot};

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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub node: Option<String>,
    pub resources: Vec<AllocatedResource>,
    pub score: ScoreBreakdown,
    pub runner_up: Option<RunnerUp>,
}

/// Why a claim fits nowhere: how many candidates each filter rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    /// `nodes` or `pools`.
    pub candidate_kind: &'static str,
    pub candidates: u64,
    pub reasons: BTreeMap<String, u64>,
}

impl Explanation {
    /// `0/1000 nodes are available: 620 insufficient gpu, 380 selector mismatch.`
    pub fn message(&self) -> String {
        let mut reasons: Vec<(&String, &u64)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let detail = reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
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

    fn reject(&mut self, reason: Reject<'_>) {
        *self.reasons.entry(reason.to_string()).or_insert(0) += 1;
    }
}

/// Rejection reasons; their text is what users read in explanations.
#[derive(Clone, Copy, Debug)]
enum Reject<'a> {
    NodeNotRegistered,
    NodeNotReady,
    NodeUnschedulable,
    SelectorMismatch,
    TopologyMismatch,
    Insufficient(&'a str),
    NoResource(&'a str),
}

impl Reject<'_> {
    /// Which reason to report when several resources were rejected for different ones: the
    /// one closest to fitting.
    fn rank(&self) -> u8 {
        match self {
            Reject::SelectorMismatch => 1,
            Reject::TopologyMismatch => 2,
            Reject::Insufficient(_) => 3,
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
        }
    }
}

/// Resources and items taken by claims placed earlier in the batch (or tentatively by the
/// candidate under evaluation).
#[derive(Default)]
struct Overlay {
    dims: HashMap<(ResourceId, String), Quantity>,
    items: HashMap<ResourceId, Vec<usize>>,
}

impl Overlay {
    fn used(&self, id: ResourceId, dim: &str) -> Quantity {
        if self.dims.is_empty() {
            return Quantity::ZERO;
        }
        self.dims
            .get(&(id, dim.to_string()))
            .copied()
            .unwrap_or(Quantity::ZERO)
    }

    fn item_taken(&self, id: ResourceId, item: usize) -> bool {
        self.items.get(&id).is_some_and(|v| v.contains(&item))
    }

    fn items_taken(&self, id: ResourceId) -> usize {
        self.items.get(&id).map_or(0, Vec::len)
    }

    fn add(&mut self, pick: &Pick, amount: Option<&BTreeMap<String, Quantity>>) {
        if let Some(amount) = amount {
            for (dim, q) in amount {
                let slot = self
                    .dims
                    .entry((pick.resource, dim.clone()))
                    .or_insert(Quantity::ZERO);
                *slot = slot.checked_add(*q).unwrap_or(*slot);
            }
        }
        if !pick.items.is_empty() {
            self.items
                .entry(pick.resource)
                .or_default()
                .extend(pick.items.iter().copied());
        }
    }
}

/// One compiled request of a claim.
struct Request<'c> {
    name: &'c str,
    class: &'c ClassInfo,
    need: Need<'c>,
}

enum Need<'c> {
    Counted(&'c BTreeMap<String, Quantity>),
    Items {
        count: usize,
        selector: Option<&'c ItemSelector>,
    },
}

struct Pick {
    request: usize,
    resource: ResourceId,
    items: Vec<usize>,
}

struct Candidate {
    node: Option<NodeId>,
    picks: Vec<Pick>,
    score: f64,
    plugin_scores: Vec<f64>,
}

type SelectorMemo = HashMap<(ResourceId, u64, Arc<str>), Arc<[bool]>>;
const MEMO_LIMIT: usize = 200_000;

/// The scheduler: a profile, its plugins, and the little state that makes it fair and fast
/// (where the next scan starts, memoized CEL results).
pub struct Scheduler {
    profile: Profile,
    plugins: WeightedPlugins,
    next_start: usize,
    memo: SelectorMemo,
}

impl Scheduler {
    pub fn new(profile: Profile) -> Result<Self, ProfileError> {
        let plugins = profile.build_plugins()?;
        Ok(Scheduler {
            profile,
            plugins,
            next_start: 0,
            memo: HashMap::new(),
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Decides a placement for each claim, in order, on `snapshot`.
    pub fn plan(&mut self, snapshot: &Snapshot, claims: &[(String, &Claim)]) -> Plan {
        if self.memo.len() > MEMO_LIMIT {
            self.memo.clear();
        }
        let mut overlay = Overlay::default();
        let decisions = claims
            .iter()
            .map(|(key, claim)| Decision {
                claim_key: key.clone(),
                outcome: self.place(snapshot, claim, &mut overlay),
            })
            .collect();
        Plan {
            snapshot_revision: snapshot.revision(),
            decisions,
        }
    }

    fn place(&mut self, snapshot: &Snapshot, claim: &Claim, overlay: &mut Overlay) -> Outcome {
        let requests = match compile(snapshot, claim) {
            Ok(r) => r,
            Err(reason) => {
                let mut e = Explanation {
                    candidate_kind: "nodes",
                    candidates: snapshot.node_count() as u64,
                    reasons: BTreeMap::new(),
                };
                e.reasons.insert(reason, e.candidates.max(1));
                return Outcome::Unschedulable(e);
            }
        };
        let selector = claim.spec.selector.as_ref();
        let colocate: &[String] = claim
            .spec
            .topology
            .as_ref()
            .map_or(&[], |t| t.colocate.as_slice());

        // The rarest node-bound class decides which nodes are candidates at all.
        let anchor = requests
            .iter()
            .filter(|r| !snapshot.nodes_with(&r.class.name).is_empty())
            .min_by_key(|r| snapshot.nodes_with(&r.class.name).len());
        let mut explanation = Explanation::default();
        let mut best: Option<Candidate> = None;
        let mut runner_up: Option<Candidate> = None;
        let mut feasible = 0usize;

        match anchor {
            Some(anchor) => {
                let candidates = snapshot.nodes_with(&anchor.class.name);
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
                let want = self.profile.feasible_to_find(candidates.len());
                let start = self.next_start % candidates.len();
                let mut examined = 0;
                for offset in 0..candidates.len() {
                    let node = candidates[(start + offset) % candidates.len()];
                    examined += 1;
                    match self.evaluate(
                        snapshot,
                        Some(node),
                        None,
                        &requests,
                        selector,
                        colocate,
                        overlay,
                    ) {
                        Ok(candidate) => {
                            feasible += 1;
                            keep_best(&mut best, &mut runner_up, candidate);
                            if feasible >= want {
                                break;
                            }
                        }
                        Err(reason) => explanation.reject(reason),
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
                    explanation.candidates = 0;
                    explanation
                        .reasons
                        .insert(Reject::NoResource(&requests[0].class.name).to_string(), 0);
                }
                for &pool in pools {
                    match self.evaluate(
                        snapshot,
                        None,
                        Some(pool),
                        &requests,
                        selector,
                        colocate,
                        overlay,
                    ) {
                        Ok(candidate) => {
                            feasible += 1;
                            keep_best(&mut best, &mut runner_up, candidate);
                        }
                        Err(reason) => explanation.reject(reason),
                    }
                }
            }
        }

        let Some(best) = best else {
            return Outcome::Unschedulable(explanation);
        };
        for pick in &best.picks {
            let amount = match &requests[pick.request].need {
                Need::Counted(a) => Some(*a),
                Need::Items { .. } => None,
            };
            overlay.add(pick, amount);
        }
        Outcome::Placed(self.placement(snapshot, &requests, best, runner_up, feasible))
    }

    fn placement(
        &self,
        snapshot: &Snapshot,
        requests: &[Request<'_>],
        best: Candidate,
        runner_up: Option<Candidate>,
        feasible: usize,
    ) -> Placement {
        let resources = best
            .picks
            .iter()
            .filter_map(|pick| {
                let entry = snapshot.resource(pick.resource)?;
                let request = &requests[pick.request];
                Some(AllocatedResource {
                    request: request.name.to_string(),
                    resource: entry.name.clone(),
                    class: entry.class.clone(),
                    amount: match &request.need {
                        Need::Counted(a) => (*a).clone(),
                        Need::Items { .. } => BTreeMap::new(),
                    },
                    items: pick
                        .items
                        .iter()
                        .map(|&i| entry.items[i].name.clone())
                        .collect(),
                })
            })
            .collect();
        let plugins = self
            .plugins
            .iter()
            .zip(&best.plugin_scores)
            .map(|((p, _), s)| (p.name().to_string(), round2(*s)))
            .collect();
        Placement {
            node: best.node.map(|n| snapshot.node(n).name.clone()),
            resources,
            score: ScoreBreakdown {
                total: round2(best.score),
                plugins,
                feasible: feasible as u64,
            },
            runner_up: runner_up.map(|r| RunnerUp {
                node: r.node.map(|n| snapshot.node(n).name.clone()),
                total: round2(r.score),
            }),
        }
    }

    /// Filters and scores one candidate: a node, or (for pool-only claims) an anchor pool for
    /// the first request.
    #[allow(clippy::too_many_arguments)]
    fn evaluate<'c>(
        &mut self,
        snapshot: &Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        requests: &[Request<'c>],
        selector: Option<&LabelSelector>,
        colocate: &[String],
        overlay: &Overlay,
    ) -> Result<Candidate, Reject<'c>> {
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
        }
        // The topology values every resource must share: the node's, or the anchor pool's.
        let reference: Vec<Option<String>> = colocate
            .iter()
            .map(|key| match (node, anchor_pool) {
                (Some(n), _) => snapshot.node(n).labels.get(key).cloned(),
                (None, Some(p)) => snapshot
                    .resource(p)
                    .and_then(|r| snapshot.label(r, key).map(str::to_string)),
                (None, None) => None,
            })
            .collect();
        let mut tentative = TentativeUse::default();
        let mut picks = Vec::with_capacity(requests.len());
        let mut utilizations = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let on_node: &[ResourceId] =
                node.map_or(&[], |n| snapshot.node(n).resources.as_slice());
            let pools = snapshot.pools_of(&request.class.name);
            let candidates: Box<dyn Iterator<Item = ResourceId>> = match (index, anchor_pool) {
                (0, Some(p)) => Box::new(std::iter::once(p)),
                _ => Box::new(on_node.iter().copied().chain(pools.iter().copied())),
            };
            let mut worst = None;
            let mut found = None;
            for id in candidates {
                let Some(entry) = snapshot.resource(id) else {
                    continue;
                };
                if entry.class != request.class.name {
                    continue;
                }
                if let Some(sel) = selector
                    && !sel.matches_with(|k| snapshot.label(entry, k))
                {
                    worst = closer(worst, Reject::SelectorMismatch);
                    continue;
                }
                if entry.node.is_none() && !colocate.is_empty() {
                    let same = colocate.iter().zip(&reference).all(|(key, want)| {
                        want.is_some() && snapshot.label(entry, key) == want.as_deref()
                    });
                    if !same {
                        worst = closer(worst, Reject::TopologyMismatch);
                        continue;
                    }
                }
                match self.fit(snapshot, id, entry, request, overlay, &tentative) {
                    Some((items, utilization)) => {
                        found = Some(Pick {
                            request: index,
                            resource: id,
                            items,
                        });
                        utilizations.push(utilization);
                        break;
                    }
                    None => worst = closer(worst, Reject::Insufficient(&request.class.name)),
                }
            }
            let Some(pick) = found else {
                return Err(worst.unwrap_or(Reject::NoResource(&request.class.name)));
            };
            tentative.add(&pick, request);
            picks.push(pick);
        }
        let input = ScoreInput {
            utilizations: &utilizations,
        };
        let plugin_scores: Vec<f64> = self
            .plugins
            .iter()
            .map(|(p, _)| p.score(&input).clamp(0.0, 100.0))
            .collect();
        let weight_sum: f64 = self.plugins.iter().map(|(_, w)| *w).sum();
        let score = if weight_sum > 0.0 {
            self.plugins
                .iter()
                .zip(&plugin_scores)
                .map(|((_, w), s)| w * s)
                .sum::<f64>()
                / weight_sum
        } else {
            0.0
        };
        Ok(Candidate {
            node,
            picks,
            score,
            plugin_scores,
        })
    }

    /// Whether `request` fits on resource `id`; returns the items chosen and the resource's
    /// utilization after placement (0..=1), used for scoring.
    fn fit(
        &mut self,
        snapshot: &Snapshot,
        id: ResourceId,
        entry: &ResourceEntry,
        request: &Request<'_>,
        overlay: &Overlay,
        tentative: &TentativeUse,
    ) -> Option<(Vec<usize>, f64)> {
        match &request.need {
            Need::Counted(amount) => {
                let mut utilization: f64 = 0.0;
                for (dim, want) in amount.iter() {
                    let cap = *entry.capacity.get(dim)?;
                    let used = entry
                        .used
                        .get(dim)
                        .copied()
                        .unwrap_or(Quantity::ZERO)
                        .checked_add(overlay.used(id, dim))?
                        .checked_add(tentative.used(id, dim))?;
                    let after = used.checked_add(*want)?;
                    if after > cap {
                        return None;
                    }
                    utilization = utilization.max(after.ratio(cap));
                }
                Some((Vec::new(), utilization))
            }
            Need::Items { count, selector } => {
                let taken = overlay.items_taken(id) + tentative.items_taken(id);
                if entry.items_free < taken + count {
                    return None;
                }
                let matches = selector.map(|s| self.selector_matches(snapshot, id, entry, s));
                let mut chosen = Vec::with_capacity(*count);
                for i in 0..entry.items.len() {
                    if entry.item_used[i]
                        || overlay.item_taken(id, i)
                        || tentative.item_taken(id, i)
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
                let used_after = (entry.items.len() - entry.items_free + taken + count) as f64;
                Some((chosen, used_after / total))
            }
        }
    }

    fn selector_matches(
        &mut self,
        _snapshot: &Snapshot,
        id: ResourceId,
        entry: &ResourceEntry,
        selector: &ItemSelector,
    ) -> Arc<[bool]> {
        let key = (id, entry.stamp, Arc::<str>::from(selector.source()));
        if let Some(hit) = self.memo.get(&key) {
            return Arc::clone(hit);
        }
        // An evaluation error (an attribute the item lacks) counts as no match, as in DRA.
        let result: Arc<[bool]> = entry
            .items
            .iter()
            .map(|item| selector.matches(item).unwrap_or(false))
            .collect();
        self.memo.insert(key, Arc::clone(&result));
        result
    }
}

/// What the requests of the candidate under evaluation have already taken.
#[derive(Default)]
struct TentativeUse {
    dims: Vec<(ResourceId, String, Quantity)>,
    items: Vec<(ResourceId, usize)>,
}

impl TentativeUse {
    fn used(&self, id: ResourceId, dim: &str) -> Quantity {
        self.dims
            .iter()
            .filter(|(r, d, _)| *r == id && d == dim)
            .fold(Quantity::ZERO, |acc, (_, _, q)| {
                acc.checked_add(*q).unwrap_or(acc)
            })
    }
    fn items_taken(&self, id: ResourceId) -> usize {
        self.items.iter().filter(|(r, _)| *r == id).count()
    }
    fn item_taken(&self, id: ResourceId, item: usize) -> bool {
        self.items.contains(&(id, item))
    }
    fn add(&mut self, pick: &Pick, request: &Request<'_>) {
        if let Need::Counted(amount) = &request.need {
            for (dim, q) in amount.iter() {
                self.dims.push((pick.resource, dim.clone(), *q));
            }
        }
        self.items
            .extend(pick.items.iter().map(|&i| (pick.resource, i)));
    }
}

fn keep_best(best: &mut Option<Candidate>, runner_up: &mut Option<Candidate>, c: Candidate) {
    match best {
        Some(b) if c.score <= b.score => {
            if runner_up.as_ref().is_none_or(|r| c.score > r.score) {
                *runner_up = Some(c);
            }
        }
        _ => {
            *runner_up = best.take();
            *best = Some(c);
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
                    if let Some(dim) = r.amount.keys().find(|d| class.dimension_index(d).is_none())
                    {
                        return Err(format!("class {} has no dimension {dim}", class.name));
                    }
                    Need::Counted(&r.amount)
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
            Ok(Request {
                name: r.effective_name(),
                class,
                need,
            })
        })
        .collect()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
