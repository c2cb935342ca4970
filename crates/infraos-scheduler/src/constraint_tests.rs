//! Placement constraint scenarios: taints, affinity and anti-affinity, topology spread, soft
//! terms, tenant compliance and isolation; and the relative score plugins.

use std::collections::{BTreeMap, HashMap};

use infraos_api::kinds::*;
use infraos_api::{Labels, Quantity};

use crate::planner::UNSCHEDULABLE;
use crate::test_fixtures::*;
use crate::{AllocationMeta, Outcome, Profile, Scheduler, Snapshot};

#[test]
pub(crate) fn taints_keep_claims_off_reserved_nodes_unless_tolerated() {
    let mut snap = cluster(1, 4);
    node(&mut snap, "gpu", 4, &[]);
    snap.upsert_node(
        "gpu",
        &Labels::new(),
        &NodeSpec {
            taints: vec![Taint {
                key: "reserved".into(),
                value: Some("ml".into()),
            }],
            ..Default::default()
        },
        None,
    );
    place_all(&mut snap, &[claim("p", "fill", 4, serde_json::json!({}))]);
    let plain = claim("p", "plain", 2, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&plain]);
    let (_, message) = explanation(outcome_of(&p, "p/plain"));
    assert!(
        message.contains("1 untolerated taint reserved"),
        "{message}"
    );
    let wrong = claim(
        "p",
        "wrong",
        2,
        serde_json::json!({"tolerations": [{"key": "reserved", "value": "web"}]}),
    );
    let p = plan(&mut scheduler(), &snap, &[&wrong]);
    assert_eq!(explanation(outcome_of(&p, "p/wrong")).0, UNSCHEDULABLE);
    for (name, tolerations) in [
        (
            "equal",
            serde_json::json!([{"key": "reserved", "value": "ml"}]),
        ),
        (
            "key",
            serde_json::json!([{"key": "reserved", "operator": "Exists"}]),
        ),
        ("all", serde_json::json!([{"operator": "Exists"}])),
    ] {
        let c = claim(
            "p",
            name,
            2,
            serde_json::json!({"tolerations": tolerations}),
        );
        let p = plan(&mut scheduler(), &snap, &[&c]);
        assert_eq!(
            placement(outcome_of(&p, &key(&c))).node.as_deref(),
            Some("gpu"),
            "{name}"
        );
    }
}

#[test]
pub(crate) fn affinity_and_anti_affinity_between_claims_over_a_topology_key() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
        node(&mut snap, name, 8, &[("zone", zone)]);
    }
    let labelled = |name: &str, app: &str, extra: serde_json::Value| {
        let mut c = claim("p", name, 1, extra);
        c.metadata.labels.insert("app".into(), app.into());
        c
    };
    // Three replicas that refuse to share a zone: one lands in each zone, in one batch.
    let anti = serde_json::json!({"antiAffinity": [{"selector": "app=db", "topologyKey": "zone"}]});
    let replicas: Vec<Claim> = (0..3)
        .map(|i| labelled(&format!("db{i}"), "db", anti.clone()))
        .collect();
    let by_key: HashMap<String, Claim> = replicas.iter().map(|c| (key(c), c.clone())).collect();
    let refs: Vec<&Claim> = replicas.iter().collect();
    let p = plan(&mut scheduler(), &snap, &refs);
    let mut zones: Vec<String> = p
        .decisions
        .iter()
        .map(|d| {
            let n = placement(&d.outcome).node.clone().unwrap();
            snap.node_by_name(&n).unwrap().labels["zone"].clone()
        })
        .collect();
    zones.sort();
    assert_eq!(zones, ["a", "b", "c"]);
    apply(&mut snap, &p, &by_key);
    // A fourth has no zone left.
    let fourth = labelled("db3", "db", anti);
    let p = plan(&mut scheduler(), &snap, &[&fourth]);
    let (_, message) = explanation(outcome_of(&p, "p/db3"));
    assert!(
        message.contains("anti-affinity: a matching claim in this zone"),
        "{message}"
    );
    // A cache that must share a node with a db replica (`infraos.io/node` is the node name).
    let cache = claim(
        "p",
        "cache",
        1,
        serde_json::json!({"affinity": [{"selector": "app=db", "topologyKey": "infraos.io/node"}]}),
    );
    let p = plan(&mut scheduler(), &snap, &[&cache]);
    let landed = placement(outcome_of(&p, "p/cache")).node.clone().unwrap();
    let db_nodes: Vec<String> = ["p/db0", "p/db1", "p/db2"]
        .iter()
        .map(|k| snap.allocation_meta(k).unwrap().node.clone().unwrap())
        .collect();
    assert!(
        db_nodes.contains(&landed),
        "{landed} not among {db_nodes:?}"
    );
    // Affinity to claims that exist nowhere: wait, unless the claim is the first of them.
    let lonely = claim(
        "p",
        "lonely",
        1,
        serde_json::json!({"affinity": [{"selector": "app=web", "topologyKey": "zone"}]}),
    );
    let p = plan(&mut scheduler(), &snap, &[&lonely]);
    let (_, message) = explanation(outcome_of(&p, "p/lonely"));
    assert!(
        message.contains("affinity: no matching claim in this zone"),
        "{message}"
    );
    let first = labelled(
        "web0",
        "web",
        serde_json::json!({"affinity": [{"selector": "app=web", "topologyKey": "zone"}]}),
    );
    let p = plan(&mut scheduler(), &snap, &[&first]);
    placement(outcome_of(&p, "p/web0"));
}

