//! Scenario tests and property tests for the planner and the snapshot.

use std::collections::BTreeMap;

use infraos_api::kinds::*;
use infraos_api::{AttributeType, AttributeValue, Item, Labels, Quantity};
use proptest::prelude::*;

use crate::{AllocationMeta, Outcome, Profile, Scheduler, Snapshot};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn q(s: &str) -> Quantity {
    s.parse().unwrap()
}

struct Cluster {
    snap: Snapshot,
}

impl Cluster {
    fn new() -> Self {
        let mut snap = Snapshot::new();
        snap.upsert_class(
            "compute",
            &ResourceClassSpec {
                kind: ClassKind::Counted,
                dimensions: vec![
                    Dimension {
                        name: "cpu".into(),
                        unit: None,
                    },
                    Dimension {
                        name: "memory".into(),
                        unit: None,
                    },
                ],
                ..Default::default()
            },
        );
        snap.upsert_class(
            "gpu",
            &ResourceClassSpec {
                kind: ClassKind::Items,
                attributes: [
                    ("model".to_string(), AttributeType::String),
                    ("memoryGiB".to_string(), AttributeType::Int),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            },
        );
        snap.upsert_class(
            "ipv4",
            &ResourceClassSpec {
                kind: ClassKind::Items,
                ..Default::default()
            },
        );
        snap.upsert_class(
            "license",
            &ResourceClassSpec {
                kind: ClassKind::Counted,
                dimensions: vec![Dimension {
                    name: "seats".into(),
                    unit: None,
                }],
                ..Default::default()
            },
        );
        Cluster { snap }
    }

    fn node(mut self, name: &str, node_labels: &[(&str, &str)], cpu: &str, mem: &str) -> Self {
        self.snap
            .upsert_node(name, &labels(node_labels), &NodeSpec::default(), None);
        self.snap.upsert_resource(
            &format!("{name}-compute"),
            &Labels::new(),
            &ResourceSpec {
                class: "compute".into(),
                node: Some(name.into()),
                capacity: [("cpu".to_string(), q(cpu)), ("memory".to_string(), q(mem))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        self
    }

    fn gpus(mut self, node: &str, models: &[(&str, i64)]) -> Self {
        let items = models
            .iter()
            .enumerate()
            .map(|(i, (model, mem))| Item {
                name: format!("gpu{i}"),
                attributes: [
                    (
                        "model".to_string(),
                        AttributeValue::String(model.to_string()),
                    ),
                    ("memoryGiB".to_string(), AttributeValue::Int(*mem)),
                ]
                .into_iter()
                .collect(),
            })
            .collect();
        self.snap.upsert_resource(
            &format!("{node}-gpu"),
            &Labels::new(),
            &ResourceSpec {
                class: "gpu".into(),
                node: Some(node.into()),
                items,
                ..Default::default()
            },
        );
        self
    }

    fn ip_pool(mut self, name: &str, zone: &str, cidr: &str) -> Self {
        self.snap.upsert_resource(
            name,
            &labels(&[("zone", zone)]),
            &ResourceSpec {
                class: "ipv4".into(),
                cidr: Some(cidr.into()),
                ..Default::default()
            },
        );
        self
    }

    fn licenses(mut self, name: &str, seats: i64) -> Self {
        self.snap.upsert_resource(
            name,
            &Labels::new(),
            &ResourceSpec {
                class: "license".into(),
                capacity: [("seats".to_string(), Quantity::from_units(seats))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        self
    }
}

fn claim(name: &str, spec: serde_json::Value) -> Claim {
    let v = serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p"},
        "spec": spec,
    });
    infraos_api::object::decode(&v).unwrap()
}

fn cpu_claim(name: &str, cpu: &str) -> Claim {
    claim(
        name,
        serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": cpu, "memory": "1Gi"}}]}),
    )
}

fn plan_one(sched: &mut Scheduler, snap: &Snapshot, c: &Claim) -> Outcome {
    let key = format!("p/{}", c.metadata.name);
    sched.plan(snap, &[(key, c)]).decisions.remove(0).outcome
}

fn placed(o: &Outcome) -> &crate::Placement {
    match o {
        Outcome::Placed(p) => p,
        Outcome::Unschedulable(e) => panic!("unschedulable: {}", e.message()),
        Outcome::Preempt(p) => panic!("preempts {:?}", p.victims),
    }
}

fn unschedulable(o: &Outcome) -> String {
    match o {
        Outcome::Placed(p) => panic!("placed on {:?}", p.node),
        Outcome::Unschedulable(e) => e.message(),
        Outcome::Preempt(p) => panic!("preempts {:?}", p.victims),
    }
}

fn profile(scores: &[(&str, f64)]) -> Profile {
    Profile {
        scores: scores.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Profile::default()
    }
}

#[test]
fn binpack_prefers_the_fuller_node_and_spread_the_emptier() {
    let mut c = Cluster::new()
        .node("a", &[], "8", "32Gi")
        .node("b", &[], "8", "32Gi");
    c.snap.apply_allocation(
        "p/existing",
        &[AllocatedResource {
            request: "compute".into(),
            resource: "b-compute".into(),
            class: "compute".into(),
            amount: [("cpu".to_string(), q("4"))].into_iter().collect(),
            items: vec![],
        }],
        AllocationMeta::default(),
    );
    let mut binpack = Scheduler::new(profile(&[("binpack", 1.0)])).unwrap();
    let p = plan_one(&mut binpack, &c.snap, &cpu_claim("x", "2"));
    assert_eq!(placed(&p).node.as_deref(), Some("b"));
    assert_eq!(
        placed(&p).runner_up.as_ref().unwrap().node.as_deref(),
        Some("a")
    );
    assert!(placed(&p).score.plugins.contains_key("binpack"));
    let mut spread = Scheduler::new(profile(&[("spread", 1.0)])).unwrap();
    let p = plan_one(&mut spread, &c.snap, &cpu_claim("x", "2"));
    assert_eq!(placed(&p).node.as_deref(), Some("a"));
}

#[test]
fn cel_selector_picks_matching_items() {
    let c = Cluster::new().node("a", &[], "8", "32Gi").gpus(
        "a",
        &[("A100", 40), ("H100", 80), ("H100", 80), ("H100", 40)],
    );
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let cl = claim(
        "train",
        serde_json::json!({"requests": [
            {"class": "compute", "amount": {"cpu": "2"}},
            {"class": "gpu", "count": 2, "selector": "item.attributes.model == \"H100\" && item.attributes.memoryGiB >= 80"}
        ]}),
    );
    let p = plan_one(&mut s, &c.snap, &cl);
    let gpu = placed(&p)
        .resources
        .iter()
        .find(|r| r.class == "gpu")
        .unwrap();
    assert_eq!(gpu.items, vec!["gpu1", "gpu2"]);
    let three = claim(
        "big",
        serde_json::json!({"requests": [{"class": "gpu", "count": 3, "selector": "item.attributes.model == \"H100\" && item.attributes.memoryGiB >= 80"}]}),
    );
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &three)),
        "0/1 nodes are available: 1 insufficient gpu."
    );
}

#[test]
fn explanation_counts_each_reason() {
    let mut c = Cluster::new()
        .node("a", &[("zone", "x")], "8", "32Gi")
        .gpus("a", &[("H100", 80)])
        .node("b", &[("zone", "y")], "8", "32Gi")
        .gpus("b", &[("H100", 80)])
        .node("c", &[("zone", "y")], "8", "32Gi")
        .gpus("c", &[("H100", 80)])
        .node("d", &[("zone", "y")], "8", "32Gi");
    // b's GPU is taken.
    c.snap.apply_allocation(
        "p/other",
        &[AllocatedResource {
            request: "gpu".into(),
            resource: "b-gpu".into(),
            class: "gpu".into(),
            amount: BTreeMap::new(),
            items: vec!["gpu0".into()],
        }],
        AllocationMeta::default(),
    );
    c.snap.upsert_node(
        "c",
        &labels(&[("zone", "y")]),
        &NodeSpec {
            unschedulable: true,
            ..Default::default()
        },
        None,
    );
    let cl = claim(
        "g",
        serde_json::json!({"requests": [{"class": "gpu", "count": 1}], "selector": "zone=y"}),
    );
    let mut s = Scheduler::new(Profile::default()).unwrap();
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &cl)),
        "0/4 nodes are available: 1 insufficient gpu, 1 no gpu, 1 node unschedulable, 1 selector mismatch."
    );
}

