//! Governance scenarios and property tests: quotas, priorities, preemption, fair queues and
//! gangs, driven through the pure planner with allocations applied as the server would.

use std::collections::{BTreeMap, HashMap};

use infraos_api::kinds::*;
use infraos_api::{Labels, Quantity};
use proptest::prelude::*;

use crate::planner::{GANG_INCOMPLETE, QUOTA_EXCEEDED, UNSCHEDULABLE, WAITING_FOR_PREEMPTION};
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

fn cluster(nodes: usize, cpu: i64) -> Snapshot {
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

/// Applies a plan the way the server's applier does: placements that still fit are recorded,
/// preemption victims are removed at once (their grace is not modelled here).
fn apply(snap: &mut Snapshot, plan: &Plan, claims: &HashMap<String, Claim>) -> Vec<String> {
    let mut victims = Vec::new();
    for d in &plan.decisions {
        match &d.outcome {
            Outcome::Placed(p) => {
                if snap.fits(&p.resources).is_ok() {
                    let mut m = meta(snap, &claims[&d.claim_key], p.borrowing);
                    m.node = p.node.clone();
                    snap.apply_allocation(&d.claim_key, &p.resources, m);
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

fn plan(s: &mut Scheduler, snap: &Snapshot, claims: &[&Claim]) -> Plan {
    let keyed: Vec<(String, &Claim)> = claims.iter().map(|c| (key(c), *c)).collect();
    s.plan(snap, &keyed)
}

fn outcome_of<'p>(plan: &'p Plan, k: &str) -> &'p Outcome {
    &plan
        .decisions
        .iter()
        .find(|d| d.claim_key == k)
        .unwrap_or_else(|| panic!("no decision for {k}"))
        .outcome
}

fn explanation(o: &Outcome) -> (&'static str, String) {
    match o {
        Outcome::Unschedulable(e) => (e.reason, e.message()),
        other => panic!("expected unschedulable, got {other:?}"),
    }
}

fn placement(o: &Outcome) -> &Placement {
    match o {
        Outcome::Placed(p) => p,
        other => panic!("expected a placement, got {other:?}"),
    }
}

pub(crate) fn scheduler() -> Scheduler {
    Scheduler::new(Profile::default()).unwrap()
}

fn place_all(snap: &mut Snapshot, claims: &[Claim]) {
    let by_key: HashMap<String, Claim> = claims.iter().map(|c| (key(c), c.clone())).collect();
    let refs: Vec<&Claim> = claims.iter().collect();
    let p = plan(&mut scheduler(), snap, &refs);
    for d in &p.decisions {
        placement(&d.outcome);
    }
    apply(snap, &p, &by_key);
}

#[test]
fn quotas_at_each_level_name_the_level_and_dimension() {
    let mut snap = cluster(4, 16);
    snap.upsert_project("ml", "acme");
    snap.upsert_project("web", "acme");
    quota(
        &mut snap,
        "acme",
        serde_json::json!({"tenant": "acme", "limits": {"compute": {"cpu": "10"}}}),
    );
    quota(
        &mut snap,
        "ml",
        serde_json::json!({"project": "ml", "limits": {"compute": {"cpu": "6"}}}),
    );
    place_all(&mut snap, &[claim("ml", "a", 4, serde_json::json!({}))]);
    // Project level: 4 + 3 > 6.
    let c = claim("ml", "b", 3, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&c]);
    let (reason, message) = explanation(outcome_of(&p, "ml/b"));
    assert_eq!(reason, QUOTA_EXCEEDED);
    assert!(
        message.contains("quota ml (project level: project ml)")
            && message.contains("compute/cpu would be 7 of 6"),
        "{message}"
    );
    // Tenant level: web has no project quota, but acme's 10 CPUs hold 4 + 7.
    let c = claim("web", "c", 7, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&c]);
    let (reason, message) = explanation(outcome_of(&p, "web/c"));
    assert_eq!(reason, QUOTA_EXCEEDED);
    assert!(message.contains("tenant level: tenant acme"), "{message}");
    // Usage is visible per quota, and giving the allocation back frees it.
    assert_eq!(
        snap.quota("ml").unwrap().used()["compute"]["cpu"],
        Quantity::from_units(4)
    );
    snap.remove_allocation("ml/a");
    assert_eq!(
        snap.quota("acme").unwrap().used()["compute"]["cpu"],
        Quantity::ZERO
    );
}

#[test]
fn a_quota_written_again_unchanged_keeps_its_usage_and_a_changed_one_recounts() {
    let mut snap = cluster(2, 16);
    snap.upsert_project("ml", "acme");
    let spec = serde_json::json!({"project": "ml", "limits": {"compute": {"cpu": "6"}}});
    quota(&mut snap, "ml", spec.clone());
    place_all(&mut snap, &[claim("ml", "a", 4, serde_json::json!({}))]);
    let used = |snap: &Snapshot| snap.quota("ml").unwrap().used()["compute"]["cpu"];
    assert_eq!(used(&snap), Quantity::from_units(4));
    // What the server does when it writes the quota's status: the same spec again.
    quota(&mut snap, "ml", spec);
    assert_eq!(used(&snap), Quantity::from_units(4));
    // A new limit: usage is recounted from the allocations, and the limit applies.
    quota(
        &mut snap,
        "ml",
        serde_json::json!({"project": "ml", "limits": {"compute": {"cpu": "5"}}}),
    );
    assert_eq!(used(&snap), Quantity::from_units(4));
    let c = claim("ml", "b", 2, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&c]);
    assert_eq!(explanation(outcome_of(&p, "ml/b")).0, QUOTA_EXCEEDED);
    // Moved to another project: ml's allocation no longer counts.
    snap.upsert_project("web", "acme");
    quota(
        &mut snap,
        "ml",
        serde_json::json!({"project": "web", "limits": {"compute": {"cpu": "5"}}}),
    );
    assert_eq!(used(&snap), Quantity::ZERO);
}

#[test]
fn a_batch_counts_its_own_placements_against_quotas() {
    let mut snap = cluster(4, 16);
    snap.upsert_project("ml", "acme");
    quota(
        &mut snap,
        "ml",
        serde_json::json!({"project": "ml", "limits": {"compute": {"cpu": "5"}}}),
    );
    let claims: Vec<Claim> = (0..4)
        .map(|i| claim("ml", &format!("c{i}"), 2, serde_json::json!({})))
        .collect();
    let refs: Vec<&Claim> = claims.iter().collect();
    let p = plan(&mut scheduler(), &snap, &refs);
    let placed = p
        .decisions
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Placed(_)))
        .count();
    assert_eq!(placed, 2, "2 + 2 fit 5 CPUs, a third would make 6");
}

