//! Builders shared by the scheduler's scenario tests: a compute class, nodes, quotas,
//! priority classes and claims; planning, reading outcomes, and applying placements as the
//! server would.

use std::collections::HashMap;

use infraos_api::kinds::*;
use infraos_api::{Labels, Quantity};

use crate::{AllocationMeta, Outcome, Placement, Plan, Profile, Scheduler, Snapshot};

pub(crate) fn compute_class(snap: &mut Snapshot) {
    snap.upsert_class(
        "compute",
        &ResourceClassSpec {
            kind: ClassKind::Counted,
            dimensions: vec![Dimension {
                name: "cpu".into(),
                unit: None,
            }],
            ..Default::default()
        },
    );
}

pub(crate) fn node(snap: &mut Snapshot, name: &str, cpu: i64, node_labels: &[(&str, &str)]) {
    let labels: Labels = node_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    snap.upsert_node(name, &labels, &NodeSpec::default(), None);
    snap.upsert_resource(
        &format!("{name}-compute"),
        &Labels::new(),
        &ResourceSpec {
            class: "compute".into(),
            node: Some(name.into()),
            capacity: [("cpu".to_string(), Quantity::from_units(cpu))]
                .into_iter()
                .collect(),
            ..Default::default()
        },
    );
}

pub(crate) fn cluster(nodes: usize, cpu: i64) -> Snapshot {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for i in 0..nodes {
        node(&mut snap, &format!("n{i}"), cpu, &[]);
    }
    snap
}

pub(crate) fn quota(snap: &mut Snapshot, name: &str, spec: serde_json::Value) {
    let spec: QuotaSpec = serde_json::from_value(spec).unwrap();
    snap.upsert_quota(name, &spec);
}

pub(crate) fn priority_class(
    snap: &mut Snapshot,
    name: &str,
    value: i32,
    policy: PreemptionPolicy,
) {
    snap.upsert_priority_class(
        name,
        &PriorityClassSpec {
            value,
            preemption_policy: policy,
            ..Default::default()
        },
    );
}

/// A claim for `cpu` whole CPUs in project `ns`, with extra spec fields merged in.
pub(crate) fn claim(ns: &str, name: &str, cpu: i64, extra: serde_json::Value) -> Claim {
    let mut spec = serde_json::json!({
        "requests": [{"class": "compute", "amount": {"cpu": cpu.to_string()}}]
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let v = serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    infraos_api::object::decode(&v).unwrap()
}

pub(crate) fn key(c: &Claim) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap(),
        c.metadata.name
    )
}

pub(crate) fn meta(snap: &Snapshot, c: &Claim, borrowing: bool) -> AllocationMeta {
    AllocationMeta {
        labels: c.metadata.labels.clone(),
        node: None,
        priority: crate::planner::claim_priority(snap, c).0,
        queue: c.spec.queue_name().to_string(),
        group: c.spec.group.as_ref().map(|g| g.name.clone()),
        borrowing,
        preempting: false,
        created_ms: 0,
        anti_affinity: c
            .spec
            .anti_affinity
            .iter()
            .filter(|t| !t.preferred)
            .cloned()
            .collect(),
    }
}

/// Records claim `c`'s placement `p` in the snapshot, as the applier's commit would.
pub(crate) fn record(snap: &mut Snapshot, c: &Claim, p: &Placement) {
    let mut m = meta(snap, c, p.borrowing);
    m.node = p.node.clone();
    snap.apply_allocation(&key(c), &p.resources, m);
}

/// Marks claim `c`'s allocation as being preempted (its victim's grace has begun).
pub(crate) fn mark_preempting(snap: &mut Snapshot, c: &Claim) {
    let k = key(c);
    let parts = snap.allocation(&k).unwrap().to_vec();
    let mut m = meta(snap, c, false);
    m.preempting = true;
    snap.apply_allocation(&k, &parts, m);
}

/// Records every placement of a plan without re-checking it, and leaves preemption victims
/// in place (tests that model their grace remove them later).
pub(crate) fn record_placed(snap: &mut Snapshot, p: &Plan, claims: &[&Claim]) {
    for d in &p.decisions {
        if let Outcome::Placed(pl) = &d.outcome {
            let c = claims.iter().find(|c| key(c) == d.claim_key).unwrap();
            record(snap, c, pl);
        }
    }
}

/// Applies a plan the way the server's applier does: placements that still fit are recorded,
/// preemption victims are removed at once (their grace is not modelled here).
pub(crate) fn apply(
    snap: &mut Snapshot,
    plan: &Plan,
    claims: &HashMap<String, Claim>,
) -> Vec<String> {
    let mut victims = Vec::new();
    for d in &plan.decisions {
        match &d.outcome {
            Outcome::Placed(p) => {
                if snap.fits(&p.resources).is_ok() {
                    record(snap, &claims[&d.claim_key], p);
                }
            }
            Outcome::Preempt(p) => {
                for v in &p.victims {
                    snap.remove_allocation(&v.allocation);
                    victims.push(v.allocation.clone());
                }
            }
            Outcome::Unschedulable(_) => {}
        }
    }
    victims
}

pub(crate) fn plan(s: &mut Scheduler, snap: &Snapshot, claims: &[&Claim]) -> Plan {
    let keyed: Vec<(String, &Claim)> = claims.iter().map(|c| (key(c), *c)).collect();
    s.plan(snap, &keyed)
}

pub(crate) fn outcome_of<'p>(plan: &'p Plan, k: &str) -> &'p Outcome {
    &plan
        .decisions
        .iter()
        .find(|d| d.claim_key == k)
        .unwrap_or_else(|| panic!("no decision for {k}"))
        .outcome
}

pub(crate) fn explanation(o: &Outcome) -> (&'static str, String) {
    match o {
        Outcome::Unschedulable(e) => (e.reason, e.message()),
        other => panic!("expected unschedulable, got {other:?}"),
    }
}

pub(crate) fn placement(o: &Outcome) -> &Placement {
    match o {
        Outcome::Placed(p) => p,
        other => panic!("expected a placement, got {other:?}"),
    }
}

pub(crate) fn scheduler() -> Scheduler {
    Scheduler::new(Profile::default()).unwrap()
}

pub(crate) fn place_all(snap: &mut Snapshot, claims: &[Claim]) {
    let by_key: HashMap<String, Claim> = claims.iter().map(|c| (key(c), c.clone())).collect();
    let refs: Vec<&Claim> = claims.iter().collect();
    let p = plan(&mut scheduler(), snap, &refs);
    for d in &p.decisions {
        placement(&d.outcome);
    }
    apply(snap, &p, &by_key);
}
