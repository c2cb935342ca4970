//! Preemption that converges (issue 17, finding 3): scenarios, and a property test over
//! random clusters, quotas with borrowing and claim streams with churn, where victims stop
//! after a grace of some rounds, as the server's lease controller ends them.

use std::collections::{BTreeMap, HashMap, HashSet};

use infraos_api::kinds::{Claim, PreemptionPolicy};
use proptest::prelude::*;

use crate::planner::{QUOTA_EXCEEDED, WAITING_FOR_PREEMPTION};
use crate::test_fixtures::{
    claim, compute_class, key, meta, node, outcome_of, plan, priority_class, quota, record,
    record_placed, scheduler,
};
use crate::{Outcome, Snapshot};

/// A tenant `t` of projects `a` and `b`, each entitled to 2 CPUs and allowed to borrow 2 of
/// the tenant's 4, on a cluster with room to spare; priority classes `batch` (10) and
/// `prod` (1000).
fn borrowing_tenant() -> Snapshot {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "n0", 16, &[]);
    for p in ["a", "b"] {
        snap.upsert_project(p, "t");
        quota(
            &mut snap,
            p,
            serde_json::json!({"project": p, "limits": {"compute": {"cpu": "2"}},
                               "borrowingLimit": {"compute": {"cpu": "2"}}}),
        );
    }
    quota(
        &mut snap,
        "t",
        serde_json::json!({"tenant": "t", "limits": {"compute": {"cpu": "4"}}}),
    );
    priority_class(
        &mut snap,
        "batch",
        10,
        PreemptionPolicy::PreemptLowerPriority,
    );
    priority_class(
        &mut snap,
        "prod",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    snap
}

/// Issue 17: a prod claim that was borrowing was evicted 5 times in 26 s to reclaim quota for
/// a batch claim that was never placed. Reclaiming borrowed quota never evicts a higher
/// priority: the batch claim waits (QuotaExceeded); a borrower of its own priority is
/// reclaimed, and then cannot borrow the room back while the reclaimer waits for it.
#[test]
fn reclaim_never_evicts_a_higher_priority_and_holds_against_equal_ones() {
    let mut snap = borrowing_tenant();
    let a1 = claim(
        "a",
        "a1",
        2,
        serde_json::json!({"priorityClassName": "prod"}),
    );
    let a2 = claim(
        "a",
        "a2",
        2,
        serde_json::json!({"priorityClassName": "prod"}),
    );
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &[&a1, &a2]);
    record_placed(&mut snap, &p, &[&a1, &a2]);
    assert!(snap.allocation_meta("a/a2").unwrap().borrowing);
    let b1 = claim(
        "b",
        "b1",
        2,
        serde_json::json!({"priorityClassName": "batch"}),
    );
    let p = plan(&mut s, &snap, &[&b1]);
    let Outcome::Unschedulable(e) = outcome_of(&p, "b/b1") else {
        panic!("a batch claim preempts prod: {p:?}")
    };
    assert_eq!(e.reason, QUOTA_EXCEEDED);

    // The same with a borrower of batch priority: reclaimed, and held against.
    let mut snap = borrowing_tenant();
    let a1 = claim(
        "a",
        "a1",
        2,
        serde_json::json!({"priorityClassName": "batch"}),
    );
    let a2 = claim(
        "a",
        "a2",
        2,
        serde_json::json!({"priorityClassName": "batch"}),
    );
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &[&a1, &a2]);
    record_placed(&mut snap, &p, &[&a1, &a2]);
    let p = plan(&mut s, &snap, &[&b1]);
    let Outcome::Preempt(pre) = outcome_of(&p, "b/b1") else {
        panic!("{p:?}")
    };
    assert!(pre.victims[0].reason.contains("reclaiming"), "{pre:?}");
    let victim = pre.victims[0].allocation.clone();
    snap.remove_allocation(&victim);
    let back = if victim == "a/a1" { &a1 } else { &a2 };
    // The victim, requeued first, cannot borrow back what b1 is owed.
    let p = plan(&mut s, &snap, &[back]);
    assert!(
        matches!(outcome_of(&p, &victim), Outcome::Unschedulable(_)),
        "{p:?}"
    );
    let p = plan(&mut s, &snap, &[back, &b1]);
    assert!(
        matches!(outcome_of(&p, "b/b1"), Outcome::Placed(_)),
        "{p:?}"
    );
}