#[test]
fn not_ready_nodes_are_skipped() {
    let mut c = Cluster::new().node("a", &[], "8", "32Gi");
    let status = NodeStatus {
        conditions: vec![infraos_api::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: None,
            message: None,
            last_transition_time: None,
        }],
        heartbeat_time: None,
        ..Default::default()
    };
    c.snap
        .upsert_node("a", &Labels::new(), &NodeSpec::default(), Some(&status));
    let mut s = Scheduler::new(Profile::default()).unwrap();
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &cpu_claim("x", "1"))),
        "0/1 nodes are available: 1 node not ready."
    );
}

#[test]
fn pools_are_allocated_alongside_in_the_same_zone() {
    let c = Cluster::new()
        .node("a", &[("zone", "east")], "8", "32Gi")
        .ip_pool("pool-west", "west", "10.1.0.0/30")
        .ip_pool("pool-east", "east", "10.2.0.0/30");
    let cl = claim(
        "web",
        serde_json::json!({"requests": [
            {"class": "compute", "amount": {"cpu": "1"}},
            {"class": "ipv4", "count": 1}
        ], "topology": {"colocate": ["zone"]}}),
    );
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let p = plan_one(&mut s, &c.snap, &cl);
    let ip = placed(&p)
        .resources
        .iter()
        .find(|r| r.class == "ipv4")
        .unwrap();
    assert_eq!(ip.resource, "pool-east");
    assert_eq!(ip.items, vec!["10.2.0.1"]);
}

