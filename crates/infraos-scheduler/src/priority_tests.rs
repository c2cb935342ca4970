//! Priorities and preemption scenarios: fewest lowest-priority victims, policies and gaps,
//! nominations holding what victims free, quota preemption and the reclaim of borrowed quota.

use std::collections::HashMap;

use infraos_api::Quantity;
use infraos_api::kinds::*;

use crate::planner::{QUOTA_EXCEEDED, UNSCHEDULABLE, WAITING_FOR_PREEMPTION};
use crate::test_fixtures::*;
use crate::{Outcome, Profile, Scheduler, Snapshot};

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
    mark_preempting(&mut snap, &low);
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
        mark_preempting(&mut snap, c);
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
    mark_preempting(&mut snap, &low);
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
