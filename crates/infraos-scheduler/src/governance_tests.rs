//! Governance scenarios and property tests: quotas at each level, fair queues and aging,
//! driven through the pure planner with allocations applied as the server would; and the
//! property test over random quotas, priorities and gangs. Priorities and preemption are in
//! `priority_tests.rs`, gangs in `gang_tests.rs`, placement constraints and score plugins in
//! `constraint_tests.rs`; the builders in `test_fixtures.rs`.

use std::collections::{BTreeMap, HashMap};

use infraos_api::Quantity;
use infraos_api::kinds::*;
use proptest::prelude::*;

use crate::planner::{QUOTA_EXCEEDED, UNSCHEDULABLE};
use crate::test_fixtures::*;
use crate::{Outcome, Plan, Snapshot};

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
