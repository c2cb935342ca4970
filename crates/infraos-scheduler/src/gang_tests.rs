//! Gang scenarios: all or nothing, preempted together, preempting as a whole.

use infraos_api::kinds::*;

use crate::Outcome;
use crate::planner::{GANG_INCOMPLETE, UNSCHEDULABLE, WAITING_FOR_PREEMPTION};
use crate::test_fixtures::*;

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

/// Issue 17: a gang whose victims are still stopping, decided again (any allocation's end
/// wakes it), finds a member short of a quota level that a victim another member preempted
/// will free: it waits for them with its places held. Before, it gave up (`GangIncomplete`)
/// and preempted one more victim a round later, again and again while its victims stopped.
#[test]
fn a_gang_waits_for_its_stopping_victims_instead_of_giving_up() {
    let mut snap = cluster(2, 4);
    snap.upsert_project("p", "t");
    snap.upsert_project("q", "u");
    priority_class(
        &mut snap,
        "top",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    quota(
        &mut snap,
        "tq",
        serde_json::json!({"tenant": "t", "limits": {"compute": {"cpu": "8"}}}),
    );
    // One node holds a claim of the gang's tenant, the other one of another tenant.
    let mine = claim("p", "mine", 4, serde_json::json!({}));
    let theirs = claim("q", "theirs", 4, serde_json::json!({}));
    place_all(&mut snap, &[mine.clone(), theirs.clone()]);
    let member = |name: &str| {
        claim(
            "p",
            name,
            4,
            serde_json::json!({"priorityClassName": "top", "group": {"name": "g", "minMembers": 2}}),
        )
    };
    let (a, b) = (member("a"), member("b"));
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &[&a, &b]);
    let mut victims = Vec::new();
    for k in ["p/a", "p/b"] {
        if let Outcome::Preempt(plan) = outcome_of(&p, k) {
            victims.extend(plan.victims.iter().map(|v| v.allocation.clone()));
        }
    }
    victims.sort();
    assert_eq!(victims, ["p/mine", "q/theirs"], "{p:?}");
    // The victims stop (preempted, their leases cut); the gang is decided again meanwhile,
    // members in the other order.
    for c in [&mine, &theirs] {
        let k = key(c);
        let parts = snap.allocation(&k).unwrap().to_vec();
        let mut m = meta(&snap, c, false);
        m.preempting = true;
        snap.apply_allocation(&k, &parts, m);
    }
    for order in [[&b, &a], [&a, &b]] {
        let p = plan(&mut s, &snap, &order);
        for k in ["p/a", "p/b"] {
            let (reason, message) = explanation(outcome_of(&p, k));
            assert_eq!(reason, WAITING_FOR_PREEMPTION, "{k}: {message}");
        }
    }
    // The victims have ended: the gang is placed whole, without a second round.
    snap.remove_allocation("p/mine");
    snap.remove_allocation("q/theirs");
    let p = plan(&mut s, &snap, &[&a, &b]);
    placement(outcome_of(&p, "p/a"));
    placement(outcome_of(&p, "p/b"));
}