#[test]
fn pool_only_claims_need_no_node() {
    let c = Cluster::new().licenses("matlab", 2);
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let cl = claim(
        "seat",
        serde_json::json!({"requests": [{"class": "license", "amount": {"seats": 2}}]}),
    );
    let p = plan_one(&mut s, &c.snap, &cl);
    assert_eq!(placed(&p).node, None);
    assert_eq!(placed(&p).resources[0].resource, "matlab");
    let three = claim(
        "seat3",
        serde_json::json!({"requests": [{"class": "license", "amount": {"seats": 3}}]}),
    );
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &three)),
        "0/1 pools are available: 1 insufficient license."
    );
}

#[test]
fn no_pools_at_all_is_explained_plainly() {
    let c = Cluster::new().node("a", &[], "8", "32Gi");
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let cl = claim(
        "seat",
        serde_json::json!({"requests": [{"class": "license", "amount": {"seats": 1}}]}),
    );
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &cl)),
        "0/0 pools are available: no license."
    );
}

#[test]
fn node_count_follows_registrations() {
    let mut c = Cluster::new()
        .node("a", &[], "8", "32Gi")
        .node("b", &[], "8", "32Gi");
    assert_eq!(c.snap.node_count(), 2);
    c.snap
        .upsert_node("a", &Labels::new(), &NodeSpec::default(), None);
    assert_eq!(c.snap.node_count(), 2, "re-registering counts once");
    c.snap.remove_node("b");
    c.snap.remove_node("b");
    assert_eq!(c.snap.node_count(), 1);
    c.snap
        .upsert_node("b", &Labels::new(), &NodeSpec::default(), None);
    assert_eq!(c.snap.node_count(), 2);
}

#[test]
fn a_batch_never_double_books() {
    let c = Cluster::new().node("a", &[], "10", "32Gi");
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let one = cpu_claim("one", "6");
    let two = cpu_claim("two", "6");
    let plan = s.plan(&c.snap, &[("p/one".into(), &one), ("p/two".into(), &two)]);
    assert!(matches!(plan.decisions[0].outcome, Outcome::Placed(_)));
    assert!(matches!(
        plan.decisions[1].outcome,
        Outcome::Unschedulable(_)
    ));
}

#[test]
fn two_requests_on_one_resource_add_up() {
    let c = Cluster::new().node("a", &[], "10", "32Gi");
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let cl = claim(
        "pair",
        serde_json::json!({"requests": [
            {"name": "x", "class": "compute", "amount": {"cpu": "6"}},
            {"name": "y", "class": "compute", "amount": {"cpu": "6"}}
        ]}),
    );
    assert!(matches!(
        plan_one(&mut s, &c.snap, &cl),
        Outcome::Unschedulable(_)
    ));
}

