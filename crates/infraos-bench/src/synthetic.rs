//! A deterministic synthetic cluster for the benchmarks: the same manifests feed the
//! end-to-end run (through the API) and the scheduler-core run (straight into a snapshot), so
//! the two figures are comparable.
//!
//! Shape: nodes in 3 zones with a counted `compute` resource (64 cpu, 256Gi); every 4th node
//! also has 8 GPUs (H100 or A100); one IPv4 pool per zone. Claims: 80% compute only, 15%
//! compute + GPUs with a CEL selector, 5% compute + an address colocated in the node's zone.

use serde_json::{Value, json};

pub const TENANT: &str = "bench";
pub const PROJECT: &str = "bench";

pub struct Synthetic {
    /// Tenant, project and classes, in creation order.
    pub setup: Vec<Value>,
    pub nodes: Vec<Value>,
    pub resources: Vec<Value>,
    pub claims: Vec<Value>,
}

/// A small deterministic generator (no dependency, same numbers every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn meta(kind: &str, name: &str, ns: Option<&str>, labels: Value) -> Value {
    let mut m = json!({"name": name, "labels": labels});
    if let Some(ns) = ns {
        m["namespace"] = ns.into();
    }
    json!({"apiVersion": "infraos.io/v1", "kind": kind, "metadata": m})
}

/// The scheduler profile `--governance` runs use: two score plugins.
pub const GOVERNANCE_PROFILE: &str = "scheduler: {scores: {binpack: 1, spread: 1}}\n";