#[test]
fn pool_quotas_follow_where_the_claim_lands() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "east", 16, &[("pool", "gpu-east")]);
    node(&mut snap, "west", 16, &[("pool", "west")]);
    snap.upsert_project("ml", "acme");
    quota(
        &mut snap,
        "east",
        serde_json::json!({"tenant": "acme", "pool": "pool=gpu-east", "limits": {"compute": {"cpu": "4"}}}),
    );
    // Only east is allowed by the selector; 4 fit its pool quota, the next 2 do not.
    let sel = serde_json::json!({"selector": "pool=gpu-east"});
    place_all(&mut snap, &[claim("ml", "a", 4, sel.clone())]);
    let c = claim("ml", "b", 2, sel);
    let p = plan(&mut scheduler(), &snap, &[&c]);
    let (reason, message) = explanation(outcome_of(&p, "ml/b"));
    assert_eq!(reason, UNSCHEDULABLE);
    assert!(message.contains("pool quota east exceeded"), "{message}");
    // Without the selector the claim goes west, outside the pool.
    let c = claim("ml", "c", 2, serde_json::json!({}));
    let p = plan(&mut scheduler(), &snap, &[&c]);
    assert_eq!(
        placement(outcome_of(&p, "ml/c")).node.as_deref(),
        Some("west")
    );
}

#[test]
fn higher_priority_goes_first_whatever_the_arrival_order() {
    let mut snap = cluster(1, 4);
    priority_class(&mut snap, "high", 1000, PreemptionPolicy::Never);
    let low = claim("p", "low", 4, serde_json::json!({}));
    let high = claim(
        "p",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&low, &high]);
    assert_eq!(p.decisions[0].claim_key, "p/high");
    placement(outcome_of(&p, "p/high"));
    assert_eq!(explanation(outcome_of(&p, "p/low")).0, UNSCHEDULABLE);
}

