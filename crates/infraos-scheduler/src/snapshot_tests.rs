//! The snapshot's revision guard on allocation events (issue 17).

use infraos_api::Labels;
use infraos_api::kinds::{AllocatedResource, ClassKind, NodeSpec, ResourceClassSpec, ResourceSpec};

use crate::snapshot::ASSUMED;
use crate::{AllocationMeta, Snapshot};

fn snapshot() -> Snapshot {
    let mut snap = Snapshot::new();
    snap.upsert_class(
        "gpu",
        &ResourceClassSpec {
            kind: ClassKind::Items,
            ..Default::default()
        },
    );
    snap.upsert_node("n", &Labels::new(), &NodeSpec::default(), None);
    snap.upsert_resource(
        "n-gpu",
        &Labels::new(),
        &ResourceSpec {
            class: "gpu".into(),
            node: Some("n".into()),
            items: (0..4)
                .map(|i| infraos_api::Item {
                    name: format!("g{i}"),
                    attributes: Default::default(),
                })
                .collect(),
            ..Default::default()
        },
    );
    snap
}

fn gpus(items: &[&str]) -> Vec<AllocatedResource> {
    vec![AllocatedResource {
        request: "main".into(),
        resource: "n-gpu".into(),
        class: "gpu".into(),
        amount: Default::default(),
        items: items.iter().map(|s| s.to_string()).collect(),
    }]
}

/// A late event (older than the allocation state the snapshot holds for the key) changes
/// nothing: the deletion of a claim's previous allocation cannot remove its new one.
#[test]
fn allocation_events_older_than_the_state_held_change_nothing() {
    let mut snap = snapshot();
    let meta = AllocationMeta::default;
    assert!(snap.apply_allocation_at("p/c", &gpus(&["g0"]), meta(), 10));
    assert!(!snap.remove_allocation_at("p/c", 9));
    assert!(!snap.apply_allocation_at("p/c", &gpus(&["g1"]), meta(), 10));
    assert_eq!(snap.allocation("p/c"), Some(gpus(&["g0"]).as_slice()));
    assert!(snap.apply_allocation_at("p/c", &gpus(&["g1"]), meta(), 11));
    snap.fits(&gpus(&["g0"])).unwrap();
    assert!(snap.remove_allocation_at("p/c", 12));
    snap.fits(&gpus(&["g1"])).unwrap();

    // The applier's assumption is newer than any event until its commit confirms it.
    snap.apply_allocation("p/c", &gpus(&["g2"]), meta());
    assert_eq!(snap.allocation_revision("p/c"), Some(ASSUMED));
    assert!(!snap.remove_allocation_at("p/c", 13));
    snap.confirm_allocation("p/c", 15);
    assert!(
        !snap.remove_allocation_at("p/c", 14),
        "the old allocation's late delete"
    );
    assert!(snap.fits(&gpus(&["g2"])).is_err());
    assert!(snap.remove_allocation_at("p/c", 16));
    snap.check_invariants().unwrap();
}