#[test]
fn unknown_class_or_dimension_is_explained() {
    let c = Cluster::new().node("a", &[], "10", "32Gi");
    let mut s = Scheduler::new(Profile::default()).unwrap();
    let cl = claim(
        "x",
        serde_json::json!({"requests": [{"class": "fpga", "count": 1}]}),
    );
    assert!(unschedulable(&plan_one(&mut s, &c.snap, &cl)).contains("unknown class fpga"));
    let cl = claim(
        "y",
        serde_json::json!({"requests": [{"class": "compute", "amount": {"disk": "1"}}]}),
    );
    assert!(unschedulable(&plan_one(&mut s, &c.snap, &cl)).contains("has no dimension disk"));
}

#[test]
fn allocations_apply_idempotently_and_fits_rechecks() {
    let mut c = Cluster::new()
        .node("a", &[], "4", "8Gi")
        .gpus("a", &[("H100", 80)]);
    let part = AllocatedResource {
        request: "compute".into(),
        resource: "a-compute".into(),
        class: "compute".into(),
        amount: [("cpu".to_string(), q("3"))].into_iter().collect(),
        items: vec![],
    };
    c.snap.apply_allocation(
        "p/x",
        std::slice::from_ref(&part),
        AllocationMeta::default(),
    );
    c.snap.apply_allocation(
        "p/x",
        std::slice::from_ref(&part),
        AllocationMeta::default(),
    );
    assert_eq!(c.snap.free("a-compute", "cpu"), q("1"));
    assert!(c.snap.fits(std::slice::from_ref(&part)).is_err());
    c.snap.remove_allocation("p/x");
    c.snap.remove_allocation("p/x");
    assert_eq!(c.snap.free("a-compute", "cpu"), q("4"));
    let gpu = AllocatedResource {
        request: "gpu".into(),
        resource: "a-gpu".into(),
        class: "gpu".into(),
        amount: BTreeMap::new(),
        items: vec!["gpu0".into(), "gpu0".into()],
    };
    assert!(
        c.snap.fits(&[gpu]).is_err(),
        "an item listed twice does not fit"
    );
    // A resource re-published by its agent keeps the usage of the allocations on it.
    c.snap.apply_allocation(
        "p/x",
        std::slice::from_ref(&part),
        AllocationMeta::default(),
    );
    c.snap.upsert_resource(
        "a-compute",
        &Labels::new(),
        &ResourceSpec {
            class: "compute".into(),
            node: Some("a".into()),
            capacity: [("cpu".to_string(), q("4"))].into_iter().collect(),
            ..Default::default()
        },
    );
    assert_eq!(c.snap.free("a-compute", "cpu"), q("1"));
}

#[test]
fn sampling_rotates_over_nodes() {
    let mut c = Cluster::new();
    for i in 0..300 {
        c = c.node(&format!("n{i:03}"), &[], "8", "32Gi");
    }
    let mut s = Scheduler::new(profile(&[("spread", 1.0)])).unwrap();
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..10 {
        let cl = cpu_claim(&format!("c{i}"), "1");
        let p = plan_one(&mut s, &c.snap, &cl);
        nodes.insert(placed(&p).node.clone().unwrap());
        assert!(placed(&p).score.feasible <= 40, "stops after the sample");
    }
    assert!(nodes.len() > 1, "rotation spreads the scan start");
}

// ---- property tests ------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Spec {
    nodes: Vec<(u8, u8, u8)>,        // (cpu, gpus, zone)
    claims: Vec<(u8, u8, bool, u8)>, // (cpu, gpus, with ip, zone selector or 255)
    releases: Vec<u8>,
}

fn cluster_from(spec: &Spec) -> Snapshot {
    let mut c = Cluster::new();
    for (i, (cpu, gpus, zone)) in spec.nodes.iter().enumerate() {
        let name = format!("n{i}");
        let zone = format!("z{}", zone % 3);
        c = c.node(
            &name,
            &[("zone", &zone)],
            &(cpu % 16 + 1).to_string(),
            "64Gi",
        );
        if *gpus % 5 > 0 {
            let models: Vec<(&str, i64)> = (0..gpus % 5)
                .map(|g| {
                    if g % 2 == 0 {
                        ("H100", 80)
                    } else {
                        ("A100", 40)
                    }
                })
                .collect();
            c = c.gpus(&name, &models);
        }
    }
    c = c
        .ip_pool("ip-z0", "z0", "10.0.0.0/29")
        .ip_pool("ip-z1", "z1", "10.0.1.0/29");
    c.snap
}

