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

use infraos_api::kinds::{AllocatedResource, Claim, ClassKind, RunnerUp, ScoreBreakdown, Tier};
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
enum Reject<'a> {
    NodeNotRegistered,
    NodeNotReady,
    NodeUnschedulable,
    SelectorMismatch,
    TopologyMismatch,
    Insufficient(&'a str),
    NoResource(&'a str),
    MissingTier(&'static str),
    WorkloadNeedsNode,
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
            Reject::MissingTier(tier) => write!(f, "node lacks the {tier} tier"),
            Reject::WorkloadNeedsNode => f.write_str("a workload needs a node-bound request"),
        }
    }
}

/// Resources and items taken by claims placed earlier in the batch, indexed by resource id
/// (a dense table: lookups on the hot path are an index, not a hash).
#[derive(Default)]
struct Overlay {
    taken: Vec<Option<Box<Taken>>>,
    any: bool,
}

#[derive(Default)]
struct Taken {
    /// Nano-units by the class's dimension index.
    dims: Vec<i128>,
    items: Vec<usize>,
}

impl Overlay {
    fn get(&self, id: ResourceId) -> Option<&Taken> {
        if !self.any {
            return None;
        }
        self.taken.get(id).and_then(|t| t.as_deref())
    }

    fn add(&mut self, resource: ResourceId, dims: &[(usize, i128)], items: &[usize]) {
        if self.taken.len() <= resource {
            self.taken.resize_with(resource + 1, || None);
        }
        self.any = true;
        let taken = self.taken[resource].get_or_insert_with(Box::default);
        for &(i, nanos) in dims {
            if taken.dims.len() <= i {
                taken.dims.resize(i + 1, 0);
            }
            taken.dims[i] = taken.dims[i].saturating_add(nanos);
        }
        taken.items.extend_from_slice(items);
    }
}

/// One compiled request of a claim.
struct Request<'c> {
    name: &'c str,
    class: &'c ClassInfo,
    /// The class's node-less resources, looked up once per claim.
    pools: &'c [ResourceId],
    need: Need<'c>,
}

enum Need<'c> {
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
    plugins: WeightedPlugins,
    next_start: usize,
    memo: SelectorMemo,
    item_memo: ItemMemo,
    memo_entries: usize,
    scratch: Scratch,
}

impl Scheduler {
    pub fn new(profile: Profile) -> Result<Self, ProfileError> {
        let plugins = profile.build_plugins()?;
        if plugins.len() > MAX_PLUGINS {
            return Err(ProfileError::TooManyPlugins(MAX_PLUGINS));
        }
        Ok(Scheduler {
            profile,
            plugins,
            next_start: 0,
            memo: HashMap::new(),
            item_memo: HashMap::new(),
            memo_entries: 0,
            scratch: Scratch::default(),
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Decides a placement for each claim, in order, on `snapshot`.
    pub fn plan(&mut self, snapshot: &Snapshot, claims: &[(String, &Claim)]) -> Plan {
        if self.memo_entries > MEMO_LIMIT {
            self.memo.clear();
            self.item_memo.clear();
            self.memo_entries = 0;
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
        // A workload runs only on a node granted its driver's tier.
        let needs_tier = claim.spec.workload.as_ref().map(|w| w.driver.tier());
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
        let mut rejections: Vec<(Reject<'_>, u64)> = Vec::new();
        let mut best: Option<Candidate> = None;
        let mut runner_up: Option<Candidate> = None;
        let mut feasible = 0usize;
        let mut consider =
            |this: &mut Scheduler, node: Option<NodeId>, pool: Option<ResourceId>| match this
                .evaluate(
                    snapshot, node, pool, &requests, selector, colocate, needs_tier, overlay,
                ) {
                Ok((score, plugin_scores)) => {
                    feasible += 1;
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

        let Some(best) = best else {
            return Outcome::Unschedulable(explanation);
        };
        for pick in &best.picks {
            overlay.add(
                pick.resource,
                requests[pick.request].need.dims(),
                &pick.items,
            );
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
    /// the first request. On success the chosen resources are in `self.scratch.picks`.
    #[allow(clippy::too_many_arguments)]
    fn evaluate<'c>(
        &mut self,
        snapshot: &'c Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        requests: &[Request<'c>],
        selector: Option<&LabelSelector>,
        colocate: &[String],
        needs_tier: Option<Tier>,
        overlay: &Overlay,
    ) -> Result<(f64, [f64; MAX_PLUGINS]), Reject<'c>> {
        if let Some(tier) = needs_tier {
            match node {
                None => return Err(Reject::WorkloadNeedsNode),
                Some(n) if snapshot.node(n).tiers & tier.bit() == 0 => {
                    return Err(Reject::MissingTier(tier.as_str()));
                }
                Some(_) => {}
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
        let input = ScoreInput {
            utilizations: &self.scratch.utilizations,
        };
        let mut plugin_scores = [0.0; MAX_PLUGINS];
        let mut weighted = 0.0;
        let mut weight_sum = 0.0;
        for (i, (plugin, weight)) in self.plugins.iter().enumerate() {
            let score = plugin.score(&input).clamp(0.0, 100.0);
            plugin_scores[i] = score;
            weighted += weight * score;
            weight_sum += weight;
        }
        let score = if weight_sum > 0.0 {
            weighted / weight_sum
        } else {
            0.0
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
                let in_candidate = self.scratch.items.iter().filter(|(r, _)| *r == id).count();
                if entry.items_free < in_batch + in_candidate + count {
                    return None;
                }
                let matches = selector.map(|s| self.selector_matches(id, entry, s));
                let mut chosen = Vec::with_capacity(*count);
                for i in 0..entry.items.len() {
                    if entry.item_used[i]
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
                let used_after =
                    (entry.items.len() - entry.items_free + in_batch + in_candidate + count) as f64;
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
            Ok(Request {
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