/// Issue 17: prod claims were placed 20–26 s after their first preemption, because another
/// claim of equal priority took the freed room. A nomination holds against equal priorities.
#[test]
fn a_nomination_holds_against_equal_priorities() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "n0", 4, &[]);
    priority_class(
        &mut snap,
        "prod",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let low = claim("p", "low", 4, serde_json::json!({}));
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &[&low]);
    record_placed(&mut snap, &p, &[&low]);
    let first = claim(
        "p",
        "first",
        4,
        serde_json::json!({"priorityClassName": "prod"}),
    );
    let second = claim(
        "p",
        "second",
        4,
        serde_json::json!({"priorityClassName": "prod"}),
    );
    let p = plan(&mut s, &snap, &[&first]);
    assert!(matches!(outcome_of(&p, "p/first"), Outcome::Preempt(_)));
    snap.remove_allocation("p/low");
    let p = plan(&mut s, &snap, &[&second]);
    let Outcome::Unschedulable(e) = outcome_of(&p, "p/second") else {
        panic!("an equal priority took the nominated room: {p:?}")
    };
    assert!(
        e.message().contains("held for 1 preempting claim"),
        "{}",
        e.message()
    );
    let p = plan(&mut s, &snap, &[&second, &first]);
    assert!(
        matches!(outcome_of(&p, "p/first"), Outcome::Placed(_)),
        "{p:?}"
    );
}

/// A preemptor decided again while its victims stop waits on its nominated node: it
/// preempts nothing more elsewhere; and an allocation it preempted that came back is never
/// preempted by it again before it is placed.
#[test]
fn a_preemptor_waits_for_its_own_victims_and_never_preempts_one_twice() {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    node(&mut snap, "n0", 4, &[]);
    node(&mut snap, "n1", 4, &[]);
    priority_class(
        &mut snap,
        "prod",
        1000,
        PreemptionPolicy::PreemptLowerPriority,
    );
    let lows: Vec<Claim> = (0..2)
        .map(|i| claim("p", &format!("low{i}"), 4, serde_json::json!({})))
        .collect();
    let refs: Vec<&Claim> = lows.iter().collect();
    let mut s = scheduler();
    let p = plan(&mut s, &snap, &refs);
    record_placed(&mut snap, &p, &refs);
    let prod = claim(
        "p",
        "prod",
        4,
        serde_json::json!({"priorityClassName": "prod"}),
    );
    let p = plan(&mut s, &snap, &[&prod]);
    let Outcome::Preempt(pre) = outcome_of(&p, "p/prod") else {
        panic!("{p:?}")
    };
    let victim = pre.victims[0].allocation.clone();
    snap.mark_preempting(&victim);
    for _ in 0..3 {
        let p = plan(&mut s, &snap, &[&prod]);
        let Outcome::Unschedulable(e) = outcome_of(&p, "p/prod") else {
            panic!("preempts more while its victim stops: {p:?}")
        };
        assert_eq!(e.reason, WAITING_FOR_PREEMPTION);
    }
    // The victim ends and is placed back where it was (as if the nomination had not held).
    let back = lows.iter().find(|c| key(c) == victim).unwrap();
    let resources = snap.allocation(&victim).unwrap().to_vec();
    snap.remove_allocation(&victim);
    snap.apply_allocation(&victim, &resources, meta(&snap, back, false));
    let p = plan(&mut s, &snap, &[&prod]);
    if let Outcome::Preempt(pre) = outcome_of(&p, "p/prod") {
        assert!(
            pre.victims.iter().all(|v| v.allocation != victim),
            "{victim} preempted twice by p/prod: {pre:?}"
        );
    }
}

// ---- property test ---------------------------------------------------------------------

/// One generated claim: (arrival round, project 0..3, cpu 1..4, priority level 0..3, gang
/// 0..2, lifetime in rounds once placed (0: until the end), grace in rounds, deleted while
/// pending at this round (0: never)). A tuple, so proptest's shrunk cases stay short.
type ClaimGen = (u8, u8, u8, u8, u8, u8, u8, u8);

