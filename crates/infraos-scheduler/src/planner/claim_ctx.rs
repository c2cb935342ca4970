//! A claim compiled for one decision: its requests against the classes, its constraints
//! (affinity, anti-affinity, spread, tiers, tolerations) and the quotas over it.

use super::batching::Batch;
use super::engine::{MAX_PLUGINS, Scheduler};
use super::outcome::{Explanation, UNSCHEDULABLE};
use crate::governance::{GovDim, namespace_of};
use crate::plugins;
use crate::snapshot::{ClassInfo, NodeEntry, ResourceId, Snapshot};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use infraos_api::kinds::{
    AffinityTerm, Claim, ClassKind, ITEMS_DIMENSION, PreemptionPolicy, SpreadTerm, Tier,
    Unsatisfiable,
};
use infraos_api::quantity::NANOS_PER_UNIT;
use infraos_api::{ItemSelector, LabelSelector, Quantity};
use std::collections::BTreeMap;

/// One compiled request of a claim.
pub(crate) struct Request<'c> {
    pub(crate) name: &'c str,
    /// What the request takes by interned (class, dimension), for quotas and fair share.
    pub(crate) gdims: Vec<(GovDim, i128)>,
    pub(crate) class: &'c ClassInfo,
    /// The class's node-less resources, looked up once per claim.
    pub(crate) pools: &'c [ResourceId],
    pub(crate) need: Need<'c>,
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
    pub(crate) fn dims(&self) -> &[(usize, i128)] {
        match self {
            Need::Counted { dims, .. } => dims,
            Need::Items { .. } => &[],
        }
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
    pub(crate) fn allows(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return false;
        };
        let count = self.counts.get(v).copied().unwrap_or(0);
        count < self.min + self.max_skew
    }

    /// 1 for the emptiest domains down to near 0 for the fullest; 0 without the key.
    pub(crate) fn preference(&self, value: Option<&str>) -> f64 {
        let Some(v) = value else {
            return 0.0;
        };
        let count = self.counts.get(v).copied().unwrap_or(0);
        1.0 - f64::from(count.saturating_sub(self.min)) / f64::from(self.max - self.min + 1)
    }
}

pub(crate) struct Eligibility<'a> {
    pub(crate) requests: &'a [Request<'a>],
    pub(crate) selector: Option<&'a LabelSelector>,
    pub(crate) tenant_placement: Option<&'a LabelSelector>,
}

pub(crate) fn spread<'c>(
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
pub(crate) fn excluded_by_others<'c>(
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

pub(crate) fn domains<'c>(
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
    pub(crate) fn soft_score(&self, node: &NodeEntry) -> f64 {
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

    pub(crate) fn new(
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

pub(crate) fn compile<'c>(
    snapshot: &'c Snapshot,
    claim: &'c Claim,
) -> Result<Vec<Request<'c>>, String> {
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