#[test]
fn preemption_takes_the_fewest_lowest_priority_victims() {
    let mut snap = cluster(2, 8);
    priority_class(
        &mut snap,
        "batch",
        10,
        PreemptionPolicy::PreemptLowerPriority,
    );
    priority_class(
        &mut snap,
        "prod",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    priority_class(
        &mut snap,
        "urgent",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    // n0: two 4-CPU batch claims; n1: one 8-CPU prod claim.
    let fill = [
        claim(
            "p",
            "b1",
            4,
            serde_json::json!({"priorityClassName": "batch"}),
        ),
        claim(
            "p",
            "b2",
            4,
            serde_json::json!({"priorityClassName": "batch"}),
        ),
        claim(
            "p",
            "prod",
            8,
            serde_json::json!({"priorityClassName": "prod"}),
        ),
    ];
    place_all(&mut snap, &fill);
    let urgent = claim(
        "p",
        "u",
        4,
        serde_json::json!({"priorityClassName": "urgent"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&urgent]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/u") else {
        panic!("{p:?}")
    };
    assert_eq!(pre.victims.len(), 1, "one batch claim frees enough");
    assert_eq!(pre.victims[0].priority, 10);
    assert!(pre.victims[0].allocation.starts_with("p/b"));
    let node_of_batch = snap.allocation(&pre.victims[0].allocation).unwrap()[0]
        .resource
        .trim_end_matches("-compute")
        .to_string();
    assert_eq!(pre.node.as_deref(), Some(node_of_batch.as_str()));
    assert!(
        pre.victims[0]
            .reason
            .contains("priority 1000 preempts priority 10")
    );

    // A claim that needs 8 CPUs takes both batch claims (2 victims of priority 10) rather
    // than the single prod claim (priority 100).
    let big = claim(
        "p",
        "big",
        8,
        serde_json::json!({"priorityClassName": "urgent"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&big]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/big") else {
        panic!("{p:?}")
    };
    let mut victims: Vec<&str> = pre.victims.iter().map(|v| v.allocation.as_str()).collect();
    victims.sort();
    assert_eq!(victims, ["p/b1", "p/b2"]);
}

#[test]
fn never_policy_gaps_and_equal_priorities_do_not_preempt() {
    let mut snap = cluster(1, 4);
    priority_class(&mut snap, "low", 0, PreemptionPolicy::PreemptLowerPriority);
    priority_class(&mut snap, "polite", 1000, PreemptionPolicy::Never);
    priority_class(&mut snap, "near", 5, PreemptionPolicy::PreemptLowerPriority);
    place_all(
        &mut snap,
        &[claim(
            "p",
            "a",
            4,
            serde_json::json!({"priorityClassName": "low"}),
        )],
    );
    let polite = claim(
        "p",
        "x",
        4,
        serde_json::json!({"priorityClassName": "polite"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&polite]);
    assert_eq!(explanation(outcome_of(&p, "p/x")).0, UNSCHEDULABLE);
    let equal = claim("p", "y", 4, serde_json::json!({"priorityClassName": "low"}));
    let p = plan(&mut scheduler(), &snap, &[&equal]);
    assert_eq!(explanation(outcome_of(&p, "p/y")).0, UNSCHEDULABLE);
    let mut profile = Profile::default();
    profile.preemption.min_priority_gap = 10;
    let near = claim(
        "p",
        "z",
        4,
        serde_json::json!({"priorityClassName": "near"}),
    );
    let p = plan(&mut Scheduler::new(profile).unwrap(), &snap, &[&near]);
    assert_eq!(explanation(outcome_of(&p, "p/z")).0, UNSCHEDULABLE);
    let p = plan(&mut scheduler(), &snap, &[&near]);
    assert!(matches!(outcome_of(&p, "p/z"), Outcome::Preempt(_)));
}

#[test]
fn a_claim_waits_for_victims_already_being_preempted() {
    let mut snap = cluster(1, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let low = claim("p", "low", 4, serde_json::json!({}));
    place_all(&mut snap, std::slice::from_ref(&low));
    let parts = snap.allocation("p/low").unwrap().to_vec();
    let mut m = meta(&snap, &low, false);
    m.preempting = true;
    snap.apply_allocation("p/low", &parts, m);
    let high = claim(
        "p",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&high]);
    let (reason, message) = explanation(outcome_of(&p, "p/high"));
    assert_eq!(reason, WAITING_FOR_PREEMPTION);
    assert!(
        message.contains("waiting for 1 preempted allocation"),
        "{message}"
    );
}

#[test]
fn what_victims_free_is_held_for_the_preemptor() {
    let mut snap = cluster(1, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let (a, b) = (
        claim("p", "a", 2, serde_json::json!({})),
        claim("p", "b", 2, serde_json::json!({})),
    );
    place_all(&mut snap, &[a.clone(), b.clone()]);
    let mut s = scheduler();
    let high = claim(
        "p",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&high]);
    assert!(matches!(outcome_of(&p, "p/high"), Outcome::Preempt(_)));
    // The victims are being preempted; the first one ends, the second has not yet.
    for c in [&a, &b] {
        let parts = snap.allocation(&key(c)).unwrap().to_vec();
        let mut m = meta(&snap, c, false);
        m.preempting = true;
        snap.apply_allocation(&key(c), &parts, m);
    }
    snap.remove_allocation("p/a");
    // The requeued victim must not take the 2 CPUs that came free while high waits.
    let p = plan(&mut s, &snap, &[&high, &a]);
    assert_eq!(
        explanation(outcome_of(&p, "p/high")).0,
        WAITING_FOR_PREEMPTION
    );
    let (_, message) = explanation(outcome_of(&p, "p/a"));
    assert!(
        message.contains("capacity held for 1 preempting claim"),
        "{message}"
    );
    snap.remove_allocation("p/b");
    let p = plan(&mut s, &snap, &[&high, &a]);
    placement(outcome_of(&p, "p/high"));
    // Once high is placed, its nomination is gone.
    assert!(s.nominations.is_empty());
}

#[test]
fn a_nomination_holds_the_preemptors_share_not_the_whole_node() {
    let mut snap = cluster(1, 10);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let (big, small) = (
        claim("p", "big", 4, serde_json::json!({})),
        claim("p", "small", 2, serde_json::json!({})),
    );
    place_all(&mut snap, &[big.clone(), small]);
    let mut s = scheduler();
    let high = claim(
        "p",
        "high",
        6,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&high]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/high") else {
        panic!("{p:?}")
    };
    assert_eq!(pre.victims.len(), 1);
    assert_eq!(pre.victims[0].allocation, "p/big");
    // big has ended: 8 CPUs are free, 6 of them held for high; 2 are anyone's.
    snap.remove_allocation("p/big");
    let two = claim("p", "two", 2, serde_json::json!({}));
    let three = claim("p", "three", 3, serde_json::json!({}));
    let p = plan(&mut s, &snap, &[&two]);
    placement(outcome_of(&p, "p/two"));
    let p = plan(&mut s, &snap, &[&three]);
    let (_, message) = explanation(outcome_of(&p, "p/three"));
    assert!(message.contains("capacity held for 1"), "{message}");
    // high itself is not held back by its own nomination.
    let p = plan(&mut s, &snap, &[&high, &three]);
    placement(outcome_of(&p, "p/high"));
    assert!(s.nominations.is_empty());
}

/// Issue 17: a plan that places a preemptor is not yet the end of its wait. The applier may
/// refuse the placement, or its batch may not commit; the claim is then pending again, and
/// until then it keeps its nomination: a claim of its priority decided before it does not
/// take the room its victims freed (before the fix it did, and the preemptor, unable to
/// preempt an equal priority, waited for a second round of other victims).
#[test]
fn a_placement_that_does_not_stick_keeps_the_nomination() {
    let mut snap = cluster(1, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let low = claim("p", "low", 4, serde_json::json!({}));
    place_all(&mut snap, std::slice::from_ref(&low));
    let mut s = scheduler();
    let high = claim(
        "p",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&high]);
    assert!(matches!(outcome_of(&p, "p/high"), Outcome::Preempt(_)));
    snap.remove_allocation("p/low");
    // Placed where low was; the applier refuses it (it is not applied).
    let p = plan(&mut s, &snap, &[&high]);
    assert_eq!(
        placement(outcome_of(&p, "p/high")).node.as_deref(),
        Some("n0")
    );
    // Back pending, decided after a claim of its priority (same queue and age, listed
    // first): the room is still held for it.
    let rival = claim(
        "p",
        "rival",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&rival, &high]);
    let (_, message) = explanation(outcome_of(&p, "p/rival"));
    assert!(message.contains("capacity held"), "{message}");
    placement(outcome_of(&p, "p/high"));

    // Said explicitly (as the server does when a batch does not commit): held at once, even
    // against a plan the preemptor is not in (it waits for its requeue meanwhile).
    s.unplaced("p/high");
    assert_eq!(s.nominations.len(), 1);
    let p = plan(&mut s, &snap, &[&low]);
    let (_, message) = explanation(outcome_of(&p, "p/low"));
    assert!(message.contains("capacity held"), "{message}");
    // Placed again and confirmed: nothing is left of its nomination.
    let p = plan(&mut s, &snap, &[&high]);
    placement(outcome_of(&p, "p/high"));
    s.forget("p/high");
    assert!(s.nominations.is_empty() && s.placing.is_empty() && s.preempted.is_empty());
}

/// Issue 17: a preemptor decided again while its victims stop, and found short (here a
/// claim of higher priority counts on the same victim), keeps waiting with its nomination
/// instead of giving up; it gives up only once its victims have ended and it still does
/// not fit. Before, it gave up at once, its room was anyone's, and it preempted again.
#[test]
fn a_preemptor_does_not_give_up_while_its_victims_stop() {
    let mut snap = cluster(1, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    priority_class(
        &mut snap,
        "top",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let low = claim("p", "low", 4, serde_json::json!({}));
    place_all(&mut snap, std::slice::from_ref(&low));
    let mut s = scheduler();
    let high = claim(
        "p",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&high]);
    assert!(matches!(outcome_of(&p, "p/high"), Outcome::Preempt(_)));
    let parts = snap.allocation("p/low").unwrap().to_vec();
    let mut m = meta(&snap, &low, false);
    m.preempting = true;
    snap.apply_allocation("p/low", &parts, m);
    let top = claim(
        "p",
        "top",
        4,
        serde_json::json!({"priorityClassName": "top"}),
    );
    let p = plan(&mut s, &snap, &[&top]);
    assert_eq!(
        explanation(outcome_of(&p, "p/top")).0,
        WAITING_FOR_PREEMPTION
    );
    // high is short now, but low still stops: it waits, its nomination kept.
    let p = plan(&mut s, &snap, &[&high]);
    let (reason, message) = explanation(outcome_of(&p, "p/high"));
    assert_eq!(reason, WAITING_FOR_PREEMPTION, "{message}");
    assert!(s.nominations.contains_key("p/high"));
    // low has ended and top takes the room: high gives up, with the reason.
    snap.remove_allocation("p/low");
    let p = plan(&mut s, &snap, &[&top, &high]);
    placement(outcome_of(&p, "p/top"));
    assert_eq!(explanation(outcome_of(&p, "p/high")).0, UNSCHEDULABLE);
    assert!(!s.nominations.contains_key("p/high"));
}

#[test]
fn quota_preemption_holds_the_quota_for_the_preemptor() {
    let mut snap = cluster(1, 16);
    snap.upsert_project("p", "t");
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    quota(
        &mut snap,
        "pq",
        serde_json::json!({"project": "p", "limits": {"compute": {"cpu": "4"}}}),
    );
    let (a, b) = (
        claim("p", "a", 2, serde_json::json!({})),
        claim("p", "b", 2, serde_json::json!({})),
    );
    place_all(&mut snap, &[a.clone(), b.clone()]);
    let mut s = scheduler();
    let high = claim(
        "p",
        "high",
        2,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut s, &snap, &[&high]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/high") else {
        panic!("{p:?}")
    };
    // Where it lands once the victim is gone: its nomination holds that capacity too.
    assert_eq!(pre.node.as_deref(), Some("n0"));
    let victim = pre.victims[0].allocation.clone();
    snap.remove_allocation(&victim);
    // The victim comes back first (high waits in another batch): the quota it gave back is
    // high's.
    let requeued = if victim == "p/a" { &a } else { &b };
    let p = plan(&mut s, &snap, &[requeued]);
    let (reason, message) = explanation(outcome_of(&p, &victim));
    assert_eq!(reason, QUOTA_EXCEEDED);
    assert!(message.contains("held for 1 preempting claim"), "{message}");
    let p = plan(&mut s, &snap, &[&high, requeued]);
    placement(outcome_of(&p, "p/high"));
    assert_eq!(explanation(outcome_of(&p, &victim)).0, QUOTA_EXCEEDED);
}

#[test]
fn a_full_pool_quota_is_freed_by_preempting_wherever_the_pool_runs() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "e1", 8, &[("pool", "gpu-east")]);
    node(&mut snap, "e2", 8, &[("pool", "gpu-east")]);
    snap.upsert_project("ml", "acme");
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    quota(
        &mut snap,
        "east",
        serde_json::json!({"tenant": "acme", "pool": "pool=gpu-east", "limits": {"compute": {"cpu": "8"}}}),
    );
    // Two low claims use the pool's quota, one on each node; each node has room left.
    let e1 = serde_json::json!({"selector": "pool=gpu-east"});
    let (a, b) = (claim("ml", "a", 4, e1.clone()), claim("ml", "b", 4, e1));
    place_all(&mut snap, &[a, b]);
    let high = claim(
        "ml",
        "high",
        4,
        serde_json::json!({"priorityClassName": "high", "selector": "pool=gpu-east"}),
    );
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &[&high]);
    let Outcome::Preempt(pre) = outcome_of(&p, "ml/high") else {
        panic!("{p:?}")
    };
    assert_eq!(pre.victims.len(), 1, "{pre:?}");
    assert!(pre.explanation.message().contains("pool quota east"));
    let victim = pre.victims[0].allocation.clone();
    snap.remove_allocation(&victim);
    let p = plan(&mut s, &snap, &[&high]);
    placement(outcome_of(&p, "ml/high"));
}

#[test]
fn two_claims_in_one_batch_never_share_a_victim() {
    let mut snap = cluster(1, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    place_all(&mut snap, &[claim("p", "low", 4, serde_json::json!({}))]);
    let a = claim(
        "p",
        "a",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let b = claim(
        "p",
        "b",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&a, &b]);
    assert!(matches!(outcome_of(&p, "p/a"), Outcome::Preempt(_)));
    assert_eq!(explanation(outcome_of(&p, "p/b")).0, UNSCHEDULABLE);
}

#[test]
fn borrowing_is_reclaimed_first_and_does_not_loop() {
    // Kueue #3779's shape: two projects of one tenant, equal priority, each entitled to 5
    // and allowed to borrow 5 of the tenant's 10; both flood. Reclaiming must settle with
    // each project at its own limit, not preempt back and forth forever.
    let mut snap = cluster(10, 1);
    for project in ["a", "b"] {
        snap.upsert_project(project, "t");
        quota(
            &mut snap,
            project,
            serde_json::json!({"project": project, "limits": {"compute": {"cpu": "5"}},
                               "borrowingLimit": {"compute": {"cpu": "5"}}}),
        );
    }
    quota(
        &mut snap,
        "t",
        serde_json::json!({"tenant": "t", "limits": {"compute": {"cpu": "10"}}}),
    );
    let mut pending: HashMap<String, Claim> = HashMap::new();
    // Project a arrives first and borrows the whole tenant.
    for i in 0..10 {
        let c = claim("a", &format!("a{i}"), 1, serde_json::json!({}));
        pending.insert(key(&c), c);
    }
    let mut s = scheduler();
    let all: HashMap<String, Claim> = pending.clone();
    let run = |s: &mut Scheduler, snap: &mut Snapshot, pending: &mut HashMap<String, Claim>| {
        let mut keys: Vec<&String> = pending.keys().collect();
        keys.sort();
        let keyed: Vec<(String, &Claim)> =
            keys.iter().map(|k| ((*k).clone(), &pending[*k])).collect();
        let p = s.plan(snap, &keyed);
        let by_key: HashMap<String, Claim> = pending
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let victims = apply(snap, &p, &by_key);
        let preemptions = victims.len();
        for d in &p.decisions {
            if snap.allocation(&d.claim_key).is_some() {
                pending.remove(&d.claim_key);
            }
        }
        preemptions
    };
    run(&mut s, &mut snap, &mut pending);
    assert_eq!(
        snap.quota("a").unwrap().borrowed()["compute"]["cpu"],
        Quantity::from_units(5)
    );
    for i in 0..10 {
        let c = claim("b", &format!("b{i}"), 1, serde_json::json!({}));
        pending.insert(key(&c), c);
    }
    let mut all = all;
    all.extend(pending.iter().map(|(k, c)| (k.clone(), c.clone())));
    let mut total = 0;
    let mut last = usize::MAX;
    for round in 0..30 {
        // Victims go back to the queue, as the server requeues preempted claims.
        let before: Vec<String> = all
            .keys()
            .filter(|k| snap.allocation(k).is_none() && !pending.contains_key(*k))
            .cloned()
            .collect();
        for k in before {
            pending.insert(k.clone(), all[&k].clone());
        }
        last = run(&mut s, &mut snap, &mut pending);
        total += last;
        if round > 10 {
            assert_eq!(last, 0, "round {round} still preempts");
        }
    }
    assert_eq!(last, 0);
    assert!(
        total <= 5,
        "only a's 5 borrowed CPUs are reclaimed, {total} preemptions"
    );
    for project in ["a", "b"] {
        assert_eq!(
            snap.quota(project).unwrap().used()["compute"]["cpu"],
            Quantity::from_units(5),
            "{project} holds its own limit"
        );
    }
    snap.check_quota_invariants().unwrap();
}

#[test]
fn weighted_queues_converge_to_their_dominant_share() {
    // Two tenants' queues with weights 2 and 1 flood a full 30-CPU cluster with 1-CPU claims;
    // a sixth of the allocations ends every round. The cluster splits 20:10.
    let mut snap = cluster(30, 1);
    snap.upsert_queue("gold", 2.0);
    snap.upsert_queue("silver", 1.0);
    let mut s = scheduler();
    let mut pending: Vec<Claim> = Vec::new();
    let mut running: Vec<String> = Vec::new();
    let mut next = 0;
    let mut shares = Vec::new();
    for round in 0..60 {
        for queue in ["gold", "silver"] {
            while pending
                .iter()
                .filter(|c| c.spec.queue_name() == queue)
                .count()
                < 20
            {
                let mut c = claim(
                    "p",
                    &format!("{queue}{next}"),
                    1,
                    serde_json::json!({"queue": queue}),
                );
                c.metadata.creation_timestamp = Some(infraos_api::Time::from_unix_millis(next));
                next += 1;
                pending.push(c);
            }
        }
        let keyed: Vec<(String, &Claim)> = pending.iter().map(|c| (key(c), c)).collect();
        let p = s.plan(&snap, &keyed);
        let by_key: HashMap<String, Claim> = pending.iter().map(|c| (key(c), c.clone())).collect();
        apply(&mut snap, &p, &by_key);
        pending.retain(|c| {
            let placed = snap.allocation(&key(c)).is_some();
            if placed {
                running.push(key(c));
            }
            !placed
        });
        let gold = snap
            .queue_usage("gold")
            .values()
            .map(Quantity::nanos)
            .sum::<i128>();
        let silver = snap
            .queue_usage("silver")
            .values()
            .map(Quantity::nanos)
            .sum::<i128>();
        if round >= 30 {
            shares.push(gold as f64 / silver.max(1) as f64);
        }
        // The oldest sixth ends.
        for k in running.drain(..5) {
            snap.remove_allocation(&k);
        }
    }
    shares.sort_by(f64::total_cmp);
    let median = shares[shares.len() / 2];
    assert!(
        (1.7..=2.3).contains(&median),
        "gold:silver = {median:.2} ({shares:?})"
    );
}

#[test]
fn aging_lets_a_waiting_queue_through() {
    // A heavy queue holds most of the cluster; a light claim that waited many half-lives goes
    // before the heavy queue's fresh one even at a lower weight.
    let mut snap = cluster(4, 1);
    snap.upsert_queue("light", 0.1);
    snap.upsert_queue("heavy", 1.0);
    place_all(
        &mut snap,
        &[
            claim("p", "held", 1, serde_json::json!({"queue": "light"})),
            claim("p", "h1", 1, serde_json::json!({"queue": "heavy"})),
            claim("p", "h2", 1, serde_json::json!({"queue": "heavy"})),
        ],
    );
    // Shares: light 0.25 / 0.1 = 2.5, heavy 0.5 / 1 = 0.5.
    let mut old = claim("p", "old", 1, serde_json::json!({"queue": "light"}));
    old.metadata.creation_timestamp = Some(infraos_api::Time::from_unix_millis(1));
    let mut fresh = claim("p", "fresh", 1, serde_json::json!({"queue": "heavy"}));
    // Ten half-lives later the old claim's share counts 2.5 / 1024.
    let now = 10 * 300_000 + 1;
    fresh.metadata.creation_timestamp = Some(infraos_api::Time::from_unix_millis(now));
    let keyed = vec![(key(&fresh), &fresh), (key(&old), &old)];
    let first = |p: &Plan| p.decisions[0].claim_key.clone();
    // Without aging (now = 0) the light queue's large share puts it last.
    assert_eq!(first(&scheduler().plan(&snap, &keyed)), "p/fresh");
    assert_eq!(first(&scheduler().plan_at(&snap, &keyed, now, 10)), "p/old");
}

#[test]
fn gangs_are_all_or_nothing() {
    let mut snap = cluster(2, 4);
    let gang = |name: &str| {
        claim(
            "p",
            name,
            4,
            serde_json::json!({"group": {"name": "mpi", "minMembers": 3}}),
        )
    };
    let (a, b, c) = (gang("a"), gang("b"), gang("c"));
    let other = claim("p", "other", 4, serde_json::json!({}));
    // Two members alone: the gang waits for the third.
    let p = plan(&mut scheduler(), &snap, &[&a, &b]);
    let (reason, message) = explanation(outcome_of(&p, "p/a"));
    assert_eq!(reason, GANG_INCOMPLETE);
    assert!(message.contains("2 of 3 members exist"), "{message}");
    // Three members, room for two: none is placed, and the room goes to the next claim.
    let p = plan(&mut scheduler(), &snap, &[&a, &b, &c, &other]);
    for k in ["p/a", "p/b", "p/c"] {
        let (reason, message) = explanation(outcome_of(&p, k));
        assert_eq!(reason, GANG_INCOMPLETE);
        assert!(message.contains("only 2 of 3 members fit"), "{message}");
    }
    placement(outcome_of(&p, "p/other"));
    // With room for all three, all three are placed in the same plan.
    node(&mut snap, "n2", 4, &[]);
    let p = plan(&mut scheduler(), &snap, &[&a, &b, &c]);
    for k in ["p/a", "p/b", "p/c"] {
        placement(outcome_of(&p, k));
    }
}

#[test]
fn gang_members_are_preempted_together() {
    let mut snap = cluster(3, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let gang: Vec<Claim> = (0..3)
        .map(|i| {
            claim(
                "p",
                &format!("g{i}"),
                4,
                serde_json::json!({"group": {"name": "train", "minMembers": 3}}),
            )
        })
        .collect();
    place_all(&mut snap, &gang);
    let high = claim(
        "p",
        "h",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&high]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/h") else {
        panic!("{p:?}")
    };
    assert_eq!(pre.victims.len(), 3, "the whole gang goes: {pre:?}");
    assert!(pre.victims.iter().all(|v| v.reason.contains("gang train")));
}

#[test]
fn a_gang_preempts_as_a_whole_and_is_placed_together_after() {
    let mut snap = cluster(3, 4);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    // n0 and n1 full of low claims, n2 free.
    let lows: Vec<Claim> = (0..2)
        .map(|i| claim("p", &format!("low{i}"), 4, serde_json::json!({})))
        .collect();
    place_all(&mut snap, &lows);
    let gang = |n: usize| -> Vec<Claim> {
        (0..n)
            .map(|i| {
                claim(
                    "p",
                    &format!("g{i}"),
                    4,
                    serde_json::json!({"priorityClassName": "high",
                        "group": {"name": "train", "minMembers": n}}),
                )
            })
            .collect()
    };
    // Four members need four nodes: even preempting everything it may, it cannot fit, so
    // nothing is preempted and nothing placed.
    let four = gang(4);
    let refs: Vec<&Claim> = four.iter().collect();
    let p = plan(&mut scheduler(), &snap, &refs);
    for d in &p.decisions {
        let (reason, message) = explanation(&d.outcome);
        assert_eq!(reason, GANG_INCOMPLETE, "{message}");
    }
    // Three members: one fits on n2 now, two fit by preempting low0 and low1. None is
    // placed yet; two preempt, the third waits with them.
    let three = gang(3);
    let refs: Vec<&Claim> = three.iter().collect();
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &refs);
    let mut victims = Vec::new();
    let mut waiting = 0;
    for d in &p.decisions {
        match &d.outcome {
            Outcome::Preempt(pre) => {
                victims.extend(pre.victims.iter().map(|v| v.allocation.clone()))
            }
            Outcome::Unschedulable(e) if e.reason == WAITING_FOR_PREEMPTION => {
                assert!(e.message().contains("placed together"), "{}", e.message());
                waiting += 1;
            }
            other => panic!("{} {other:?}", d.claim_key),
        }
    }
    victims.sort();
    assert_eq!(victims, ["p/low0", "p/low1"]);
    assert_eq!(waiting, 1);
    assert_eq!(s.nominations.len(), 3);
    // While the victims stop, a low claim cannot take n2, held for the gang.
    let filler = claim("p", "filler", 4, serde_json::json!({}));
    let p = plan(&mut s, &snap, &[&filler]);
    let (_, message) = explanation(outcome_of(&p, "p/filler"));
    assert!(message.contains("capacity held for 3"), "{message}");
    // Once they have ended, the whole gang is placed in one plan.
    snap.remove_allocation("p/low0");
    snap.remove_allocation("p/low1");
    let mut refs: Vec<&Claim> = three.iter().collect();
    refs.push(&filler);
    let p = plan(&mut s, &snap, &refs);
    for c in &three {
        placement(outcome_of(&p, &key(c)));
    }
    assert_eq!(explanation(outcome_of(&p, "p/filler")).0, UNSCHEDULABLE);
    assert!(s.nominations.is_empty());
}

#[test]
fn a_gang_preempts_for_its_project_quota() {
    let mut snap = cluster(2, 16);
    snap.upsert_project("p", "t");
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    quota(
        &mut snap,
        "pq",
        serde_json::json!({"project": "p", "limits": {"compute": {"cpu": "11"}}}),
    );
    let lows: Vec<Claim> = (0..3)
        .map(|i| claim("p", &format!("low{i}"), 3, serde_json::json!({})))
        .collect();
    place_all(&mut snap, &lows);
    // 9 of 11 CPUs used; two 4-CPU members need 8: two lows must go (one is not enough).
    let gang: Vec<Claim> = (0..2)
        .map(|i| {
            claim(
                "p",
                &format!("g{i}"),
                4,
                serde_json::json!({"priorityClassName": "high",
                    "group": {"name": "pair", "minMembers": 2}}),
            )
        })
        .collect();
    let refs: Vec<&Claim> = gang.iter().collect();
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &refs);
    let mut victims: Vec<String> = Vec::new();
    for d in &p.decisions {
        match &d.outcome {
            Outcome::Preempt(pre) => {
                assert!(pre.node.is_some());
                victims.extend(pre.victims.iter().map(|v| v.allocation.clone()));
            }
            Outcome::Unschedulable(e) if e.reason == WAITING_FOR_PREEMPTION => {}
            other => panic!("{} {other:?}", d.claim_key),
        }
    }
    assert_eq!(victims.len(), 2, "{victims:?}");
    for v in &victims {
        snap.remove_allocation(v);
    }
    let p = plan(&mut s, &snap, &refs);
    for c in &gang {
        placement(outcome_of(&p, &key(c)));
    }
}

