//! The scheduler's view of the cluster: classes, nodes, resources and what allocations use.
//!
//! Usage is derived, never stored: each allocation's contribution is kept under its key, so
//! applying the same allocation twice (once when the plan applier commits it, once when its
//! watch event arrives) changes nothing, and removing it gives back exactly what it took.
//! Mutations are level-triggered upserts and removals fed by the server's watch cache.
//!
//! Each allocation also remembers the store revision of the state recorded for it, so that
//! an event older than that state changes nothing ([`Snapshot::apply_allocation_at`],
//! [`Snapshot::remove_allocation_at`]). The plan applier writes a requeued claim's new
//! allocation under the key its old one had; the old one's deletion, delivered later by the
//! watch, must not remove the new one (issue 17: it did, and a batch planned in that gap
//! handed the same GPUs out twice).

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::BTreeMap;
use std::sync::Arc;

use infraos_api::kinds::{
    AllocatedResource, ClassKind, NodeSpec, NodeStatus, ResourceClassSpec, ResourceSpec,
};
use infraos_api::{Item, Labels, Quantity};
use smallvec::SmallVec;

use crate::governance::{AllocationMeta, Governance};

pub type ResourceId = usize;
pub type NodeId = usize;
/// Classes are interned so the hot path compares integers, not names.
pub type ClassId = u32;

/// A class as the scheduler needs it: dimension names by index.
#[derive(Clone, Debug)]
pub struct ClassInfo {
    pub id: ClassId,
    pub name: String,
    pub kind: ClassKind,
    pub dimensions: Vec<String>,
    /// Price per unit and hour by dimension name (`count` for items).
    pub unit_price: BTreeMap<String, f64>,
}

impl ClassInfo {
    pub fn dimension_index(&self, name: &str) -> Option<usize> {
        self.dimensions.iter().position(|d| d == name)
    }
}

#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub name: String,
    pub labels: Labels,
    /// The `infraos.io/tenant` label: only that tenant's claims land here (looked up on
    /// every candidate, so kept apart from the labels).
    pub tenant: Option<String>,
    /// False for a node named by resources but not registered as a Node object.
    pub registered: bool,
    pub ready: bool,
    pub unschedulable: bool,
    /// Capability tiers as bits (`Tier::bit`).
    pub tiers: u8,
    /// (key, value) of the node's taints: claims must tolerate each.
    pub taints: Vec<(String, Option<String>)>,
    /// Inline: every candidate node's list is read while scanning, and a separate allocation
    /// per node was a cache miss per candidate.
    pub resources: SmallVec<[ResourceId; 4]>,
}

impl NodeEntry {
    /// The node's value of a topology key; `infraos.io/node` is the node's own name.
    pub fn topology_value(&self, key: &str) -> Option<&str> {
        if key == infraos_api::kinds::NODE_LABEL {
            Some(&self.name)
        } else {
            self.labels.get(key).map(String::as_str)
        }
    }
}

#[derive(Clone, Debug)]
pub struct ResourceEntry {
    pub name: String,
    pub class: String,
    /// The interned class, `None` while the class does not exist (the resource is unusable).
    pub class_id: Option<ClassId>,
    pub node: Option<NodeId>,
    /// The resource's own labels; node labels are looked up underneath them.
    pub labels: Labels,
    /// Its own `infraos.io/tenant` label (see [`NodeEntry::tenant`]).
    pub tenant: Option<String>,
    /// Capacity per dimension as declared (counted classes).
    pub capacity: BTreeMap<String, Quantity>,
    /// Capacity and use in nano-units by the class's dimension index, derived from
    /// `capacity` and the allocations holding this resource.
    pub cap: Vec<i128>,
    pub used: Vec<i128>,
    /// Items (items classes), in declaration order.
    pub items: Arc<[Item]>,
    pub item_index: HashMap<String, usize>,
    pub item_used: Vec<bool>,
    pub items_free: usize,
    /// Whether the resource counts its node into [`Snapshot::nodes_with_free_items`].
    listed_free: bool,
    /// Changes whenever the resource's spec changes, to key memoized selector results.
    pub stamp: u64,
    /// The resource's own unit prices (override the class's).
    pub unit_price: BTreeMap<String, f64>,
    /// Price per unit and hour by the class's dimension index, and per item.
    pub prices: Vec<f64>,
    pub item_price: f64,
    /// Power drawn when fully used.
    pub watts: f64,
}

