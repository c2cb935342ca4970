//! Governance state in the snapshot: priority classes, queues, projects' tenants, quotas and
//! what allocations hold against them.
//!
//! Like capacity, quota usage is derived, never stored: each allocation's contribution to
//! each quota (and to its queue's share) is kept under its key, so recording an allocation
//! twice changes nothing and removing it gives back exactly what it added. When a quota, a
//! project or a pool's resources change, every contribution is recomputed (these change
//! rarely; allocations change all the time).

use foldhash::{HashMap, HashMapExt, HashSet};
use std::collections::BTreeMap;

use infraos_api::kinds::{
    AffinityTerm, AllocatedResource, AllocationSpec, AllocationStatus, ClassAmounts, ClassKind,
    ITEMS_DIMENSION, PreemptionPolicy, PriorityClassSpec, QuotaLevel, QuotaSpec,
};
use infraos_api::quantity::NANOS_PER_UNIT;
use infraos_api::{LabelSelector, Quantity};

use crate::snapshot::Snapshot;

/// A (class, dimension) pair interned for quota and fair-share arithmetic.
pub type GovDim = u32;

/// Contributions to quotas (quota index, dimension slot, nano-units) and to a queue's usage.
pub(crate) type QuotaAndUsage = (Vec<(usize, usize, i128)>, Vec<(GovDim, i128)>);

/// What the scheduler needs to know of an allocation beyond the resources it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationMeta {
    pub priority: i32,
    pub queue: String,
    /// The gang (`group` name within the allocation's project), preempted as a unit.
    pub group: Option<String>,
    pub borrowing: bool,
    /// Already being preempted: its resources are about to come free.
    pub preempting: bool,
    pub created_ms: i64,
    /// The claim's labels, for affinity between claims.
    pub labels: infraos_api::Labels,
    /// The node its node-bound requests landed on.
    pub node: Option<String>,
    /// Its claim's required anti-affinity terms, which later claims must respect too.
    pub anti_affinity: Vec<AffinityTerm>,
}

