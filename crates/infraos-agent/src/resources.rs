//! The node's Resources, derived from its inventory: `<node>-compute` (allocatable cpu and
//! memory: capacity minus the reserve) and, with GPUs, `<node>-gpu` (one item per GPU).

use std::collections::BTreeMap;

use infraos_api::Quantity;
use infraos_api::kinds::{DRIVER_LABEL_PREFIX, DriverFingerprint, Inventory, Resource};

/// Labels the node's Resources with each healthy driver (`driver.infraos.io/process: "true"`),
/// so a claim's `selector` can ask for a node that has one.
pub fn with_driver_labels(
    mut resources: Vec<Resource>,
    fingerprints: &BTreeMap<String, DriverFingerprint>,
) -> Vec<Resource> {
    for r in &mut resources {
        for (name, fingerprint) in fingerprints {
            if fingerprint.healthy {
                r.metadata
                    .labels
                    .insert(format!("{DRIVER_LABEL_PREFIX}{name}"), "true".to_string());
            }
        }
    }
    resources
}

pub fn from_inventory(
    node: &str,
    inventory: &Inventory,
    reserve_cpu: Quantity,
    reserve_memory: Quantity,
) -> Vec<Resource> {
    let cpu = Quantity::from_milli(i64::from(inventory.cpu.cores.max(1)) * 1000)
        .saturating_sub(reserve_cpu);
    let memory = Quantity::from_bytes(inventory.memory.total_bytes).saturating_sub(reserve_memory);
    let mut out = Vec::new();
    let compute = serde_json::json!({
        "apiVersion": infraos_api::API_VERSION,
        "kind": "Resource",
        "metadata": {"name": format!("{node}-compute")},
        "spec": {"class": "compute", "node": node, "capacity": {"cpu": cpu.to_string(), "memory": memory.to_string()}},
    });
    if let Ok(r) = serde_json::from_value(compute) {
        out.push(r);
    }
    if !inventory.gpus.is_empty() {
        let items: Vec<serde_json::Value> = inventory
            .gpus
            .iter()
            .map(|g| {
                let mut attributes = serde_json::json!({
                    "model": g.model,
                    "memoryGiB": g.memory_mib / 1024,
                    "uuid": g.uuid,
                });
                if let Some(numa) = g.numa_node {
                    attributes["numaNode"] = numa.into();
                }
                serde_json::json!({"name": format!("gpu{}", g.index), "attributes": attributes})
            })
            .collect();
        let gpu = serde_json::json!({
            "apiVersion": infraos_api::API_VERSION,
            "kind": "Resource",
            "metadata": {"name": format!("{node}-gpu")},
            "spec": {"class": "gpu", "node": node, "items": items},
        });
        if let Ok(r) = serde_json::from_value(gpu) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use infraos_api::kinds::GpuInfo;

    #[test]
    fn compute_is_capacity_minus_reserve_and_gpus_are_items() {
        let mut inv = Inventory::default();
        inv.cpu.cores = 8;
        inv.memory.total_bytes = 16 << 30;
        inv.gpus.push(GpuInfo {
            index: 0,
            vendor: "nvidia".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            memory_mib: 81559,
            uuid: "GPU-1".into(),
            pci_bus_id: String::new(),
            numa_node: Some(1),
        });
        let rs = from_inventory("n1", &inv, "500m".parse().unwrap(), "1Gi".parse().unwrap());
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].spec.capacity["cpu"].to_string(), "7500m");
        assert_eq!(rs[0].spec.capacity["memory"].to_string(), "15Gi");
        assert_eq!(rs[1].spec.items[0].name, "gpu0");
        assert_eq!(rs[1].metadata.name, "n1-gpu");
    }

    #[test]
    fn healthy_drivers_label_every_resource() {
        let mut inv = Inventory::default();
        inv.cpu.cores = 2;
        let fingerprints = BTreeMap::from([
            (
                "process".to_string(),
                DriverFingerprint {
                    healthy: true,
                    ..Default::default()
                },
            ),
            ("vm".to_string(), DriverFingerprint::default()),
        ]);
        let rs = with_driver_labels(
            from_inventory("n1", &inv, Quantity::from_milli(0), Quantity::from_milli(0)),
            &fingerprints,
        );
        let labels = &rs[0].metadata.labels;
        assert_eq!(
            labels.get("driver.infraos.io/process").map(String::as_str),
            Some("true")
        );
        assert!(!labels.contains_key("driver.infraos.io/vm"));
        for (key, _) in labels.iter() {
            infraos_api::labels::validate_key(key).unwrap();
        }
    }
}