#[derive(Clone, Debug)]
struct ChurnSpec {
    nodes: Vec<u8>,
    claims: Vec<ClaimGen>,
    /// Project p0, p1 and tenant t0 limits.
    limits: (u8, u8, u8),
}

fn arb_churn() -> impl Strategy<Value = ChurnSpec> {
    (
        proptest::collection::vec(2u8..9, 1..5),
        proptest::collection::vec(
            (
                0u8..8,
                0u8..3,
                1u8..5,
                0u8..3,
                0u8..3,
                0u8..5,
                0u8..3,
                0u8..12,
            ),
            1..40,
        ),
        (1u8..10, 1u8..10, 2u8..16),
    )
        .prop_map(|(nodes, claims, limits)| ChurnSpec {
            nodes,
            claims,
            limits,
        })
}

const LEVELS: [i32; 3] = [0, 50, 100];

/// A claim's priority level; a gang's members share the level of its first member (as they
/// share a priority class in practice).
fn level_of(spec: &ChurnSpec, i: usize) -> u8 {
    let (_, project, _, level, gang, ..) = spec.claims[i];
    if gang == 0 {
        return level;
    }
    spec.claims
        .iter()
        .find(|c| c.1 == project && c.4 == gang)
        .map_or(level, |c| c.3)
}
const CHURN_ROUNDS: u32 = 10;
const SETTLE_ROUNDS: u32 = 16;