impl AllocationMeta {
    pub fn of(spec: &AllocationSpec, status: Option<&AllocationStatus>, created_ms: i64) -> Self {
        AllocationMeta {
            priority: spec.priority,
            queue: spec
                .queue
                .clone()
                .unwrap_or_else(|| infraos_api::kinds::DEFAULT_QUEUE.to_string()),
            group: spec.group.clone(),
            borrowing: spec.borrowing,
            preempting: status.is_some_and(|s| s.preemption.is_some()),
            created_ms,
            labels: infraos_api::Labels::new(),
            node: spec.node.clone(),
            anti_affinity: spec.anti_affinity.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct QuotaDim {
    pub class: String,
    pub dim: String,
    pub gdim: GovDim,
    /// Nano-units (items are counted in whole units times 10⁹, like any quantity).
    pub limit: i128,
    /// Project quotas: how far beyond `limit` the project may borrow.
    pub borrow: i128,
    pub used: i128,
}

#[derive(Clone, Debug)]
pub struct QuotaEntry {
    pub name: String,
    pub level: QuotaLevel,
    /// `tenant acme`, `project ml`, `pool pool=gpu-east of tenant acme`.
    pub scope: String,
    pub tenant: Option<String>,
    pub project: Option<String>,
    pub pool: Option<LabelSelector>,
    pub dims: Vec<QuotaDim>,
}

impl QuotaEntry {
    /// Whether `other` sets the same limits on the same claims (usage aside).
    fn same_limits(&self, other: &QuotaEntry) -> bool {
        self.level == other.level
            && self.scope == other.scope
            && self.tenant == other.tenant
            && self.project == other.project
            && self.pool == other.pool
            && self.dims.len() == other.dims.len()
            && self.dims.iter().zip(&other.dims).all(|(a, b)| {
                (a.gdim, a.limit, a.borrow) == (b.gdim, b.limit, b.borrow)
                    && a.class == b.class
                    && a.dim == b.dim
            })
    }

    /// Whether claims of project `ns` (of `tenant`) count against this quota.
    pub fn applies_to(&self, ns: &str, tenant: Option<&str>) -> bool {
        match self.level {
            QuotaLevel::Tenant => self.tenant.as_deref() == tenant && tenant.is_some(),
            QuotaLevel::Project => self.project.as_deref() == Some(ns),
            QuotaLevel::Pool => {
                self.project.as_deref().is_none_or(|p| p == ns)
                    && self
                        .tenant
                        .as_deref()
                        .is_none_or(|t| tenant.is_some_and(|x| x == t))
            }
        }
    }

    /// Per class and dimension, as quantities.
    pub fn used(&self) -> ClassAmounts {
        self.amounts(|d| Some(d.used))
    }

    /// Project quotas: what is held beyond the limits.
    pub fn borrowed(&self) -> ClassAmounts {
        self.amounts(|d| (d.used > d.limit).then(|| d.used - d.limit))
    }

    fn amounts(&self, pick: impl Fn(&QuotaDim) -> Option<i128>) -> ClassAmounts {
        let mut out: ClassAmounts = BTreeMap::new();
        for d in &self.dims {
            if let Some(v) = pick(d) {
                out.entry(d.class.clone())
                    .or_default()
                    .insert(d.dim.clone(), Quantity::from_nanos(v));
            }
        }
        out
    }
}

/// One allocation's governance bookkeeping.
#[derive(Clone, Debug, Default)]
pub(crate) struct AllocGov {
    pub meta: AllocationMeta,
    /// (quota index, dimension slot, nano-units) added to quotas.
    pub quota: Vec<(usize, usize, i128)>,
    /// (dimension, nano-units) added to its queue's usage.
    pub usage: Vec<(GovDim, i128)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorityInfo {
    pub value: i32,
    pub policy: PreemptionPolicy,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Governance {
    pub priority_classes: HashMap<String, PriorityInfo>,
    pub queues: HashMap<String, f64>,
    /// Project → tenant.
    pub projects: HashMap<String, String>,
    pub quotas: Vec<QuotaEntry>,
    pub quota_index: HashMap<String, usize>,
    /// class → dimension → interned id.
    pub dims: HashMap<String, HashMap<String, GovDim>>,
    pub dim_names: Vec<(String, String)>,
    pub allocs: HashMap<String, AllocGov>,
    /// Project → keys of its allocations, for affinity and gangs.
    pub by_project: HashMap<String, HashSet<String>>,
    /// Project → keys of its allocations with required anti-affinity terms.
    pub anti_by_project: HashMap<String, HashSet<String>>,
    /// How many allocations hold each priority, borrow quota, or are being preempted: lets a
    /// claim that could preempt nothing skip the search.
    pub priorities: BTreeMap<i32, usize>,
    pub borrowing: usize,
    pub preempting: usize,
    /// Tenant → the selector its claims' resources must match (its compliance domain).
    pub tenant_placement: HashMap<String, LabelSelector>,
    /// Queue → what its allocations hold, by dimension.
    pub queue_usage: HashMap<String, Vec<i128>>,
    /// Bumped on every change of quotas or usage, so the server writes status only on change.
    pub generation: u64,
}

impl Governance {
    pub fn intern(&mut self, class: &str, dim: &str) -> GovDim {
        if let Some(&id) = self.dims.get(class).and_then(|d| d.get(dim)) {
            return id;
        }
        let id = self.dim_names.len() as GovDim;
        self.dim_names.push((class.to_string(), dim.to_string()));
        self.dims
            .entry(class.to_string())
            .or_default()
            .insert(dim.to_string(), id);
        id
    }

    pub fn lookup(&self, class: &str, dim: &str) -> Option<GovDim> {
        self.dims.get(class).and_then(|d| d.get(dim)).copied()
    }

    pub fn tenant_of(&self, ns: &str) -> Option<&str> {
        self.projects.get(ns).map(String::as_str)
    }

    pub fn weight(&self, queue: &str) -> f64 {
        self.queues.get(queue).copied().unwrap_or(1.0)
    }
}

fn parse_amounts(amounts: &ClassAmounts) -> HashMap<(String, String), i128> {
    let mut out = HashMap::new();
    for (class, dims) in amounts {
        for (dim, q) in dims {
            out.insert((class.clone(), dim.clone()), q.nanos());
        }
    }
    out
}

/// The namespace of a `namespace/name` key.
pub(crate) fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

impl Snapshot {
    pub fn upsert_priority_class(&mut self, name: &str, spec: &PriorityClassSpec) {
        self.gov.priority_classes.insert(
            name.to_string(),
            PriorityInfo {
                value: spec.value,
                policy: spec.preemption_policy,
            },
        );
    }

    pub fn remove_priority_class(&mut self, name: &str) {
        self.gov.priority_classes.remove(name);
    }

    pub fn priority_class(&self, name: &str) -> Option<PriorityInfo> {
        self.gov.priority_classes.get(name).copied()
    }

    pub fn upsert_queue(&mut self, name: &str, weight: f64) {
        self.gov.queues.insert(name.to_string(), weight);
    }

    pub fn remove_queue(&mut self, name: &str) {
        self.gov.queues.remove(name);
    }

    pub fn queue_weight(&self, name: &str) -> f64 {
        self.gov.weight(name)
    }

    pub fn upsert_project(&mut self, name: &str, tenant: &str) {
        let old = self
            .gov
            .projects
            .insert(name.to_string(), tenant.to_string());
        if old.as_deref() != Some(tenant) {
            self.recompute_governance();
        }
    }

    /// Sets (or with `None` clears) a tenant's compliance domain.
    pub fn upsert_tenant(&mut self, name: &str, placement: Option<&LabelSelector>) {
        match placement {
            Some(sel) if !sel.is_empty() => {
                self.gov
                    .tenant_placement
                    .insert(name.to_string(), sel.clone());
            }
            _ => {
                self.gov.tenant_placement.remove(name);
            }
        }
    }

    pub fn remove_tenant(&mut self, name: &str) {
        self.gov.tenant_placement.remove(name);
    }

    /// The selector a tenant's claims' resources must match, if it has one.
    pub fn tenant_placement(&self, tenant: &str) -> Option<&LabelSelector> {
        self.gov.tenant_placement.get(tenant)
    }

    pub fn remove_project(&mut self, name: &str) {
        if self.gov.projects.remove(name).is_some() {
            self.recompute_governance();
        }
    }

    pub fn upsert_quota(&mut self, name: &str, spec: &QuotaSpec) {
        let Some(level) = spec.level() else {
            return;
        };
        let limits = parse_amounts(&spec.limits);
        let borrow = parse_amounts(&spec.borrowing_limit);
        let mut keys: Vec<&(String, String)> = limits.keys().collect();
        keys.sort();
        let dims = keys
            .into_iter()
            .map(|key| QuotaDim {
                class: key.0.clone(),
                dim: key.1.clone(),
                gdim: self.gov.intern(&key.0, &key.1),
                limit: limits[key],
                borrow: borrow.get(key).copied().unwrap_or(0),
                used: 0,
            })
            .collect();
        let entry = QuotaEntry {
            name: name.to_string(),
            level,
            scope: spec.scope(),
            tenant: spec.tenant.clone(),
            project: spec.project.clone(),
            pool: spec.pool.clone(),
            dims,
        };
        match self.gov.quota_index.get(name) {
            // Only its status changed (the usage this scheduler wrote): the usage counted
            // stands, and recounting every allocation for it would cost O(allocations) each
            // time a quota's status is written.
            Some(&i) if self.gov.quotas[i].same_limits(&entry) => return,
            Some(&i) => self.gov.quotas[i] = entry,
            None => {
                self.gov
                    .quota_index
                    .insert(name.to_string(), self.gov.quotas.len());
                self.gov.quotas.push(entry);
            }
        }
        self.recompute_governance();
    }

    pub fn remove_quota(&mut self, name: &str) {
        if self.gov.quota_index.remove(name).is_none() {
            return;
        }
        self.gov.quotas.retain(|q| q.name != name);
        self.gov.quota_index = self
            .gov
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), i))
            .collect();
        self.recompute_governance();
    }

    pub fn quotas(&self) -> &[QuotaEntry] {
        &self.gov.quotas
    }

    pub fn quota(&self, name: &str) -> Option<&QuotaEntry> {
        self.gov.quota_index.get(name).map(|&i| &self.gov.quotas[i])
    }

    /// Changes whenever quota usage or limits change.
    pub fn governance_generation(&self) -> u64 {
        self.gov.generation
    }

    pub fn allocation_meta(&self, key: &str) -> Option<&AllocationMeta> {
        self.gov.allocs.get(key).map(|a| &a.meta)
    }

    pub fn tenant_of(&self, ns: &str) -> Option<&str> {
        self.gov.tenant_of(ns)
    }

    /// What a queue's allocations hold, per class and dimension.
    pub fn queue_usage(&self, queue: &str) -> BTreeMap<(String, String), Quantity> {
        let mut out = BTreeMap::new();
        if let Some(usage) = self.gov.queue_usage.get(queue) {
            for (g, v) in usage.iter().enumerate() {
                if *v != 0
                    && let Some(name) = self.gov.dim_names.get(g)
                {
                    out.insert(name.clone(), Quantity::from_nanos(*v));
                }
            }
        }
        out
    }

    /// Makes every class dimension known to quota and fair-share arithmetic.
    pub(crate) fn intern_class(&mut self, class: &str, kind: ClassKind, dims: &[String]) {
        match kind {
            ClassKind::Counted => {
                for d in dims {
                    self.gov.intern(class, d);
                }
            }
            ClassKind::Items => {
                self.gov.intern(class, ITEMS_DIMENSION);
            }
        }
    }

    /// An allocation part's amounts by interned dimension (items count as `count`);
    /// dimensions never interned are skipped (no quota names them, no class declares them).
    fn part_usage(&self, part: &AllocatedResource) -> Vec<(GovDim, i128)> {
        let mut out: Vec<(GovDim, i128)> = part
            .amount
            .iter()
            .filter_map(|(dim, q)| Some((self.gov.lookup(&part.class, dim)?, q.nanos())))
            .collect();
        if !part.items.is_empty()
            && let Some(g) = self.gov.lookup(&part.class, ITEMS_DIMENSION)
        {
            out.push((g, part.items.len() as i128 * NANOS_PER_UNIT));
        }
        out
    }

    /// What allocation parts of project `ns` add to each quota (quota index, dimension slot,
    /// nano-units) and to their queue's usage (by dimension).
    pub(crate) fn contributions(
        &self,
        ns: &str,
        tenant: Option<&str>,
        parts: &[AllocatedResource],
    ) -> QuotaAndUsage {
        let mut quota = Vec::new();
        let mut usage = Vec::new();
        for part in parts {
            let part_usage = self.part_usage(part);
            for (qi, q) in self.gov.quotas.iter().enumerate() {
                if !q.applies_to(ns, tenant) {
                    continue;
                }
                if let Some(sel) = &q.pool {
                    let inside = self
                        .resource_by_name(&part.resource)
                        .is_some_and(|r| sel.matches_with(|k| self.label(r, k)));
                    if !inside {
                        continue;
                    }
                }
                for &(g, nanos) in &part_usage {
                    if let Some(slot) = q.dims.iter().position(|d| d.gdim == g) {
                        quota.push((qi, slot, nanos));
                    }
                }
            }
            usage.extend(part_usage);
        }
        (quota, usage)
    }

    /// The allocations that count against quota `quota` (by index).
    pub(crate) fn allocations_in_quota(&self, quota: usize) -> Vec<&str> {
        self.gov
            .allocs
            .iter()
            .filter(|(_, a)| a.quota.iter().any(|(qi, _, _)| *qi == quota))
            .map(|(key, _)| key.as_str())
            .collect()
    }

    /// What an allocation adds to quotas: (quota index, dimension slot, nano-units).
    pub(crate) fn quota_contributions(&self, key: &str) -> &[(usize, usize, i128)] {
        self.gov.allocs.get(key).map_or(&[], |a| a.quota.as_slice())
    }

    /// The allocations of project `ns` with their governance facts (labels, node).
    pub(crate) fn allocations_in_project<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a AllocationMeta> + 'a {
        self.gov
            .by_project
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|key| self.gov.allocs.get(key))
            .map(|a| &a.meta)
    }