#[test]
fn taints_keep_claims_off_reserved_nodes_unless_tolerated() {
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
fn affinity_and_anti_affinity_between_claims_over_a_topology_key() {
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

fn zoned_cluster(zones: &[(&str, &str)], cpu: i64) -> Snapshot {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for (name, zone) in zones {
        node(&mut snap, name, cpu, &[("zone", zone)]);
    }
    snap
}

fn labelled(name: &str, app: &str, extra: serde_json::Value) -> Claim {
    let mut c = claim("p", name, 1, extra);
    c.metadata.labels.insert("app".into(), app.into());
    c
}

fn zone_of(snap: &Snapshot, o: &Outcome) -> String {
    let n = placement(o).node.clone().unwrap();
    snap.node_by_name(&n).unwrap().labels["zone"].clone()
}

fn zone_counts(snap: &Snapshot, app: &str) -> BTreeMap<String, usize> {
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
fn topology_spread_keeps_the_skew_within_bounds() {
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
fn soft_terms_steer_placement_without_rejecting_nodes() {
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
fn required_anti_affinity_binds_both_ways() {
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
fn tenants_are_held_to_their_compliance_and_isolation_domains() {
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

fn priced_node(snap: &mut Snapshot, name: &str, zone: &str, price: Option<f64>, watts: f64) {
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
fn cost_energy_and_network_plugins_score_relative_to_the_candidates() {
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

#[test]
fn a_gang_on_one_node_is_one_victim_counted_once() {
    // n0 (5 CPUs) holds gang members g0 and g1 (2 CPUs each) and, between them in name order,
    // g0a (1 CPU). A 6-CPU claim cannot fit n0 whatever is preempted; counting the gang once
    // per member would say 9 CPUs come free and preempt everything for nothing.
    let mut snap = cluster(1, 5);
    priority_class(
        &mut snap,
        "high",
        100,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let member = |name: &str| {
        claim(
            "p",
            name,
            2,
            serde_json::json!({"group": {"name": "pair", "minMembers": 2}}),
        )
    };
    place_all(
        &mut snap,
        &[
            member("g0"),
            member("g1"),
            claim("p", "g0a", 1, serde_json::json!({})),
        ],
    );
    let big = claim(
        "p",
        "big",
        6,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&big]);
    assert_eq!(
        explanation(outcome_of(&p, "p/big")).0,
        UNSCHEDULABLE,
        "{p:?}"
    );
    let fits = claim(
        "p",
        "fits",
        4,
        serde_json::json!({"priorityClassName": "high"}),
    );
    let p = plan(&mut scheduler(), &snap, &[&fits]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/fits") else {
        panic!("{p:?}")
    };
    let mut victims: Vec<&str> = pre.victims.iter().map(|v| v.allocation.as_str()).collect();
    victims.sort();
    assert_eq!(
        victims,
        ["p/g0", "p/g1"],
        "the whole gang, not the 1-CPU claim too"
    );
}

// ---- property tests ---------------------------------------------------------------------

#[derive(Clone, Debug)]
struct GovSpec {
    nodes: Vec<u8>,
    /// (project 0..3, cpu 1..4, priority level 0..3, gang 0..2 (0 = none))
    claims: Vec<(u8, u8, u8, u8)>,
    /// Project and tenant limits.
    limits: (u8, u8, u8),
}

fn arb_gov() -> impl Strategy<Value = GovSpec> {
    (
        proptest::collection::vec(1u8..9, 1..6),
        proptest::collection::vec((0u8..3, 1u8..5, 0u8..3, 0u8..3), 1..40),
        (1u8..16, 1u8..16, 1u8..24),
    )
        .prop_map(|(nodes, claims, limits)| GovSpec {
            nodes,
            claims,
            limits,
        })
}

fn gov_cluster(spec: &GovSpec) -> (Snapshot, Vec<Claim>) {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for (i, cpu) in spec.nodes.iter().enumerate() {
        node(&mut snap, &format!("n{i}"), i64::from(*cpu), &[]);
    }
    for (i, p) in ["p0", "p1", "p2"].iter().enumerate() {
        snap.upsert_project(p, if i < 2 { "t0" } else { "t1" });
    }
    priority_class(&mut snap, "l0", 0, PreemptionPolicy::PreemptLowerPriority);
    priority_class(&mut snap, "l1", 50, PreemptionPolicy::PreemptLowerPriority);
    priority_class(&mut snap, "l2", 100, PreemptionPolicy::PreemptLowerPriority);
    quota(
        &mut snap,
        "p0",
        serde_json::json!({"project": "p0", "limits": {"compute": {"cpu": spec.limits.0.to_string()}},
                           "borrowingLimit": {"compute": {"cpu": "4"}}}),
    );
    quota(
        &mut snap,
        "p1",
        serde_json::json!({"project": "p1", "limits": {"compute": {"cpu": spec.limits.1.to_string()}}}),
    );
    quota(
        &mut snap,
        "t0",
        serde_json::json!({"tenant": "t0", "limits": {"compute": {"cpu": spec.limits.2.to_string()}}}),
    );
    let claims = spec
        .claims
        .iter()
        .enumerate()
        .map(|(i, (project, cpu, level, gang))| {
            let mut extra = serde_json::json!({"priorityClassName": format!("l{level}")});
            if *gang > 0 {
                extra["group"] = serde_json::json!({"name": format!("g{gang}"), "minMembers": 2});
            }
            claim(
                &format!("p{project}"),
                &format!("c{i}"),
                i64::from(*cpu),
                extra,
            )
        })
        .collect();
    (snap, claims)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over random clusters, quotas and claim streams, applied round after round with
    /// preemption: capacity and every quota level hold, a gang is never partly placed, a
    /// pending claim is never passed over for a lower-priority one it could have used the
    /// room of, and preemption only evicts lower priorities (or borrowed quota).
    #[test]
    fn governance_invariants_hold(spec in arb_gov()) {
        let (mut snap, claims) = gov_cluster(&spec);
        let by_key: HashMap<String, Claim> = claims.iter().map(|c| (key(c), c.clone())).collect();
        let mut s = scheduler();
        let mut pending: Vec<String> = by_key.keys().cloned().collect();
        pending.sort();
        for _round in 0..4 {
            let keyed: Vec<(String, &Claim)> = pending.iter().map(|k| (k.clone(), &by_key[k])).collect();
            let p = s.plan(&snap, &keyed);
            // Priority: whatever fits a claim's shape but went unplaced must not be beaten by
            // a lower-priority claim of the same or larger size placed in the same plan.
            let prio = |k: &str| crate::planner::claim_priority(&snap, &by_key[k]).0;
            let cpu = |k: &str| by_key[k].spec.requests[0].amount["cpu"].nanos();
            for d in &p.decisions {
                if let Outcome::Unschedulable(e) = &d.outcome && e.reason == UNSCHEDULABLE
                    && by_key[&d.claim_key].spec.group.is_none() {
                    for other in &p.decisions {
                        if let Outcome::Placed(_) = other.outcome {
                            let ns_same = other.claim_key.split('/').next() == d.claim_key.split('/').next();
                            prop_assert!(
                                !(ns_same && prio(&other.claim_key) < prio(&d.claim_key)
                                    && cpu(&other.claim_key) >= cpu(&d.claim_key)
                                    && by_key[&other.claim_key].spec.group.is_none()),
                                "{} (priority {}) skipped for {} (priority {})",
                                d.claim_key, prio(&d.claim_key), other.claim_key, prio(&other.claim_key)
                            );
                        }
                    }
                }
                if let Outcome::Preempt(pre) = &d.outcome {
                    for v in &pre.victims {
                        prop_assert!(
                            v.priority < prio(&d.claim_key) || v.reason.contains("reclaiming")
                                || v.reason.contains("gang"),
                            "{} preempts {} of priority {}: {}", d.claim_key, v.allocation, v.priority, v.reason
                        );
                    }
                }
            }
            // Gangs: all placed members of a gang in this plan number at least minMembers.
            let mut gang_placed: BTreeMap<String, usize> = BTreeMap::new();
            for d in &p.decisions {
                if let (Outcome::Placed(_), Some(g)) = (&d.outcome, &by_key[&d.claim_key].spec.group) {
                    *gang_placed.entry(format!("{}/{}", d.claim_key.split('/').next().unwrap_or(""), g.name)).or_default() += 1;
                }
            }
            for (g, n) in &gang_placed {
                let (ns, name) = g.split_once('/').unwrap();
                let before = snap.gang_allocations(ns, name).len();
                prop_assert!(n + before >= 2, "gang {} partly placed: {} new + {} held", g, n, before);
            }
            apply(&mut snap, &p, &by_key);
            prop_assert!(snap.check_invariants().is_ok(), "{:?}", snap.check_invariants());
            prop_assert!(snap.check_quota_invariants().is_ok(), "{:?}", snap.check_quota_invariants());
            pending = by_key.keys().filter(|k| snap.allocation(k).is_none()).cloned().collect();
            pending.sort();
        }
    }
}