fn churn_cluster(spec: &ChurnSpec) -> (Snapshot, Vec<Claim>) {
    let mut snap = Snapshot::new();
    compute_class(&mut snap);
    for (i, cpu) in spec.nodes.iter().enumerate() {
        node(&mut snap, &format!("n{i}"), i64::from(*cpu), &[]);
    }
    for (i, p) in ["p0", "p1", "p2"].iter().enumerate() {
        snap.upsert_project(p, if i < 2 { "t0" } else { "t1" });
    }
    for (i, v) in LEVELS.iter().enumerate() {
        priority_class(
            &mut snap,
            &format!("l{i}"),
            *v,
            PreemptionPolicy::PreemptLowerPriority,
        );
    }
    quota(
        &mut snap,
        "p0",
        serde_json::json!({"project": "p0", "limits": {"compute": {"cpu": spec.limits.0.to_string()}},
                           "borrowingLimit": {"compute": {"cpu": "6"}}}),
    );
    quota(
        &mut snap,
        "p1",
        serde_json::json!({"project": "p1", "limits": {"compute": {"cpu": spec.limits.1.to_string()}},
                           "borrowingLimit": {"compute": {"cpu": "6"}}}),
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
        .map(|(i, c)| {
            let (_, project, cpu, _, gang, ..) = *c;
            let level = level_of(spec, i);
            let mut extra = serde_json::json!({"priorityClassName": format!("l{level}")});
            if gang > 0 {
                extra["group"] = serde_json::json!({"name": format!("g{gang}"), "minMembers": 2});
            }
            claim(
                &format!("p{project}"),
                &format!("c{i}"),
                i64::from(cpu),
                extra,
            )
        })
        .collect();
    (snap, claims)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Over random clusters, quotas with borrowing and claim streams with churn (arrivals,
    /// releases, deletions; victims stop after a grace of 0–2 rounds, then their claims are
    /// requeued): no victim is preempted twice by the same preemptor before that preemptor
    /// is placed; reclaim never evicts a higher priority; once the churn stops, preemption
    /// stops and every preemptor is placed or has given up with a reason (none is left
    /// waiting); a top-priority claim is placed within its victims' grace plus one round
    /// of its first preemption; capacity and quotas hold throughout.
    #[test]
    fn preemption_converges_under_churn(spec in arb_churn()) {
        check_churn(&spec)?;
    }
}

fn check_churn(spec: &ChurnSpec) -> Result<(), TestCaseError> {
    {
        let (mut snap, claims) = churn_cluster(spec);
        let by_key: HashMap<String, (&Claim, usize)> = claims
            .iter()
            .enumerate()
            .map(|(i, c)| (key(c), (c, i)))
            .collect();
        let mut s = scheduler();
        let prio = |k: &str| LEVELS[level_of(spec, by_key[k].1) as usize];
        let mut pending: HashSet<String> = HashSet::new();
        let mut placed_at: HashMap<String, u32> = HashMap::new();
        let mut deleted: HashSet<String> = HashSet::new();
        // Victim → the round its lease (cut to its grace) ends.
        let mut stopping: BTreeMap<String, u32> = BTreeMap::new();
        // (preemptor, victim) pairs since the preemptor was last placed.
        let mut preempted: HashSet<(String, String)> = HashSet::new();
        let mut first_preemption: HashMap<String, (u32, u32)> = HashMap::new();
        let mut last: HashMap<String, Outcome> = HashMap::new();
        let mut preemptors: HashSet<String> = HashSet::new();
        let mut quiet_rounds = 0;
        for round in 0..CHURN_ROUNDS + SETTLE_ROUNDS {
            let churn = round < CHURN_ROUNDS;
            // Victims whose grace is over end; their claims go back to the queue.
            let ended: Vec<String> = stopping
                .iter()
                .filter(|(_, at)| **at <= round)
                .map(|(k, _)| k.clone())
                .collect();
            for k in ended {
                stopping.remove(&k);
                snap.remove_allocation(&k);
                placed_at.remove(&k);
                pending.insert(k);
            }
            if churn {
                for (k, (_, i)) in &by_key {
                    let c = spec.claims[*i];
                    if u32::from(c.0) == round && !deleted.contains(k) {
                        pending.insert(k.clone());
                    }
                    // Deleted while pending.
                    if u32::from(c.7) == round && c.7 > 0 && pending.remove(k) {
                        deleted.insert(k.clone());
                        s.forget(k);
                        preemptors.remove(k);
                    }
                }
                // Released once their lifetime is over (not while being preempted).
                let released: Vec<String> = placed_at
                    .iter()
                    .filter(|(k, at)| {
                        let life = u32::from(spec.claims[by_key[*k].1].5);
                        life > 0 && round >= **at + life && !stopping.contains_key(*k)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in released {
                    snap.remove_allocation(&k);
                    placed_at.remove(&k);
                    deleted.insert(k.clone());
                    s.forget(&k);
                }
            }
            let mut keys: Vec<&String> = pending.iter().collect();
            keys.sort();
            let keyed: Vec<(String, &Claim)> =
                keys.iter().map(|k| ((*k).clone(), by_key[*k].0)).collect();
            let p = s.plan(&snap, &keyed);
            let mut preemptions = 0;
            for d in &p.decisions {
                let k = &d.claim_key;
                match &d.outcome {
                    Outcome::Placed(pl) => {
                        prop_assert!(snap.fits(&pl.resources).is_ok(), "{k} placed over capacity");
                        record(&mut snap, by_key[k].0, pl);
                        // Applied: the placement is confirmed, as the server does at commit.
                        s.forget(k);
                        pending.remove(k);
                        placed_at.insert(k.clone(), round);
                        preempted.retain(|(by, _)| by != k);
                        if let Some((first, grace)) = first_preemption.remove(k)
                            && prio(k) == LEVELS[2]
                            && by_key[k].0.spec.group.is_none()
                        {
                            prop_assert!(
                                round <= first + grace + 1,
                                "{k} (top priority) placed in round {round}, first preempted in \
                                 round {first} for victims of grace {grace}"
                            );
                        }
                    }
                    Outcome::Preempt(pre) => {
                        preemptors.insert(k.clone());
                        let mut grace = 0;
                        for v in &pre.victims {
                            preemptions += 1;
                            prop_assert!(
                                preempted.insert((k.clone(), v.allocation.clone())),
                                "{} preempted twice by {k}, which was not placed in between",
                                v.allocation
                            );
                            let vp = prio(&v.allocation);
                            if v.reason.contains("reclaiming") {
                                prop_assert!(
                                    vp <= prio(k),
                                    "{k} reclaims from a higher priority: {v:?}"
                                );
                            } else if !v.reason.contains("gang") {
                                prop_assert!(vp < prio(k), "{k} preempts {v:?}");
                            }
                            let g = u32::from(spec.claims[by_key[&v.allocation].1].6);
                            grace = grace.max(g);
                            snap.mark_preempting(&v.allocation);
                            stopping.entry(v.allocation.clone()).or_insert(round + g);
                        }
                        first_preemption.entry(k.clone()).or_insert((round, grace));
                    }
                    Outcome::Unschedulable(e) => {
                        prop_assert!(!e.message().is_empty(), "{k} pending without a reason");
                    }
                }
                last.insert(k.clone(), d.outcome.clone());
            }
            prop_assert!(
                snap.check_invariants().is_ok(),
                "{:?}",
                snap.check_invariants()
            );
            prop_assert!(
                snap.check_quota_invariants().is_ok(),
                "{:?}",
                snap.check_quota_invariants()
            );
            if !churn {
                quiet_rounds = if preemptions == 0 && stopping.is_empty() {
                    quiet_rounds + 1
                } else {
                    0
                };
            }
        }
        // Converged: the last settling rounds preempted nothing, and no preemptor waits.
        prop_assert!(
            quiet_rounds >= 3,
            "still preempting at the end ({quiet_rounds} quiet rounds)"
        );
        for k in &preemptors {
            if deleted.contains(k) || placed_at.contains_key(k) {
                continue;
            }
            match last.get(k) {
                Some(Outcome::Unschedulable(e)) => prop_assert!(
                    e.reason != WAITING_FOR_PREEMPTION,
                    "{k} still waits for preemption after the churn: {}",
                    e.message()
                ),
                other => prop_assert!(false, "{k} ends neither placed nor given up: {other:?}"),
            }
        }
    }
    Ok(())
}

/// A case the property test found while preemption was being fixed (gangs, borrowers and
/// deletions mixed in one tenant), kept as its own test so it runs whatever proptest's seed.
#[test]
fn churn_regression_a_victim_is_not_preempted_twice() {
    let spec = ChurnSpec {
        nodes: vec![5, 7, 8],
        claims: vec![
            (0, 0, 4, 1, 2, 4, 2, 0),
            (3, 1, 4, 0, 1, 4, 0, 9),
            (3, 1, 4, 2, 0, 3, 2, 9),
            (7, 2, 2, 0, 0, 4, 0, 8),
            (7, 1, 2, 0, 0, 4, 1, 6),
            (4, 1, 1, 2, 1, 4, 1, 2),
            (5, 1, 1, 0, 2, 4, 2, 7),
            (5, 1, 3, 0, 1, 1, 1, 6),
            (4, 0, 3, 2, 1, 2, 1, 11),
            (1, 2, 2, 2, 1, 1, 0, 4),
            (0, 1, 3, 2, 2, 1, 1, 11),
            (5, 2, 2, 2, 0, 0, 1, 9),
            (0, 1, 1, 2, 2, 1, 0, 2),
            (6, 2, 2, 2, 0, 4, 2, 0),
            (0, 1, 2, 0, 2, 4, 1, 8),
            (1, 1, 1, 2, 2, 4, 0, 0),
            (5, 0, 3, 2, 1, 4, 2, 3),
            (6, 0, 4, 2, 2, 4, 1, 2),
            (0, 1, 1, 1, 1, 1, 0, 6),
            (6, 2, 2, 2, 1, 2, 0, 6),
            (0, 2, 4, 0, 1, 1, 0, 4),
            (3, 0, 2, 2, 2, 4, 0, 5),
            (0, 0, 3, 0, 0, 2, 2, 3),
            (3, 2, 2, 0, 0, 1, 0, 6),
            (1, 1, 4, 0, 1, 0, 2, 5),
            (7, 2, 2, 0, 2, 2, 2, 3),
            (7, 2, 3, 2, 0, 2, 0, 0),
            (0, 1, 3, 2, 1, 2, 2, 9),
            (6, 2, 1, 1, 0, 4, 2, 0),
        ],
        limits: (2, 5, 10),
    };
    check_churn(&spec).unwrap();
}