    /// The allocations of project `ns` whose claims have required anti-affinity terms.
    pub(crate) fn anti_affinity_in_project<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a AllocationMeta> + 'a {
        self.gov
            .anti_by_project
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|key| self.gov.allocs.get(key))
            .map(|a| &a.meta)
    }

    /// Whether any allocation could be a preemption victim (or is already stopping) for a
    /// claim of `priority`: a cheap check before searching node by node.
    pub(crate) fn may_preempt(
        &self,
        priority: i32,
        min_gap: u32,
        policy: PreemptionPolicy,
        claim_borrows: bool,
    ) -> bool {
        let by_priority = policy != PreemptionPolicy::Never
            && self.gov.priorities.keys().next().is_some_and(|&lowest| {
                i64::from(lowest) + i64::from(min_gap) <= i64::from(priority)
            });
        by_priority || self.gov.preempting > 0 || (!claim_borrows && self.gov.borrowing > 0)
    }

    /// Whether any allocation has required anti-affinity terms (claims must then check them).
    pub(crate) fn has_anti_affinity(&self) -> bool {
        !self.gov.anti_by_project.is_empty()
    }

    /// The allocations of gang `group` in project `ns`.
    pub fn gang_allocations(&self, ns: &str, group: &str) -> Vec<&str> {
        self.gov
            .by_project
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|key| {
                self.gov
                    .allocs
                    .get(*key)
                    .is_some_and(|a| a.meta.group.as_deref() == Some(group))
            })
            .map(String::as_str)
            .collect()
    }

    /// Adds an allocation's contributions to quotas and its queue.
    pub(crate) fn add_governance(
        &mut self,
        key: &str,
        parts: &[AllocatedResource],
        meta: AllocationMeta,
    ) {
        for part in parts {
            for dim in part.amount.keys() {
                self.gov.intern(&part.class, dim);
            }
            if !part.items.is_empty() {
                self.gov.intern(&part.class, ITEMS_DIMENSION);
            }
        }
        let ns = namespace_of(key);
        let tenant = self.gov.tenant_of(ns);
        let (quota, usage) = self.contributions(ns, tenant, parts);
        for &(qi, slot, nanos) in &quota {
            self.gov.quotas[qi].dims[slot].used += nanos;
        }
        let queue = self.gov.queue_usage.entry(meta.queue.clone()).or_default();
        for &(g, nanos) in &usage {
            let g = g as usize;
            if queue.len() <= g {
                queue.resize(g + 1, 0);
            }
            queue[g] += nanos;
        }
        self.gov.generation += 1;
        *self.gov.priorities.entry(meta.priority).or_insert(0) += 1;
        self.gov.borrowing += usize::from(meta.borrowing);
        self.gov.preempting += usize::from(meta.preempting);
        self.gov
            .by_project
            .entry(ns.to_string())
            .or_default()
            .insert(key.to_string());
        if !meta.anti_affinity.is_empty() {
            self.gov
                .anti_by_project
                .entry(ns.to_string())
                .or_default()
                .insert(key.to_string());
        }
        self.gov
            .allocs
            .insert(key.to_string(), AllocGov { meta, quota, usage });
    }

    /// Gives back exactly what [`Snapshot::add_governance`] added.
    pub(crate) fn remove_governance(&mut self, key: &str) -> Option<AllocationMeta> {
        let gov = self.gov.allocs.remove(key)?;
        if let Some(n) = self.gov.priorities.get_mut(&gov.meta.priority) {
            *n -= 1;
            if *n == 0 {
                self.gov.priorities.remove(&gov.meta.priority);
            }
        }
        self.gov.borrowing -= usize::from(gov.meta.borrowing);
        self.gov.preempting -= usize::from(gov.meta.preempting);
        let ns = namespace_of(key);
        for index in [&mut self.gov.by_project, &mut self.gov.anti_by_project] {
            if let Some(keys) = index.get_mut(ns) {
                keys.remove(key);
                if keys.is_empty() {
                    index.remove(ns);
                }
            }
        }
        for &(qi, slot, nanos) in &gov.quota {
            if let Some(d) = self
                .gov
                .quotas
                .get_mut(qi)
                .and_then(|q| q.dims.get_mut(slot))
            {
                d.used -= nanos;
            }
        }
        if let Some(queue) = self.gov.queue_usage.get_mut(&gov.meta.queue) {
            for &(g, nanos) in &gov.usage {
                if let Some(v) = queue.get_mut(g as usize) {
                    *v -= nanos;
                }
            }
        }
        self.gov.generation += 1;
        Some(gov.meta)
    }

    /// Rebuilds every allocation's contributions (after quotas, projects or pools changed).
    pub(crate) fn recompute_governance(&mut self) {
        for q in &mut self.gov.quotas {
            for d in &mut q.dims {
                d.used = 0;
            }
        }
        self.gov.queue_usage.clear();
        self.gov.by_project.clear();
        self.gov.anti_by_project.clear();
        self.gov.priorities.clear();
        self.gov.borrowing = 0;
        self.gov.preempting = 0;
        let all: Vec<(String, AllocationMeta)> =
            self.gov.allocs.drain().map(|(k, a)| (k, a.meta)).collect();
        for (key, meta) in all {
            if let Some(parts) = self.allocation(&key).map(<[AllocatedResource]>::to_vec) {
                self.add_governance(&key, &parts, meta);
            }
        }
        self.gov.generation += 1;
    }

    /// Records that an allocation is being preempted (its resources are about to come free),
    /// ahead of the watch event that says so.
    pub fn mark_preempting(&mut self, key: &str) {
        if let Some(a) = self.gov.allocs.get_mut(key)
            && !a.meta.preempting
        {
            a.meta.preempting = true;
            self.gov.preempting += 1;
        }
    }

    /// Whether any pool quota exists (resource label changes then move usage between pools).
    pub(crate) fn has_pool_quotas(&self) -> bool {
        self.gov.quotas.iter().any(|q| q.pool.is_some())
    }

    /// Every quota's usage within its limits (plus borrowing); the property tests' invariant.
    pub fn check_quota_invariants(&self) -> Result<(), String> {
        let mut priorities: BTreeMap<i32, usize> = BTreeMap::new();
        for a in self.gov.allocs.values() {
            *priorities.entry(a.meta.priority).or_insert(0) += 1;
        }
        let borrowing = self
            .gov
            .allocs
            .values()
            .filter(|a| a.meta.borrowing)
            .count();
        let preempting = self
            .gov
            .allocs
            .values()
            .filter(|a| a.meta.preempting)
            .count();
        if priorities != self.gov.priorities
            || borrowing != self.gov.borrowing
            || preempting != self.gov.preempting
        {
            return Err("allocation counts by priority, borrowing or preempting drifted".into());
        }
        for q in &self.gov.quotas {
            for d in &q.dims {
                if d.used > d.limit + d.borrow {
                    return Err(format!(
                        "quota {} ({}): {}/{} used {} of {} (+{} borrowable)",
                        q.name,
                        q.scope,
                        d.class,
                        d.dim,
                        Quantity::from_nanos(d.used),
                        Quantity::from_nanos(d.limit),
                        Quantity::from_nanos(d.borrow)
                    ));
                }
            }
        }
        Ok(())
    }
}
