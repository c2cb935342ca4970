//! The allocation feed, driven through the event orders the watch and the batch writer
//! produce (issue 17's double booking among them).

use infraos_api::kinds::{
    AllocatedResource, AllocationPhase, Claim, ClaimSpec, ClassKind, NodeSpec, ResourceClassSpec,
    ResourceSpec, ScoreBreakdown,
};
use infraos_api::{Labels, Object, Time};
use infraos_scheduler::{AllocationMeta, FitError, Placement, Snapshot};
use infraos_store::KeyValue;

use super::*;
use crate::lease;
use crate::objects::encode_typed;

const KEY: &str = "acme-a/p00552";

/// One node with eight GPU items, g0 … g7.
fn gpu_node() -> Snapshot {
    let mut snap = Snapshot::new();
    snap.upsert_class(
        "gpu",
        &ResourceClassSpec {
            kind: ClassKind::Items,
            ..Default::default()
        },
    );
    snap.upsert_node("n36", &Labels::new(), &NodeSpec::default(), None);
    let items = (0..8)
        .map(|i| infraos_api::Item {
            name: format!("g{i}"),
            attributes: Default::default(),
        })
        .collect();
    snap.upsert_resource(
        "n36-gpu",
        &Labels::new(),
        &ResourceSpec {
            class: "gpu".into(),
            node: Some("n36".into()),
            items,
            ..Default::default()
        },
    );
    snap
}

fn gpus(items: &[&str]) -> Vec<AllocatedResource> {
    vec![AllocatedResource {
        request: "main".into(),
        resource: "n36-gpu".into(),
        class: "gpu".into(),
        amount: Default::default(),
        items: items.iter().map(|s| s.to_string()).collect(),
    }]
}

/// The stored allocation of claim `KEY` holding `items`, as a watch event carries it.
fn stored(items: &[&str], revision: u64, phase: AllocationPhase) -> (KeyValue, String) {
    let mut claim: Claim = Object::new("p00552", Some("acme-a"), ClaimSpec::default());
    let placement = Placement {
        node: Some("n36".into()),
        resources: gpus(items),
        score: ScoreBreakdown::default(),
        runner_up: None,
        borrowing: false,
    };
    let mut allocation = lease::allocate(&mut claim, &placement, Time::from_unix_millis(0), 1);
    if let Some(s) = allocation.status.as_mut() {
        s.phase = phase;
    }
    let uid = allocation.metadata.uid.clone();
    let kv = KeyValue {
        key: format!("/registry/allocations/{KEY}"),
        value: encode_typed(&allocation).into(),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
    };
    (kv, uid)
}

fn assume(feed: &mut AllocationFeed, snap: &mut Snapshot, items: &[&str]) {
    snap.apply_allocation(KEY, &gpus(items), AllocationMeta::default());
    feed.assume(KEY);
}

/// Issue 17, confirmed: rv 6447 deletes the preempted allocation of `acme-a/p00552` (g6, g7)
/// and requeues the claim; the claim's event reaches the loop first, and the claim is placed
/// again on g6 and g7 and committed at rv 6448 before the allocation stream delivers the
/// deletion at 6447. That late deletion used to remove the *new* allocation from the
/// snapshot until its echo arrived, and `acme-a/p00554`, planned in that gap, was given
/// g0, g5, g6 and g7. The deletion is older than what the snapshot holds for the key now.
#[test]
fn a_late_delete_of_a_requeued_claims_old_allocation_keeps_the_new_one() {
    let mut snap = gpu_node();
    let mut feed = AllocationFeed::default();
    let (old, old_uid) = stored(&["g6", "g7"], 6400, AllocationPhase::Active);
    feed.put(&mut snap, KEY, &old).unwrap();
    assert!(
        snap.fits(&gpus(&["g6"])).is_err(),
        "the old allocation holds g6"
    );

    // Placed again (on the same items) by a batch that commits at 6448.
    assume(&mut feed, &mut snap, &["g6", "g7"]);
    feed.committed(&mut snap, KEY, 6448).unwrap();

    // Now the old allocation's deletion at 6447 arrives.
    let mut deleted = old.clone();
    deleted.mod_revision = 6447;
    let applied = feed.delete(&mut snap, KEY, &deleted);
    assert!(matches!(applied, Applied::Quiet), "nothing is freed");
    assert_eq!(snap.allocation(KEY), Some(gpus(&["g6", "g7"]).as_slice()));
    assert!(
        matches!(
            snap.fits(&gpus(&["g0", "g5", "g6", "g7"])),
            Err(FitError::ItemUnavailable { item, .. }) if item == "g6"
        ),
        "p00554 cannot be given g6 and g7 again"
    );
    snap.check_invariants().unwrap();
    // The old allocation's end still reaches the ledger, by its uid.
    assert_eq!(
        feed.take_ended(),
        vec![Ended {
            uid: old_uid,
            resources: vec!["n36-gpu".into()]
        }]
    );

    // The new allocation's echo is skipped; its own later deletion frees it.
    let (new, _) = stored(&["g6", "g7"], 6448, AllocationPhase::Active);
    assert!(matches!(
        feed.put(&mut snap, KEY, &new).unwrap(),
        Applied::Quiet
    ));
    assert!(snap.fits(&gpus(&["g6"])).is_err());
    let mut gone = new.clone();
    gone.mod_revision = 6500;
    feed.delete(&mut snap, KEY, &gone);
    assert!(snap.allocation(KEY).is_none());
    snap.fits(&gpus(&["g0", "g5", "g6", "g7"])).unwrap();
}

/// The same race with the old allocation's events arriving while the batch is in flight:
/// held, and ignored at settling as older than the commit (this path was already right).
#[test]
fn old_events_held_while_the_batch_is_in_flight_are_ignored_at_settling() {
    let mut snap = gpu_node();
    let mut feed = AllocationFeed::default();
    let (old, _) = stored(&["g6", "g7"], 6400, AllocationPhase::Active);
    feed.put(&mut snap, KEY, &old).unwrap();
    assume(&mut feed, &mut snap, &["g1"]);
    let mut deleted = old.clone();
    deleted.mod_revision = 6447;
    feed.delete(&mut snap, KEY, &deleted);
    feed.committed(&mut snap, KEY, 6448).unwrap();
    assert_eq!(snap.allocation(KEY), Some(gpus(&["g1"]).as_slice()));
    snap.fits(&gpus(&["g6", "g7"])).unwrap();
    assert!(snap.fits(&gpus(&["g1"])).is_err());
}

/// A change stored after the commit but before the batch settled (a release) applies at
/// settling; a batch that did not commit gives its assumption back.
#[test]
fn later_changes_apply_at_settling_and_failed_batches_give_back() {
    let mut snap = gpu_node();
    let mut feed = AllocationFeed::default();
    assume(&mut feed, &mut snap, &["g2"]);
    let (released, uid) = stored(&["g2"], 6451, AllocationPhase::Released);
    feed.put(&mut snap, KEY, &released).unwrap();
    assert!(
        snap.allocation(KEY).is_some(),
        "held until its batch settles"
    );
    feed.committed(&mut snap, KEY, 6450).unwrap();
    assert!(snap.allocation(KEY).is_none(), "the release applies");
    assert_eq!(feed.take_ended().len(), 1);
    let _ = uid;

    assume(&mut feed, &mut snap, &["g3"]);
    feed.not_committed(&mut snap, KEY).unwrap();
    assert!(snap.allocation(KEY).is_none());
    snap.fits(&gpus(&["g3"])).unwrap();
}