fn claim_from(i: usize, (cpu, gpus, ip, zone): (u8, u8, bool, u8)) -> Claim {
    let mut requests = vec![
        serde_json::json!({"class": "compute", "amount": {"cpu": format!("{}", cpu % 8 + 1)}}),
    ];
    if gpus % 3 > 0 {
        requests.push(serde_json::json!({"class": "gpu", "count": gpus % 3, "selector": "item.attributes.memoryGiB >= 80"}));
    }
    if ip {
        requests.push(serde_json::json!({"class": "ipv4", "count": 1}));
    }
    let mut spec = serde_json::json!({"requests": requests, "topology": {"colocate": ["zone"]}});
    if zone < 3 {
        spec["selector"] = format!("zone=z{zone}").into();
    }
    claim(&format!("c{i}"), spec)
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..12),
        proptest::collection::vec((any::<u8>(), any::<u8>(), any::<bool>(), 0u8..5), 1..40),
        proptest::collection::vec(any::<u8>(), 0..10),
    )
        .prop_map(|(nodes, claims, releases)| Spec {
            nodes,
            claims,
            releases,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Two schedulers plan on the same (stale) snapshot, releases happen in between, and the
    /// applier re-checks each placement with `fits` before applying: capacity is never
    /// exceeded and no item is ever held twice, whatever the interleaving.
    #[test]
    fn capacity_is_never_exceeded(spec in arb_spec(), split in 0usize..40) {
        let mut snap = cluster_from(&spec);
        let claims: Vec<Claim> = spec.claims.iter().enumerate().map(|(i, c)| claim_from(i, *c)).collect();
        let keyed: Vec<(String, &Claim)> = claims.iter().map(|c| (format!("p/{}", c.metadata.name), c)).collect();
        let split = split.min(keyed.len());
        let mut first = Scheduler::new(Profile::default()).unwrap();
        let mut second = Scheduler::new(profile(&[("spread", 1.0)])).unwrap();
        // Both plans are made before either is applied: the second is stale for the first.
        let plan_a = first.plan(&snap, &keyed[..split]);
        let plan_b = second.plan(&snap, &keyed);
        let mut applied = Vec::new();
        for (n, decision) in plan_a.decisions.iter().chain(plan_b.decisions.iter()).enumerate() {
            if let Some(r) = spec.releases.get(n)
                && !applied.is_empty() {
                    let key: String = applied.remove(*r as usize % applied.len());
                    snap.remove_allocation(&key);
                }
            if let Outcome::Placed(p) = &decision.outcome {
                if snap.allocation(&decision.claim_key).is_some() {
                    continue; // already placed by the other plan
                }
                if snap.fits(&p.resources).is_ok() {
                    snap.apply_allocation(&decision.claim_key, &p.resources, AllocationMeta::default());
                    applied.push(decision.claim_key.clone());
                }
            }
            prop_assert!(snap.check_invariants().is_ok(), "{:?}", snap.check_invariants());
        }
    }

    /// Every placement honours the claim: the label selector, the CEL selector, colocation,
    /// and node readiness.
    #[test]
    fn placements_honour_constraints(spec in arb_spec()) {
        let snap = cluster_from(&spec);
        let claims: Vec<Claim> = spec.claims.iter().enumerate().map(|(i, c)| claim_from(i, *c)).collect();
        let keyed: Vec<(String, &Claim)> = claims.iter().map(|c| (format!("p/{}", c.metadata.name), c)).collect();
        let mut s = Scheduler::new(Profile::default()).unwrap();
        let plan = s.plan(&snap, &keyed);
        for (decision, (_, claim)) in plan.decisions.iter().zip(&keyed) {
            let Outcome::Placed(p) = &decision.outcome else { continue };
            let node = snap.node_by_name(p.node.as_deref().unwrap()).unwrap();
            prop_assert!(node.ready && node.registered && !node.unschedulable);
            let node_zone = node.labels.get("zone").cloned();
            for part in &p.resources {
                let r = snap.resource_by_name(&part.resource).unwrap();
                prop_assert_eq!(snap.label(r, "zone").map(str::to_string), node_zone.clone(), "colocated");
                if let Some(sel) = &claim.spec.selector {
                    prop_assert!(sel.matches_with(|k| snap.label(r, k)));
                }
                if part.class == "gpu" {
                    for item in &part.items {
                        let idx = r.item_index[item];
                        prop_assert_eq!(&r.items[idx].attributes["memoryGiB"], &AttributeValue::Int(80));
                    }
                }
            }
        }
    }

    /// Planning is a function of its inputs: the same snapshot and claims give the same plan
    /// from a fresh scheduler, which is what makes decisions replayable.
    #[test]
    fn planning_is_deterministic(spec in arb_spec()) {
        let snap = cluster_from(&spec);
        let claims: Vec<Claim> = spec.claims.iter().enumerate().map(|(i, c)| claim_from(i, *c)).collect();
        let keyed: Vec<(String, &Claim)> = claims.iter().map(|c| (format!("p/{}", c.metadata.name), c)).collect();
        let a = Scheduler::new(Profile::default()).unwrap().plan(&snap, &keyed);
        let b = Scheduler::new(Profile::default()).unwrap().plan(&snap, &keyed);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn workloads_go_only_to_nodes_with_the_execute_tier() {
    let mut c = Cluster::new()
        .node("plain", &[], "8", "32Gi")
        .node("agent", &[], "8", "32Gi");
    c.snap.upsert_node(
        "agent",
        &labels(&[]),
        &NodeSpec {
            tiers: vec![Tier::Execute],
            ..Default::default()
        },
        None,
    );
    let cl = claim(
        "w",
        serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": "1"}}],
                           "workload": {"command": "/bin/true"}}),
    );
    let mut s = Scheduler::new(Profile::default()).unwrap();
    match plan_one(&mut s, &c.snap, &cl) {
        Outcome::Placed(p) => assert_eq!(p.node.as_deref(), Some("agent")),
        other => panic!("{other:?}"),
    }
    c.snap
        .upsert_node("agent", &labels(&[]), &NodeSpec::default(), None);
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &cl)),
        "0/2 nodes are available: 2 node lacks the execute tier."
    );
}

