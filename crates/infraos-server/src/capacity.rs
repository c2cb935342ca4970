//! How much an agent may publish: the capacity of a node's Resources, bounded by what the node
//! reports it has and by what an administrator lets it offer.
//!
//! ```text
//!  node report ─► for each class × dimension of its Resources (`count` for items):
//!                   allowed = min(Node spec.capacityLimits, else server nodeCapacityLimits,
//!                                 else 0;
//!                                 the node's own inventory, for compute cpu/memory and gpus)
//!                 ─► capacity beyond `allowed` is cut (shared by all of the node's Resources
//!                    of the class, in report order); a Resource cut to nothing is not published
//!                 ─► the Node's CapacityLimited condition lists each cut
//! ```
//! An agent says what it likes, and the scheduler places work where capacity is: a node
//! claiming a million CPUs would draw every tenant's claims (issue 16, finding 8). The server
//! cannot measure a machine, so it bounds the claim: by the node's own inventory (an honest
//! agent publishes less than it found; the inventory is visible in the Node's status, so a lie
//! shows), and by limits an administrator sets — generous defaults for every node, tighter or
//! looser ones per Node. Cutting rather than refusing keeps an honest node that outgrew the
//! default working, with a condition telling the operator what to raise.
//!
//! Pure: no I/O, so every rule is tested below.

use std::collections::BTreeMap;

use infraos_api::Quantity;
use infraos_api::kinds::{ClassAmounts, ITEMS_DIMENSION, Inventory, Resource};

/// The class the agent publishes a node's allocatable cpu and memory in (`<node>-compute`).
pub const COMPUTE_CLASS: &str = "compute";
/// The class the agent publishes a node's GPUs in, one item each (`<node>-gpu`).
pub const GPU_CLASS: &str = "gpu";

/// The server's default `nodeCapacityLimits`: more than the largest common machines hold
/// (two sockets of 192 cores with SMT, 6 TiB, 8–16 GPUs), so honest nodes are not cut, while
/// a node cannot claim unbounded capacity. An administrator sets tighter or looser ones per
/// Node (`spec.capacityLimits`) or for every node in `server.yaml`.
pub fn default_limits() -> ClassAmounts {
    let mut compute = BTreeMap::new();
    compute.insert("cpu".to_string(), Quantity::from_units(1024));
    compute.insert("memory".to_string(), Quantity::from_bytes(16 << 40));
    let mut gpu = BTreeMap::new();
    gpu.insert(ITEMS_DIMENSION.to_string(), Quantity::from_units(16));
    let mut limits = ClassAmounts::new();
    limits.insert(COMPUTE_CLASS.to_string(), compute);
    limits.insert(GPU_CLASS.to_string(), gpu);
    limits
}

/// A report the server refuses outright rather than cuts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "resources[{index}].spec.cidr: an agent lists its resources' items; address ranges are \
         declared by an administrator"
    )]
    Cidr { index: usize },
}

/// What bounded a class × dimension: the first of these that is lowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Inventory,
    Node,
    Server,
    Unset,
}

impl Bound {
    fn says(self) -> &'static str {
        match self {
            Bound::Inventory => "the node's own inventory",
            Bound::Node => "the Node's spec.capacityLimits",
            Bound::Server => "the server's nodeCapacityLimits",
            Bound::Unset => "no capacity limit is set for it",
        }
    }
}

/// One cut: which Resource, which dimension, what was reported and what was kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub resource: String,
    pub class: String,
    pub dimension: String,
    pub reported: Quantity,
    pub kept: Quantity,
    bound: Bound,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}.{}: {} reported, {} published ({})",
            self.resource,
            self.class,
            self.dimension,
            self.reported,
            self.kept,
            self.bound.says()
        )
    }
}

/// The Resources as they may be published, and what was cut.
#[derive(Debug, Default)]
pub struct Bounded {
    pub resources: Vec<Resource>,
    pub cuts: Vec<Cut>,
}

impl Bounded {
    /// The message of the Node's `CapacityLimited` condition; `None` when nothing was cut.
    pub fn message(&self) -> Option<String> {
        if self.cuts.is_empty() {
            return None;
        }
        let lines: Vec<String> = self.cuts.iter().map(Cut::to_string).collect();
        Some(infraos_api::text::bound_owned(
            format!(
                "the agent reported more than the node may offer: {}; raise the Node's \
                 spec.capacityLimits if the machine really has it",
                lines.join("; ")
            ),
            infraos_api::text::REASON_MAX,
        ))
    }
}

/// What the node's inventory says it has of a class × dimension, where the agent's classes
/// are known; `None` for anything else.
fn inventory_bound(inventory: &Inventory, class: &str, dimension: &str) -> Option<Quantity> {
    match (class, dimension) {
        (COMPUTE_CLASS, "cpu") => Some(Quantity::from_units(i64::from(inventory.cpu.cores))),
        (COMPUTE_CLASS, "memory") => Some(Quantity::from_bytes(inventory.memory.total_bytes)),
        (GPU_CLASS, ITEMS_DIMENSION) => Some(Quantity::from_units(
            i64::try_from(inventory.gpus.len()).unwrap_or(i64::MAX),
        )),
        _ => None,
    }
}