/// With `governance`, a tenant quota and a project quota over every class (wide enough to
/// admit all claims, so they are checked on every claim without changing placements) and two
/// priority classes, one claim in five of the higher.
///
/// With `devices`, every node has eight GPUs and every claim asks for one or two of them with
/// a CEL selector (the device-claims benchmark); otherwise one node in four has GPUs and 15%
/// of the claims want them.
pub fn cluster(nodes: usize, claims: usize, governance: bool, devices: bool) -> Synthetic {
    let mut setup = vec![
        {
            let mut t = meta("Tenant", TENANT, None, json!({}));
            t["spec"] = json!({"displayName": "Benchmarks"});
            t
        },
        {
            let mut p = meta("Project", PROJECT, None, json!({}));
            p["spec"] = json!({"tenant": TENANT});
            p
        },
    ];
    let mut compute = meta("ResourceClass", "compute", None, json!({}));
    compute["spec"] = json!({"kind": "counted", "dimensions": [{"name": "cpu", "unit": "cores"}, {"name": "memory", "unit": "bytes"}]});
    let mut gpu = meta("ResourceClass", "gpu", None, json!({}));
    gpu["spec"] = json!({"kind": "items", "attributes": {"model": "string", "memoryGiB": "int"}});
    let mut ipv4 = meta("ResourceClass", "ipv4", None, json!({}));
    ipv4["spec"] = json!({"kind": "items"});
    setup.extend([compute, gpu, ipv4]);
    if governance {
        let limits = json!({
            "compute": {"cpu": (nodes * 64).to_string(), "memory": format!("{}Gi", nodes * 256)},
            "gpu": {"count": (nodes * 2 + 8).to_string()},
            "ipv4": {"count": "12288"},
        });
        for (name, scope) in [("bench-tenant", "tenant"), ("bench-project", "project")] {
            let mut q = meta("Quota", name, None, json!({}));
            q["spec"] = json!({scope: TENANT, "limits": limits});
            setup.push(q);
        }
        for (name, value) in [("bench-low", 10), ("bench-high", 1000)] {
            let mut pc = meta("PriorityClass", name, None, json!({}));
            pc["spec"] = json!({"value": value});
            setup.push(pc);
        }
    }

    let mut node_objects = Vec::with_capacity(nodes);
    let mut resources = Vec::with_capacity(nodes + nodes / 4 + 3);
    for i in 0..nodes {
        let name = format!("node-{i:05}");
        let zone = format!("zone-{}", i % 3);
        let mut node = meta(
            "Node",
            &name,
            None,
            json!({"zone": zone, "rack": format!("rack-{}", i / 40)}),
        );
        node["spec"] = json!({});
        node_objects.push(node);
        let mut c = meta("Resource", &format!("{name}-compute"), None, json!({}));
        c["spec"] =
            json!({"class": "compute", "node": name, "capacity": {"cpu": "64", "memory": "256Gi"}});
        resources.push(c);
        if devices || i % 4 == 0 {
            let (model, mem) = if i % 8 == 0 || (devices && i % 2 == 0) {
                ("H100", 80)
            } else {
                ("A100", 40)
            };
            let items: Vec<Value> = (0..8).map(|g| json!({"name": format!("gpu{g}")})).collect();
            let mut g = meta("Resource", &format!("{name}-gpu"), None, json!({}));
            g["spec"] = json!({"class": "gpu", "node": name, "items": items, "attributes": {"model": model, "memoryGiB": mem}});
            resources.push(g);
        }
    }
    for z in 0..3 {
        let mut pool = meta(
            "Resource",
            &format!("ipv4-zone-{z}"),
            None,
            json!({"zone": format!("zone-{z}")}),
        );
        pool["spec"] = json!({"class": "ipv4", "cidr": format!("10.{z}.0.0/20")});
        resources.push(pool);
    }

    let mut rng = Lcg(42);
    let mut claim_objects = Vec::with_capacity(claims);
    for i in 0..claims {
        let cpu = 1 + rng.below(4);
        let mem = 2 * (1 + rng.below(8));
        let mut requests = vec![
            json!({"name": "main", "class": "compute", "amount": {"cpu": cpu.to_string(), "memory": format!("{mem}Gi")}}),
        ];
        let mut spec = json!({"lease": {"duration": "1h"}});
        let roll = if devices {
            80 + rng.below(15)
        } else {
            rng.below(100)
        };
        match roll {
            0..=79 => {}
            80..=94 => {
                let selector = match rng.below(if devices { 3 } else { 2 }) {
                    0 => "item.attributes.model == \"H100\"",
                    1 => "item.attributes.memoryGiB >= 40",
                    _ => "item.attributes.model == \"A100\" && item.attributes.memoryGiB >= 40",
                };
                requests.push(json!({"name": "accel", "class": "gpu", "count": 1 + rng.below(2), "selector": selector}));
            }
            _ => {
                requests.push(json!({"name": "addr", "class": "ipv4", "count": 1}));
                spec["topology"] = json!({"colocate": ["zone"]});
            }
        }
        spec["requests"] = Value::Array(requests);
        if governance {
            let class = if i % 5 == 0 {
                "bench-high"
            } else {
                "bench-low"
            };
            spec["priorityClassName"] = class.into();
        }
        let mut claim = meta(
            "Claim",
            &format!("claim-{i:06}"),
            Some(PROJECT),
            json!({"bench": "true"}),
        );
        claim["spec"] = spec;
        claim_objects.push(claim);
    }
    Synthetic {
        setup,
        nodes: node_objects,
        resources,
        claims: claim_objects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_object_validates() {
        for (governance, devices) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = cluster(40, 200, governance, devices);
            check_all(&s);
        }
        let s = cluster(40, 200, false, false);
        assert_eq!(s.nodes.len(), 40);
        assert_eq!(s.resources.len(), 40 + 10 + 3);
        let again = cluster(40, 200, false, false);
        assert_eq!(again.claims, s.claims, "deterministic");
        let devices = cluster(40, 200, false, true);
        assert_eq!(
            devices.resources.len(),
            40 + 40 + 3,
            "a GPU resource on every node"
        );
        assert!(
            devices
                .claims
                .iter()
                .all(|c| c.to_string().contains("\"class\":\"gpu\"")),
            "every device claim asks for GPUs"
        );
    }

    fn check_all(s: &Synthetic) {
        for v in s
            .setup
            .iter()
            .chain(&s.nodes)
            .chain(&s.resources)
            .chain(&s.claims)
        {
            let kind = v["kind"].as_str().unwrap();
            let info = infraos_api::object::kinds()
                .iter()
                .find(|k| k.kind == kind)
                .unwrap();
            infraos_api::object::validate_value(info, v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
    }
}