impl ResourceEntry {
    /// What is free of a dimension, by index.
    pub fn free_at(&self, index: usize) -> i128 {
        let cap = self.cap.get(index).copied().unwrap_or(0);
        let used = self.used.get(index).copied().unwrap_or(0);
        (cap - used).max(0)
    }
}

/// A resource, amounts by its class's dimension index, and items by index.
pub(crate) type PartIndices = (ResourceId, Vec<(usize, i128)>, Vec<usize>);

/// The indexed state a plan is computed on.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    revision: u64,
    classes: HashMap<String, ClassInfo>,
    class_ids: HashMap<String, ClassId>,
    nodes: Vec<NodeEntry>,
    registered_nodes: usize,
    node_index: HashMap<String, NodeId>,
    resources: Vec<Option<ResourceEntry>>,
    free_slots: Vec<ResourceId>,
    resource_index: HashMap<String, ResourceId>,
    /// Node-less resources by class.
    pools_by_class: HashMap<String, Vec<ResourceId>>,
    /// Nodes that have at least one resource of the class.
    nodes_by_class: HashMap<String, Vec<NodeId>>,
    /// Items classes: nodes with a free item of the class (the free-capacity index a claim
    /// for items scans instead of every node with the class).
    free_item_nodes: HashMap<String, NodeSet>,
    allocations: HashMap<String, Vec<AllocatedResource>>,
    /// The store revision of each allocation's recorded state ([`ASSUMED`] until the plan
    /// applier's commit says which).
    allocation_revisions: HashMap<String, u64>,
    allocations_by_resource: HashMap<String, HashSet<String>>,
    next_stamp: u64,
    pub(crate) gov: Governance,
}

/// The revision of an allocation the plan applier has assumed but not yet committed: newer
/// than any event, so no watch event replaces or removes it meanwhile (the applier settles it).
pub const ASSUMED: u64 = u64::MAX;