/// The most the node may publish of a class × dimension, and what sets it.
fn allowed(
    inventory: &Inventory,
    node: &ClassAmounts,
    server: &ClassAmounts,
    class: &str,
    dimension: &str,
) -> (Quantity, Bound) {
    let limit = |l: &ClassAmounts| l.get(class).and_then(|d| d.get(dimension)).copied();
    let (limit, by) = match (limit(node), limit(server)) {
        (Some(q), _) => (q, Bound::Node),
        (None, Some(q)) => (q, Bound::Server),
        (None, None) => (Quantity::ZERO, Bound::Unset),
    };
    let limit = limit.max(Quantity::ZERO);
    match inventory_bound(inventory, class, dimension) {
        Some(found) if found < limit => (found, Bound::Inventory),
        _ => (limit, by),
    }
}

/// Bounds a node's reported Resources (see the module head). `node` is the Node's
/// `spec.capacityLimits`, `server` the server's `nodeCapacityLimits`.
pub fn bound(
    resources: Vec<Resource>,
    inventory: &Inventory,
    node: &ClassAmounts,
    server: &ClassAmounts,
) -> Result<Bounded, CapacityError> {
    let mut left: BTreeMap<(String, String), (Quantity, Bound)> = BTreeMap::new();
    let mut out = Bounded::default();
    for (index, mut resource) in resources.into_iter().enumerate() {
        if resource.spec.cidr.is_some() {
            return Err(CapacityError::Cidr { index });
        }
        let class = resource.spec.class.clone();
        let mut take = |dimension: &str, reported: Quantity| -> (Quantity, Bound) {
            let slot = left
                .entry((class.clone(), dimension.to_string()))
                .or_insert_with(|| allowed(inventory, node, server, &class, dimension));
            let kept = reported.min(slot.0).max(Quantity::ZERO);
            slot.0 = slot.0.checked_sub(kept).unwrap_or(Quantity::ZERO);
            (kept, slot.1)
        };
        let mut cuts = Vec::new();
        for (dimension, reported) in resource.spec.capacity.iter_mut() {
            let (kept, bound) = take(dimension, *reported);
            if kept < *reported {
                cuts.push((dimension.clone(), *reported, kept, bound));
                *reported = kept;
            }
        }
        if !resource.spec.items.is_empty() {
            let count = resource.spec.items.len();
            let reported = Quantity::from_units(i64::try_from(count).unwrap_or(i64::MAX));
            let (kept, bound) = take(ITEMS_DIMENSION, reported);
            // Whole items only: a limit of 2.5 GPUs keeps two.
            let keep = usize::try_from(kept.nanos() / 1_000_000_000).unwrap_or(0);
            if keep < count {
                resource.spec.items.truncate(keep);
                cuts.push((ITEMS_DIMENSION.to_string(), reported, kept, bound));
            }
        }
        let name = resource.metadata.name.clone();
        out.cuts.extend(
            cuts.into_iter()
                .map(|(dimension, reported, kept, bound)| Cut {
                    resource: name.clone(),
                    class: class.clone(),
                    dimension,
                    reported,
                    kept,
                    bound,
                }),
        );
        let empty = resource.spec.items.is_empty()
            && resource.spec.capacity.values().all(Quantity::is_zero);
        if !empty {
            out.resources.push(resource);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use infraos_api::kinds::GpuInfo;

    fn inventory(cores: u32, memory_gib: u64, gpus: u32) -> Inventory {
        let mut inv = Inventory::default();
        inv.cpu.cores = cores;
        inv.memory.total_bytes = memory_gib << 30;
        for index in 0..gpus {
            inv.gpus.push(GpuInfo {
                index,
                vendor: "nvidia".into(),
                model: "H100".into(),
                memory_mib: 81920,
                uuid: format!("GPU-{index}"),
                pci_bus_id: String::new(),
                numa_node: None,
            });
        }
        inv
    }

    fn compute(name: &str, cpu: &str, memory: &str) -> Resource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Resource", "metadata": {"name": name},
            "spec": {"class": "compute", "node": "n", "capacity": {"cpu": cpu, "memory": memory}}
        }))
        .unwrap()
    }

    fn gpus(name: &str, n: usize) -> Resource {
        let items: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"name": format!("gpu{i}")}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Resource", "metadata": {"name": name},
            "spec": {"class": "gpu", "node": "n", "items": items}
        }))
        .unwrap()
    }

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn an_honest_report_is_published_unchanged() {
        let inv = inventory(8, 16, 2);
        let reported = vec![compute("n-compute", "7500m", "15Gi"), gpus("n-gpu", 2)];
        let b = bound(
            reported.clone(),
            &inv,
            &ClassAmounts::new(),
            &default_limits(),
        )
        .unwrap();
        let specs = |rs: &[Resource]| rs.iter().map(|r| r.spec.clone()).collect::<Vec<_>>();
        assert_eq!(specs(&b.resources), specs(&reported));
        assert!(b.cuts.is_empty() && b.message().is_none());
    }

    #[test]
    fn absurd_capacity_is_cut_to_the_inventory_then_to_the_limits() {
        // The inventory is a lie as big as the resources: the server default still holds.
        let inv = inventory(1_000_000, 1 << 30, 10_000);
        let b = bound(
            vec![
                compute("n-compute", "1000000", "1Ei"),
                gpus("n-gpu", 10_000),
            ],
            &inv,
            &ClassAmounts::new(),
            &default_limits(),
        )
        .unwrap();
        assert_eq!(b.resources[0].spec.capacity["cpu"], q("1024"));
        assert_eq!(b.resources[0].spec.capacity["memory"], q("16Ti"));
        assert_eq!(b.resources[1].spec.items.len(), 16);
        let message = b.message().unwrap();
        assert!(
            message.contains("n-compute compute.cpu: ") && message.contains(", 1024 published"),
            "{message}"
        );
        assert!(message.contains("nodeCapacityLimits"), "{message}");
        // Resources claiming more than the node's own inventory are cut to it.
        let inv = inventory(4, 8, 0);
        let b = bound(
            vec![compute("n-compute", "64", "8Gi"), gpus("n-gpu", 1)],
            &inv,
            &ClassAmounts::new(),
            &default_limits(),
        )
        .unwrap();
        assert_eq!(
            b.resources.len(),
            1,
            "no GPU in the inventory: none published"
        );
        assert_eq!(b.resources[0].spec.capacity["cpu"], q("4"));
        assert!(b.message().unwrap().contains("inventory"));
    }

    #[test]
    fn a_nodes_own_limits_override_the_servers_per_dimension() {
        let inv = inventory(4096, 64 << 10, 0);
        let mut node = ClassAmounts::new();
        node.entry("compute".into())
            .or_default()
            .insert("cpu".into(), q("2048"));
        let b = bound(
            vec![compute("n-compute", "4096", "64Ti")],
            &inv,
            &node,
            &default_limits(),
        )
        .unwrap();
        // cpu from the Node, memory from the server's default.
        assert_eq!(b.resources[0].spec.capacity["cpu"], q("2048"));
        assert_eq!(b.resources[0].spec.capacity["memory"], q("16Ti"));
        let reasons: Vec<&str> = b.cuts.iter().map(|c| c.bound.says()).collect();
        assert_eq!(
            reasons,
            [
                "the Node's spec.capacityLimits",
                "the server's nodeCapacityLimits"
            ]
        );
    }

    #[test]
    fn the_limit_is_shared_by_all_of_a_nodes_resources_of_a_class() {
        let inv = inventory(8, 16, 0);
        let b = bound(
            vec![
                compute("n-compute", "8", "8Gi"),
                compute("n-extra", "8", "8Gi"),
                compute("n-more", "1", "1Gi"),
            ],
            &inv,
            &ClassAmounts::new(),
            &default_limits(),
        )
        .unwrap();
        assert_eq!(b.resources.len(), 2, "the third has nothing left");
        assert_eq!(b.resources[1].spec.capacity["cpu"], Quantity::ZERO);
        assert_eq!(b.resources[1].spec.capacity["memory"], q("8Gi"));
        assert_eq!(b.cuts.len(), 3);
    }

    #[test]
    fn classes_without_a_limit_are_not_published_and_cidrs_are_refused() {
        let mut seats: Resource = serde_json::from_value(serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Resource", "metadata": {"name": "n-seats"},
            "spec": {"class": "license", "node": "n", "capacity": {"seats": "100"}}
        }))
        .unwrap();
        let inv = inventory(8, 16, 0);
        let b = bound(
            vec![seats.clone()],
            &inv,
            &ClassAmounts::new(),
            &default_limits(),
        )
        .unwrap();
        assert!(b.resources.is_empty());
        assert!(b.message().unwrap().contains("no capacity limit"));
        let mut node = ClassAmounts::new();
        node.entry("license".into())
            .or_default()
            .insert("seats".into(), q("10"));
        let b = bound(vec![seats.clone()], &inv, &node, &default_limits()).unwrap();
        assert_eq!(b.resources[0].spec.capacity["seats"], q("10"));
        seats.spec.cidr = Some("10.0.0.0/8".into());
        assert_eq!(
            bound(vec![seats], &inv, &node, &default_limits()).unwrap_err(),
            CapacityError::Cidr { index: 0 }
        );
    }
}