pub(crate) fn zoned_cluster(zones: &[(&str, &str)], cpu: i64) -> Snapshot {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for (name, zone) in zones {
        node(&mut snap, name, cpu, &[("zone", zone)]);
    }
    snap
}

pub(crate) fn labelled(name: &str, app: &str, extra: serde_json::Value) -> Claim {
    let mut c = claim("p", name, 1, extra);
    c.metadata.labels.insert("app".into(), app.into());
    c
}

pub(crate) fn zone_of(snap: &Snapshot, o: &Outcome) -> String {
    let n = placement(o).node.clone().unwrap();
    snap.node_by_name(&n).unwrap().labels["zone"].clone()
}

pub(crate) fn zone_counts(snap: &Snapshot, app: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for meta in snap.allocations_in_project("p") {
        if meta.labels.get("app").map(String::as_str) == Some(app) {
            let n = meta.node.as_deref().unwrap();
            *counts
                .entry(snap.node_by_name(n).unwrap().labels["zone"].clone())
                .or_insert(0) += 1;
        }
    }
    counts
}

#[test]
pub(crate) fn topology_spread_keeps_the_skew_within_bounds() {
    // Zone a has three nodes, b and c one each: binpacking alone would fill zone a first.
    let mut snap = zoned_cluster(
        &[
            ("a1", "a"),
            ("a2", "a"),
            ("a3", "a"),
            ("b1", "b"),
            ("c1", "c"),
        ],
        8,
    );
    let spread = serde_json::json!({"topologySpread": [
        {"selector": "app=web", "topologyKey": "zone", "maxSkew": 1}]});
    let web: Vec<Claim> = (0..7)
        .map(|i| labelled(&format!("web{i}"), "web", spread.clone()))
        .collect();
    let by_key: HashMap<String, Claim> = web.iter().map(|c| (key(c), c.clone())).collect();
    let refs: Vec<&Claim> = web.iter().collect();
    let p = plan(&mut scheduler(), &snap, &refs);
    apply(&mut snap, &p, &by_key);
    let counts = zone_counts(&snap, "web");
    assert_eq!(counts.values().sum::<usize>(), 7, "{counts:?}");
    let (lo, hi) = (
        counts.values().min().copied().unwrap(),
        counts.values().max().copied().unwrap(),
    );
    assert!(hi - lo <= 1, "skew above 1: {counts:?}");

    // When the emptiest zone is full, a DoNotSchedule term makes the claim wait, naming it;
    // ScheduleAnyway places it and only prefers the emptier zones.
    let mut snap = zoned_cluster(&[("a1", "a"), ("b1", "b")], 2);
    let filler = claim("p", "filler", 2, serde_json::json!({}));
    place_all(&mut snap, std::slice::from_ref(&filler));
    let filled = snap
        .allocation_meta("p/filler")
        .unwrap()
        .node
        .clone()
        .unwrap();
    let first = labelled("w0", "web", spread.clone());
    place_all(&mut snap, std::slice::from_ref(&first));
    let second = labelled("w1", "web", spread.clone());
    let p = plan(&mut scheduler(), &snap, &[&second]);
    let (_, message) = explanation(outcome_of(&p, "p/w1"));
    assert!(
        message.contains("topology spread: this zone would exceed maxSkew"),
        "{filled}: {message}"
    );
    let soft = labelled(
        "w1",
        "web",
        serde_json::json!({"topologySpread": [{"selector": "app=web", "topologyKey": "zone",
            "maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}]}),
    );
    let p = plan(&mut scheduler(), &snap, &[&soft]);
    let placed = placement(outcome_of(&p, "p/w1"));
    assert!(placed.score.plugins.contains_key("affinity"), "{placed:?}");

    // Only the domains the claim's selector accepts count (Kubernetes' Honor policy):
    // claims pinned to zone a are not held back by an empty zone b they could never use.
    let mut snap = zoned_cluster(&[("a1", "a"), ("a2", "a"), ("b1", "b")], 8);
    let pinned: Vec<Claim> = (0..4)
        .map(|i| {
            labelled(
                &format!("pin{i}"),
                "pin",
                serde_json::json!({"selector": "zone=a", "topologySpread": [
                    {"selector": "app=pin", "topologyKey": "zone", "maxSkew": 1}]}),
            )
        })
        .collect();
    let by_key: HashMap<String, Claim> = pinned.iter().map(|c| (key(c), c.clone())).collect();
    let refs: Vec<&Claim> = pinned.iter().collect();
    let p = plan(&mut scheduler(), &snap, &refs);
    apply(&mut snap, &p, &by_key);
    assert_eq!(zone_counts(&snap, "pin").get("a"), Some(&4), "{p:?}");
}

#[test]
pub(crate) fn soft_terms_steer_placement_without_rejecting_nodes() {
    let mut snap = zoned_cluster(&[("a1", "a"), ("b1", "b"), ("c1", "c")], 4);
    place_all(&mut snap, &[labelled("db0", "db", serde_json::json!({}))]);
    let db_zone = zone_counts(&snap, "db").into_keys().next().unwrap();
    // Preferred affinity: lands with the db, however binpack would rank the nodes.
    let near = labelled(
        "app0",
        "app",
        serde_json::json!({"affinity": [{"selector": "app=db", "topologyKey": "zone",
            "preferred": true}], "scoring": {"weights": {"affinity": 10}}}),
    );
    let p = plan(&mut scheduler(), &snap, &[&near]);
    assert_eq!(zone_of(&snap, outcome_of(&p, "p/app0")), db_zone);
    let placed = placement(outcome_of(&p, "p/app0"));
    assert_eq!(placed.score.plugins["affinity"], 100.0, "{placed:?}");
    // Preferred anti-affinity: avoids the db's zone while another is free...
    let away = labelled(
        "app1",
        "app",
        serde_json::json!({"antiAffinity": [{"selector": "app=db", "topologyKey": "zone",
            "preferred": true}], "scoring": {"weights": {"affinity": 10}}}),
    );
    let p = plan(&mut scheduler(), &snap, &[&away]);
    assert_ne!(zone_of(&snap, outcome_of(&p, "p/app1")), db_zone);
    // ...but still lands there when it is the only node left (no node is rejected for it).
    let mut lone = zoned_cluster(&[("a1", "a")], 4);
    place_all(&mut lone, &[labelled("db0", "db", serde_json::json!({}))]);
    let p = plan(&mut scheduler(), &lone, &[&away]);
    placement(outcome_of(&p, "p/app1"));
    // A claim without soft terms carries no affinity score at all.
    let plain = claim("p", "plain", 1, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&plain]);
    assert!(
        !placement(outcome_of(&p, "p/plain"))
            .score
            .plugins
            .contains_key("affinity")
    );
}

#[test]
pub(crate) fn required_anti_affinity_binds_both_ways() {
    let mut snap = zoned_cluster(&[("a1", "a"), ("b1", "b")], 4);
    // A "noisy" claim refuses to share a zone with batch jobs.
    let noisy = labelled(
        "noisy",
        "noisy",
        serde_json::json!({"antiAffinity": [{"selector": "app=batch", "topologyKey": "zone"}]}),
    );
    place_all(&mut snap, std::slice::from_ref(&noisy));
    let noisy_zone = zone_counts(&snap, "noisy").into_keys().next().unwrap();
    // A batch job without any terms of its own keeps out of the noisy claim's zone.
    for i in 0..3 {
        let job = labelled(&format!("job{i}"), "batch", serde_json::json!({}));
        let p = plan(&mut scheduler(), &snap, &[&job]);
        assert_ne!(zone_of(&snap, outcome_of(&p, &key(&job))), noisy_zone);
    }
    // And within one batch: the noisy claim first, then a job that would otherwise binpack
    // onto the same node.
    let snap = zoned_cluster(&[("a1", "a"), ("b1", "b")], 4);
    let job = labelled("job", "batch", serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&noisy, &job]);
    assert_ne!(
        zone_of(&snap, outcome_of(&p, "p/noisy")),
        zone_of(&snap, outcome_of(&p, "p/job"))
    );
    // With the only other zone gone, the job waits and says why.
    let mut single = zoned_cluster(&[("a1", "a")], 4);
    place_all(&mut single, std::slice::from_ref(&noisy));
    let p = plan(&mut scheduler(), &single, &[&job]);
    let (_, message) = explanation(outcome_of(&p, "p/job"));
    assert!(
        message.contains("anti-affinity of a claim there"),
        "{message}"
    );
}

#[test]
pub(crate) fn tenants_are_held_to_their_compliance_and_isolation_domains() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "pci1", 4, &[("compliance", "pci")]);
    node(&mut snap, "std1", 4, &[]);
    node(&mut snap, "ded1", 4, &[(TENANT_LABEL, "acme")]);
    snap.upsert_project("bank", "fin");
    snap.upsert_project("shop", "retail");
    snap.upsert_project("acme-web", "acme");
    let sel: infraos_api::LabelSelector = "compliance=pci".parse().unwrap();
    snap.upsert_tenant("fin", Some(&sel));
    // The regulated tenant's claims land only in its compliance domain...
    for i in 0..4 {
        let c = claim("bank", &format!("pay{i}"), 1, serde_json::json!({}));
        let p = plan(&mut scheduler(), &snap, &[&c]);
        assert_eq!(
            placement(outcome_of(&p, &key(&c))).node.as_deref(),
            Some("pci1")
        );
    }
    // ...and wait, saying so, when it is full; a claim's own selector cannot widen it.
    let mut full = snap.clone();
    place_all(&mut full, &[claim("bank", "big", 4, serde_json::json!({}))]);
    let c = claim(
        "bank",
        "more",
        1,
        serde_json::json!({"selector": "!compliance"}),
    );
    let p = plan(&mut scheduler(), &full, &[&c]);
    let (_, message) = explanation(outcome_of(&p, "bank/more"));
    assert!(
        message.contains("outside the tenant's placement"),
        "{message}"
    );
    // The node labelled for acme is acme's alone: others never land there, acme may.
    for i in 0..6 {
        let c = claim("shop", &format!("cart{i}"), 1, serde_json::json!({}));
        let p = plan(&mut scheduler(), &snap, &[&c]);
        assert_ne!(
            placement(outcome_of(&p, &key(&c))).node.as_deref(),
            Some("ded1")
        );
    }
    let mut busy = snap.clone();
    place_all(
        &mut busy,
        &[
            claim("shop", "s1", 4, serde_json::json!({})),
            claim("shop", "s2", 4, serde_json::json!({})),
        ],
    );
    let c = claim("shop", "s3", 1, serde_json::json!({}));
    let p = plan(&mut scheduler(), &busy, &[&c]);
    let (_, message) = explanation(outcome_of(&p, "shop/s3"));
    assert!(message.contains("isolated for another tenant"), "{message}");
    let c = claim("acme-web", "a1", 1, serde_json::json!({}));
    let p = plan(&mut scheduler(), &busy, &[&c]);
    assert_eq!(
        placement(outcome_of(&p, "acme-web/a1")).node.as_deref(),
        Some("ded1")
    );
    // Lifting the restriction lets the regulated tenant anywhere (but ded1).
    snap.upsert_tenant("fin", None);
    let c = claim(
        "bank",
        "free",
        1,
        serde_json::json!({"selector": "!compliance"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&c]);
    assert_eq!(
        placement(outcome_of(&p, "bank/free")).node.as_deref(),
        Some("std1")
    );
}

pub(crate) fn priced_node(
    snap: &mut Snapshot,
    name: &str,
    zone: &str,
    price: Option<f64>,
    watts: f64,
) {
    snap.upsert_node(
        name,
        &[("zone".to_string(), zone.to_string())]
            .into_iter()
            .collect(),
        &NodeSpec::default(),
        None,
    );
    snap.upsert_resource(
        &format!("{name}-compute"),
        &Labels::new(),
        &ResourceSpec {
            class: "compute".into(),
            node: Some(name.into()),
            capacity: [("cpu".to_string(), Quantity::from_units(8))]
                .into_iter()
                .collect(),
            unit_price: price
                .map(|p| [("cpu".to_string(), p)].into_iter().collect())
                .unwrap_or_default(),
            watts: Some(watts),
            ..Default::default()
        },
    );
}

#[test]
pub(crate) fn cost_energy_and_network_plugins_score_relative_to_the_candidates() {
    let mut snap = Snapshot::new();
    snap.upsert_class(
        "compute",
        &ResourceClassSpec {
            kind: ClassKind::Counted,
            dimensions: vec![Dimension {
                name: "cpu".into(),
                unit: None,
            }],
            unit_price: [("cpu".to_string(), 0.04)].into_iter().collect(),
            ..Default::default()
        },
    );
    priced_node(&mut snap, "on-demand", "a", None, 200.0);
    priced_node(&mut snap, "spot", "b", Some(0.01), 500.0);
    priced_node(&mut snap, "far", "c", Some(0.02), 300.0);
    let profile = |scores: &[(&str, f64)]| Profile {
        scores: scores.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        network_distances: [("a/b".to_string(), 10.0), ("a/c".to_string(), 50.0)]
            .into_iter()
            .collect(),
        ..Profile::default()
    };
    let c = claim("p", "c", 2, serde_json::json!({}));
    let node_of = |scores: &[(&str, f64)], c: &Claim| {
        let p = Scheduler::new(profile(scores))
            .unwrap()
            .plan(&snap, &[(key(c), c)]);
        placement(&p.decisions[0].outcome).clone()
    };
    // Cost: the spot node's override (0.01/cpu) beats the class price (0.04) and 0.02.
    let p = node_of(&[("cost", 1.0)], &c);
    assert_eq!(p.node.as_deref(), Some("spot"));
    assert_eq!(p.score.plugins["cost"], 100.0);
    assert_eq!(p.runner_up.as_ref().unwrap().node.as_deref(), Some("far"));
    // Energy: the 200 W node.
    assert_eq!(
        node_of(&[("energy", 1.0)], &c).node.as_deref(),
        Some("on-demand")
    );
    // Network: near zone a, whose node is taken by a large claim: b (10) before c (50).
    let near = claim(
        "p",
        "near",
        2,
        serde_json::json!({"scoring": {"near": {"zone": "a"}}}),
    );
    assert_eq!(
        node_of(&[("network", 1.0)], &near).node.as_deref(),
        Some("on-demand")
    );
    let mut full = snap.clone();
    let big = claim("p", "big", 8, serde_json::json!({}));
    full.apply_allocation(
        "p/big",
        &[AllocatedResource {
            request: "compute".into(),
            resource: "on-demand-compute".into(),
            class: "compute".into(),
            amount: big.spec.requests[0].amount.clone(),
            items: vec![],
        }],
        AllocationMeta::default(),
    );
    let p = Scheduler::new(profile(&[("network", 1.0)]))
        .unwrap()
        .plan(&full, &[(key(&near), &near)]);
    assert_eq!(
        placement(&p.decisions[0].outcome).node.as_deref(),
        Some("spot")
    );
    // A claim's own weights replace the profile's: binpack-only profile, cost-minded claim.
    let thrifty = claim(
        "p",
        "thrifty",
        2,
        serde_json::json!({"scoring": {"weights": {"cost": 5}}}),
    );
    let p = node_of(&[("binpack", 1.0)], &thrifty);
    assert_eq!(p.node.as_deref(), Some("spot"));
    assert!(p.score.plugins.contains_key("binpack") && p.score.plugins.contains_key("cost"));
}