#[test]
fn items_claims_scan_only_nodes_with_free_items() {
    let mut c = Cluster::new();
    for n in ["a", "b", "c", "d"] {
        c = c.node(n, &[], "8", "32Gi").gpus(n, &[("H100", 80)]);
    }
    let take = |snap: &mut Snapshot, key: &str, node: &str| {
        snap.apply_allocation(
            key,
            &[AllocatedResource {
                request: "gpu".into(),
                resource: format!("{node}-gpu"),
                class: "gpu".into(),
                amount: BTreeMap::new(),
                items: vec!["gpu0".into()],
            }],
            AllocationMeta::default(),
        );
    };
    assert_eq!(
        c.snap.nodes_with_free_items("gpu"),
        c.snap.nodes_with("gpu")
    );
    for n in ["a", "b", "d"] {
        take(&mut c.snap, &format!("p/{n}"), n);
    }
    c.snap.check_invariants().unwrap();
    let free: Vec<&str> = c
        .snap
        .nodes_with_free_items("gpu")
        .iter()
        .map(|&n| c.snap.node(n).name.as_str())
        .collect();
    assert_eq!(free, ["c"]);
    let cl = claim(
        "g",
        serde_json::json!({"requests": [{"class": "gpu", "count": 1}]}),
    );
    let mut s = Scheduler::new(Profile::default()).unwrap();
    match &plan_one(&mut s, &c.snap, &cl) {
        Outcome::Placed(p) => assert_eq!(p.node.as_deref(), Some("c")),
        other => panic!("expected c, got {other:?}"),
    }
    take(&mut c.snap, "p/c", "c");
    assert!(c.snap.nodes_with_free_items("gpu").is_empty());
    // The explanation still accounts for every node, as a full scan would.
    assert_eq!(
        unschedulable(&plan_one(&mut s, &c.snap, &cl)),
        "0/4 nodes are available: 4 insufficient gpu."
    );
    // Freeing a GPU, or a node gone and back, puts its node back in the index, in name order.
    c.snap.remove_allocation("p/b");
    c.snap.remove_allocation("p/a");
    let free: Vec<&str> = c
        .snap
        .nodes_with_free_items("gpu")
        .iter()
        .map(|&n| c.snap.node(n).name.as_str())
        .collect();
    assert_eq!(free, ["a", "b"]);
    c.snap.remove_resource("b-gpu");
    assert_eq!(c.snap.nodes_with_free_items("gpu").len(), 1);
    c.snap.check_invariants().unwrap();
}