/// Why an allocation cannot be applied to the current state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("resource {0:?} no longer exists")]
    ResourceGone(String),
    #[error("resource {resource:?} has {free} {dimension} free, {wanted} wanted")]
    Insufficient {
        resource: String,
        dimension: String,
        free: Quantity,
        wanted: Quantity,
    },
    #[error("item {item:?} of resource {resource:?} is taken or does not exist")]
    ItemUnavailable { resource: String, item: String },
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot::default()
    }

    /// The store revision the snapshot reflects (as far as the caller has told it).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn set_revision(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    pub fn class(&self, name: &str) -> Option<&ClassInfo> {
        self.classes.get(name)
    }

    /// What is free of a resource's dimension, by name (zero when unknown).
    pub fn free(&self, resource: &str, dim: &str) -> Quantity {
        self.resource_by_name(resource)
            .and_then(|r| {
                Some(Quantity::from_nanos(
                    r.free_at(self.dimension_index(&r.class, dim)?),
                ))
            })
            .unwrap_or(Quantity::ZERO)
    }

    pub fn node(&self, id: NodeId) -> &NodeEntry {
        &self.nodes[id]
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeEntry> {
        self.node_index.get(name).map(|&id| &self.nodes[id])
    }

    /// Registered nodes (kept as a count: explanations need it for every claim).
    pub fn node_count(&self) -> usize {
        self.registered_nodes
    }

    pub fn resource(&self, id: ResourceId) -> Option<&ResourceEntry> {
        self.resources.get(id).and_then(Option::as_ref)
    }

    pub fn resource_by_name(&self, name: &str) -> Option<&ResourceEntry> {
        self.resource_index
            .get(name)
            .and_then(|&id| self.resource(id))
    }

    pub fn resource_id(&self, name: &str) -> Option<ResourceId> {
        self.resource_index.get(name).copied()
    }

    pub fn resources(&self) -> impl Iterator<Item = (ResourceId, &ResourceEntry)> {
        self.resources
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
    }

    pub fn pools_of(&self, class: &str) -> &[ResourceId] {
        self.pools_by_class.get(class).map_or(&[], Vec::as_slice)
    }

    pub fn nodes_with(&self, class: &str) -> &[NodeId] {
        self.nodes_by_class.get(class).map_or(&[], Vec::as_slice)
    }

    /// The nodes where a resource of items class `class` has a free item.
    pub fn nodes_with_free_items(&self, class: &str) -> &[NodeId] {
        self.free_item_nodes
            .get(class)
            .map_or(&[], |s| s.list.as_slice())
    }

    /// Keeps the free-items index in step with a resource's `items_free` (idempotent).
    fn sync_free(&mut self, id: ResourceId) {
        let Some(entry) = self.resources.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let Some(node) = entry.node else {
            return;
        };
        let want = !entry.items.is_empty() && entry.items_free > 0;
        if want == entry.listed_free {
            return;
        }
        entry.listed_free = want;
        let set = self.free_item_nodes.entry(entry.class.clone()).or_default();
        if want {
            set.add(node, &self.nodes);
        } else {
            set.remove(node);
        }
    }

    pub fn allocation(&self, key: &str) -> Option<&[AllocatedResource]> {
        self.allocations.get(key).map(Vec::as_slice)
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// A resource's label lookup: its own labels first, then its node's.
    pub fn label<'a>(&'a self, resource: &'a ResourceEntry, key: &str) -> Option<&'a str> {
        resource.labels.get(key).map(String::as_str).or_else(|| {
            resource
                .node
                .and_then(|n| self.nodes[n].labels.get(key).map(String::as_str))
        })
    }

    // ---- mutations fed by the watch cache -------------------------------------------------

    pub fn upsert_class(&mut self, name: &str, spec: &ResourceClassSpec) {
        let next_id = self.class_ids.len() as ClassId;
        let id = *self.class_ids.entry(name.to_string()).or_insert(next_id);
        let info = ClassInfo {
            id,
            name: name.to_string(),
            kind: spec.kind,
            dimensions: spec.dimensions.iter().map(|d| d.name.clone()).collect(),
            unit_price: spec.unit_price.clone(),
        };
        let changed = self.classes.get(name).is_none_or(|old| {
            old.dimensions != info.dimensions
                || old.kind != info.kind
                || old.unit_price != info.unit_price
        });
        self.intern_class(name, spec.kind, &info.dimensions);
        self.classes.insert(name.to_string(), info);
        if changed {
            self.reindex_class(name);
        }
    }

    pub fn remove_class(&mut self, name: &str) {
        if self.classes.remove(name).is_some() {
            self.reindex_class(name);
        }
    }

    fn reindex_class(&mut self, name: &str) {
        let ids: Vec<ResourceId> = self
            .resources()
            .filter(|(_, r)| r.class == name)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.reindex_resource(id);
        }
    }

    /// Rebuilds a resource's derived vectors from its declared capacity, its class and the
    /// allocations holding it.
    fn reindex_resource(&mut self, id: ResourceId) {
        let Some(entry) = self.resources.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let class = self.classes.get(&entry.class);
        entry.class_id = class.map(|c| c.id);
        let dims: &[String] = class.map_or(&[], |c| c.dimensions.as_slice());
        entry.cap = dims
            .iter()
            .map(|d| entry.capacity.get(d).map_or(0, Quantity::nanos))
            .collect();
        entry.used = vec![0; dims.len()];
        let price = |dim: &str| {
            entry
                .unit_price
                .get(dim)
                .or_else(|| class.and_then(|c| c.unit_price.get(dim)))
                .copied()
                .unwrap_or(0.0)
        };
        entry.prices = dims.iter().map(|d| price(d)).collect();
        entry.item_price = price(infraos_api::kinds::ITEMS_DIMENSION);
        entry.item_used.iter_mut().for_each(|u| *u = false);
        entry.items_free = entry.items.len();
        let name = entry.name.clone();
        let holders: Vec<String> = self
            .allocations_by_resource
            .get(&name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for key in holders {
            if let Some(parts) = self.allocations.get(&key).cloned() {
                for part in parts.iter().filter(|p| p.resource == name) {
                    self.add_usage(id, part);
                }
            }
        }
        self.sync_free(id);
    }

    fn node_slot(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.node_index.get(name) {
            return id;
        }
        let id = self.nodes.len();
        self.nodes.push(NodeEntry {
            name: name.to_string(),
            labels: Labels::new(),
            tenant: None,
            registered: false,
            ready: false,
            unschedulable: false,
            tiers: 0,
            taints: Vec::new(),
            resources: SmallVec::new(),
        });
        self.node_index.insert(name.to_string(), id);
        id
    }

    pub fn upsert_node(
        &mut self,
        name: &str,
        labels: &Labels,
        spec: &NodeSpec,
        status: Option<&NodeStatus>,
    ) {
        let id = self.node_slot(name);
        let node = &mut self.nodes[id];
        if !node.registered {
            self.registered_nodes += 1;
        }
        node.labels = labels.clone();
        node.tenant = labels.get(infraos_api::kinds::TENANT_LABEL).cloned();
        node.registered = true;
        node.ready = status.is_none_or(NodeStatus::is_ready);
        node.unschedulable = spec.unschedulable;
        node.tiers = spec.tier_bits();
        node.taints = spec
            .taints
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
    }

    /// The node stays as an unregistered placeholder while resources still name it.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(&id) = self.node_index.get(name) {
            let node = &mut self.nodes[id];
            if node.registered {
                self.registered_nodes -= 1;
            }
            node.registered = false;
            node.ready = false;
            node.tiers = 0;
            node.labels.clear();
            node.tenant = None;
        }
    }

    pub fn upsert_resource(&mut self, name: &str, labels: &Labels, spec: &ResourceSpec) {
        let pools_move = self.has_pool_quotas()
            && self
                .resource_by_name(name)
                .is_none_or(|old| &old.labels != labels);
        self.remove_resource_entry(name);
        let items: Arc<[Item]> = spec.expand_items().unwrap_or_default().into();
        let node = spec.node.as_deref().map(|n| self.node_slot(n));
        self.next_stamp += 1;
        let entry = ResourceEntry {
            name: name.to_string(),
            class: spec.class.clone(),
            class_id: None,
            node,
            labels: labels.clone(),
            tenant: labels.get(infraos_api::kinds::TENANT_LABEL).cloned(),
            capacity: spec.capacity.clone(),
            cap: Vec::new(),
            used: Vec::new(),
            item_index: items
                .iter()
                .enumerate()
                .map(|(i, it)| (it.name.clone(), i))
                .collect(),
            item_used: vec![false; items.len()],
            items_free: items.len(),
            listed_free: false,
            items,
            stamp: self.next_stamp,
            unit_price: spec.unit_price.clone(),
            prices: Vec::new(),
            item_price: 0.0,
            watts: spec.watts.unwrap_or(0.0),
        };
        let id = match self.free_slots.pop() {
            Some(id) => {
                self.resources[id] = Some(entry);
                id
            }
            None => {
                self.resources.push(Some(entry));
                self.resources.len() - 1
            }
        };
        self.resource_index.insert(name.to_string(), id);
        match node {
            Some(n) => {
                self.nodes[n].resources.push(id);
                let list = self.nodes_by_class.entry(spec.class.clone()).or_default();
                insert_by_name(list, n, &self.nodes);
            }
            None => self
                .pools_by_class
                .entry(spec.class.clone())
                .or_default()
                .push(id),
        }
        // Derive the vectors and re-apply what existing allocations hold on it.
        self.reindex_resource(id);
        if pools_move {
            self.recompute_governance();
        }
    }

    pub fn remove_resource(&mut self, name: &str) {
        self.remove_resource_entry(name);
    }

    fn remove_resource_entry(&mut self, name: &str) {
        let Some(id) = self.resource_index.remove(name) else {
            return;
        };
        let Some(entry) = self.resources[id].take() else {
            return;
        };
        self.free_slots.push(id);
        if entry.listed_free
            && let (Some(n), Some(set)) = (entry.node, self.free_item_nodes.get_mut(&entry.class))
        {
            set.remove(n);
        }
        match entry.node {
            Some(n) => {
                self.nodes[n].resources.retain(|r| *r != id);
                let still_has_class = self.nodes[n].resources.iter().any(|&r| {
                    self.resources[r]
                        .as_ref()
                        .is_some_and(|e| e.class == entry.class)
                });
                if !still_has_class && let Some(list) = self.nodes_by_class.get_mut(&entry.class) {
                    list.retain(|&x| x != n);
                }
            }
            None => {
                if let Some(list) = self.pools_by_class.get_mut(&entry.class) {
                    list.retain(|&x| x != id);
                }
            }
        }
    }

    /// Records what an allocation holds (replacing what it held before under the same key),
    /// with what governance needs to know of it (priority, queue, gang, borrowing). The
    /// record counts as [`ASSUMED`]: no event replaces or removes it until
    /// [`Snapshot::confirm_allocation`] gives it its revision.
    pub fn apply_allocation(
        &mut self,
        key: &str,
        parts: &[AllocatedResource],
        meta: AllocationMeta,
    ) {
        self.record_allocation(key, parts, meta, ASSUMED);
    }

    /// Records an allocation's state as stored at `revision`, unless the snapshot already
    /// holds a state of it from that revision or later (an event that arrives after the
    /// applier wrote the key again). Returns whether it was applied.
    pub fn apply_allocation_at(
        &mut self,
        key: &str,
        parts: &[AllocatedResource],
        meta: AllocationMeta,
        revision: u64,
    ) -> bool {
        if self
            .allocation_revisions
            .get(key)
            .is_some_and(|&held| held >= revision)
        {
            return false;
        }
        self.record_allocation(key, parts, meta, revision);
        true
    }

    /// Gives back what an allocation held because it ended or was deleted at `revision`,
    /// unless what the snapshot holds under the key is from that revision or later: a newer
    /// allocation of the same claim. Returns whether anything was removed.
    pub fn remove_allocation_at(&mut self, key: &str, revision: u64) -> bool {
        match self.allocation_revisions.get(key) {
            None => false,
            Some(&held) if held >= revision => false,
            Some(_) => {
                self.remove_allocation(key);
                true
            }
        }
    }

    /// Gives an assumed allocation the revision its commit wrote it at.
    pub fn confirm_allocation(&mut self, key: &str, revision: u64) {
        if let Some(held) = self.allocation_revisions.get_mut(key) {
            *held = revision;
        }
    }

    /// The store revision of the allocation state recorded under `key` ([`ASSUMED`] while
    /// uncommitted).
    pub fn allocation_revision(&self, key: &str) -> Option<u64> {
        self.allocation_revisions.get(key).copied()
    }

    fn record_allocation(
        &mut self,
        key: &str,
        parts: &[AllocatedResource],
        meta: AllocationMeta,
        revision: u64,
    ) {
        self.remove_allocation(key);
        self.allocation_revisions.insert(key.to_string(), revision);
        for part in parts {
            self.allocations_by_resource
                .entry(part.resource.clone())
                .or_default()
                .insert(key.to_string());
            if let Some(&id) = self.resource_index.get(&part.resource) {
                self.add_usage(id, part);
            }
        }
        self.allocations.insert(key.to_string(), parts.to_vec());
        self.add_governance(key, parts, meta);
    }

    /// Gives back what an allocation held, whatever its revision; a no-op for unknown keys.
    pub fn remove_allocation(&mut self, key: &str) {
        self.allocation_revisions.remove(key);
        let Some(parts) = self.allocations.remove(key) else {
            return;
        };
        self.remove_governance(key);
        for part in &parts {
            if let Some(holders) = self.allocations_by_resource.get_mut(&part.resource) {
                holders.remove(key);
                if holders.is_empty() {
                    self.allocations_by_resource.remove(&part.resource);
                }
            }
            if let Some(&id) = self.resource_index.get(&part.resource) {
                self.sub_usage(id, part);
            }
        }
    }

    fn dimension_index(&self, class: &str, dim: &str) -> Option<usize> {
        self.classes.get(class)?.dimension_index(dim)
    }

    /// The allocations holding any resource of a node.
    pub fn allocations_on_node(&self, node: NodeId) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for &id in &self.nodes[node].resources {
            let Some(entry) = self.resource(id) else {
                continue;
            };
            if let Some(holders) = self.allocations_by_resource.get(&entry.name) {
                out.extend(holders.iter().map(String::as_str));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Where an allocation part sits in the snapshot: its resource, its amounts by dimension
    /// index and its items by index (`None` if the resource is gone).
    pub(crate) fn part_indices(&self, part: &AllocatedResource) -> Option<PartIndices> {
        let id = self.resource_id(&part.resource)?;
        let dims = self.usage_indices(id, part).unwrap_or_default();
        let items = self.resource(id).map_or_else(Vec::new, |e| {
            part.items
                .iter()
                .filter_map(|n| e.item_index.get(n).copied())
                .collect()
        });
        Some((id, dims, items))
    }

    /// A part's amounts by the class's dimension index, in nano-units.
    pub(crate) fn usage_indices(
        &self,
        id: ResourceId,
        part: &AllocatedResource,
    ) -> Option<Vec<(usize, i128)>> {
        let entry = self.resources.get(id)?.as_ref()?;
        Some(
            part.amount
                .iter()
                .filter_map(|(dim, q)| Some((self.dimension_index(&entry.class, dim)?, q.nanos())))
                .collect(),
        )
    }

    fn add_usage(&mut self, id: ResourceId, part: &AllocatedResource) {
        self.change_usage(id, part, true);
    }

    fn sub_usage(&mut self, id: ResourceId, part: &AllocatedResource) {
        self.change_usage(id, part, false);
    }

    /// Adds (`take`) or gives back what an allocation part holds on a resource.
    fn change_usage(&mut self, id: ResourceId, part: &AllocatedResource, take: bool) {
        let Some(indices) = self.usage_indices(id, part) else {
            return;
        };
        let Some(entry) = self.resources[id].as_mut() else {
            return;
        };
        for (i, nanos) in indices {
            if let Some(slot) = entry.used.get_mut(i) {
                *slot = if take {
                    slot.saturating_add(nanos)
                } else {
                    (*slot - nanos).max(0)
                };
            }
        }
        for item in &part.items {
            if let Some(&i) = entry.item_index.get(item)
                && entry.item_used[i] != take
            {
                entry.item_used[i] = take;
                if take {
                    entry.items_free -= 1;
                } else {
                    entry.items_free += 1;
                }
            }
        }
        if !part.items.is_empty() {
            self.sync_free(id);
        }
    }

    /// The plan applier's re-check: does this allocation fit what is free right now?
    /// Parts on the same resource are summed, and an item listed twice does not fit.
    pub fn fits(&self, parts: &[AllocatedResource]) -> Result<(), FitError> {
        let mut wanted: HashMap<(&str, &str), Quantity> = HashMap::new();
        let mut items: HashSet<(&str, &str)> = HashSet::new();
        for part in parts {
            let entry = self
                .resource_by_name(&part.resource)
                .ok_or_else(|| FitError::ResourceGone(part.resource.clone()))?;
            for (dim, q) in &part.amount {
                let total = wanted
                    .entry((part.resource.as_str(), dim.as_str()))
                    .or_insert(Quantity::ZERO);
                *total = total
                    .checked_add(*q)
                    .unwrap_or(Quantity::from_nanos(i128::MAX));
                let free = self
                    .dimension_index(&entry.class, dim)
                    .filter(|_| entry.class_id.is_some())
                    .map_or(Quantity::ZERO, |i| Quantity::from_nanos(entry.free_at(i)));
                if *total > free {
                    return Err(FitError::Insufficient {
                        resource: part.resource.clone(),
                        dimension: dim.clone(),
                        free,
                        wanted: *total,
                    });
                }
            }
            for item in &part.items {
                let free = entry
                    .item_index
                    .get(item)
                    .is_some_and(|&i| !entry.item_used[i]);
                if !free || !items.insert((part.resource.as_str(), item.as_str())) {
                    return Err(FitError::ItemUnavailable {
                        resource: part.resource.clone(),
                        item: item.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every resource's usage within capacity and every item held at most once; the invariant
    /// the property tests check after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut item_holders: HashMap<(&str, &str), &str> = HashMap::new();
        for (key, parts) in &self.allocations {
            for part in parts {
                for item in &part.items {
                    if let Some(other) = item_holders.insert((&part.resource, item), key) {
                        return Err(format!(
                            "item {item} of {} held by both {other} and {key}",
                            part.resource
                        ));
                    }
                }
            }
        }
        for (_, r) in self.resources() {
            for (i, (used, cap)) in r.used.iter().zip(&r.cap).enumerate() {
                if used > cap {
                    return Err(format!(
                        "{} dimension {i}: {} used of {}",
                        r.name,
                        Quantity::from_nanos(*used),
                        Quantity::from_nanos(*cap)
                    ));
                }
            }
            let counted = r.item_used.iter().filter(|u| **u).count();
            if counted + r.items_free != r.items.len() {
                return Err(format!("{}: item accounting is inconsistent", r.name));
            }
            if let Some(n) = r.node
                && !r.items.is_empty()
            {
                let listed = self.nodes_with_free_items(&r.class).contains(&n);
                if r.items_free > 0 && !listed {
                    return Err(format!(
                        "{}: free items but its node is not indexed",
                        r.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A set of nodes with a count per node, kept in node-name order: a scan over it visits the
/// same nodes in the same order however the set was built, so a replay on a rebuilt snapshot
/// starts where the recorded scan did.
#[derive(Clone, Debug, Default)]
struct NodeSet {
    list: Vec<NodeId>,
    /// Node → how many resources put it there.
    counts: HashMap<NodeId, u32>,
}

impl NodeSet {
    fn add(&mut self, node: NodeId, nodes: &[NodeEntry]) {
        let count = self.counts.entry(node).or_insert(0);
        *count += 1;
        if *count == 1 {
            insert_by_name(&mut self.list, node, nodes);
        }
    }

    fn remove(&mut self, node: NodeId) {
        let Some(count) = self.counts.get_mut(&node) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&node);
            self.list.retain(|&n| n != node);
        }
    }
}

/// Inserts `node` into `list` (sorted by node name) unless it is there already.
fn insert_by_name(list: &mut Vec<NodeId>, node: NodeId, nodes: &[NodeEntry]) {
    let name = nodes.get(node).map_or("", |n| n.name.as_str());
    if let Err(at) = list.binary_search_by(|&probe| {
        nodes
            .get(probe)
            .map_or("", |n| n.name.as_str())
            .cmp(name)
            .then(probe.cmp(&node))
    }) {
        list.insert(at, node);
    }
}
