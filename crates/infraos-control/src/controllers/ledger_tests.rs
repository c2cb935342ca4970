//! The holdings ledger against a real embedded store: pipelined batches, failures, ends and
//! a snapshot that is wrong.

use infraos_api::kinds::{
    AllocatedResource, AllocationPhase, Claim, ClaimSpec, ClassKind, NodeSpec, ResourceClassSpec,
    ResourceSpec, ScoreBreakdown,
};
use infraos_api::{Labels, Object, Time};
use infraos_scheduler::{Placement, Snapshot};
use infraos_store::embedded::{EmbeddedOptions, EmbeddedStore};
use infraos_store::{Store, Txn};

use super::*;
use crate::lease;
use crate::objects::encode_typed;

fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
    (dir, store)
}

/// One node `n1` with 8 CPUs (`n1-cpu`) and eight GPU items (`n1-gpu`, g0 … g7).
fn snapshot() -> Snapshot {
    let mut snap = Snapshot::new();
    snap.upsert_class(
        "gpu",
        &ResourceClassSpec {
            kind: ClassKind::Items,
            ..Default::default()
        },
    );
    snap.upsert_class(
        "compute",
        &serde_json::from_value(
            serde_json::json!({"kind": "counted", "dimensions": [{"name": "cpu"}]}),
        )
        .unwrap(),
    );
    snap.upsert_node("n1", &Labels::new(), &NodeSpec::default(), None);
    snap.upsert_resource(
        "n1-gpu",
        &Labels::new(),
        &ResourceSpec {
            class: "gpu".into(),
            node: Some("n1".into()),
            items: (0..8)
                .map(|i| infraos_api::Item {
                    name: format!("g{i}"),
                    attributes: Default::default(),
                })
                .collect(),
            ..Default::default()
        },
    );
    snap.upsert_resource(
        "n1-cpu",
        &Labels::new(),
        &ResourceSpec {
            class: "compute".into(),
            node: Some("n1".into()),
            capacity: [("cpu".to_string(), infraos_api::Quantity::from_units(8))].into(),
            ..Default::default()
        },
    );
    snap
}

fn gpus(items: &[&str]) -> Vec<AllocatedResource> {
    vec![AllocatedResource {
        request: "main".into(),
        resource: "n1-gpu".into(),
        class: "gpu".into(),
        amount: Default::default(),
        items: items.iter().map(|s| s.to_string()).collect(),
    }]
}

fn cpus(n: i64) -> Vec<AllocatedResource> {
    vec![AllocatedResource {
        request: "main".into(),
        resource: "n1-cpu".into(),
        class: "compute".into(),
        amount: [("cpu".to_string(), infraos_api::Quantity::from_units(n))].into(),
        items: Vec::new(),
    }]
}

/// The batch's ledger writes as one transaction, as the batch writer sends them (without
/// the allocations themselves).
async fn commit(store: &dyn Store, writes: LedgerWrites) -> bool {
    let mut txn = Txn::new();
    for c in writes.compares {
        txn = txn.when(c);
    }
    for (k, v) in writes.puts {
        txn = txn.put(k, v.encode());
    }
    store.txn(txn).await.unwrap().succeeded
}

/// Stores allocation `ns/name` (uid `uid`) holding `parts`.
async fn stored_allocation(store: &dyn Store, key: &str, uid: &str, parts: Vec<AllocatedResource>) {
    let (ns, name) = key.split_once('/').unwrap();
    let mut claim: Claim = Object::new(name, Some(ns), ClaimSpec::default());
    let placement = Placement {
        node: Some("n1".into()),
        resources: parts,
        score: ScoreBreakdown::default(),
        runner_up: None,
        borrowing: false,
    };
    let mut a = lease::allocate(&mut claim, &placement, Time::from_unix_millis(0), 1);
    a.metadata.uid = uid.into();
    let key = objects::key(AllocationSpec::INFO, Some(ns), name);
    assert!(
        store
            .txn(Txn::new().put(key, encode_typed(&a)))
            .await
            .unwrap()
            .succeeded
    );
}

async fn ready_ledger(store: &dyn Store) -> Ledger {
    let mut ledger = Ledger::default();
    ledger.load(store).await.unwrap();
    ledger
}

/// Issue 17's invariant, made independent of the snapshot: with the snapshot wrong (it lost
/// an allocation, as the late deletion made it do), the placement it lets through is refused
/// against the committed holdings.
#[tokio::test]
async fn a_snapshot_that_lost_an_allocation_cannot_double_book() {
    let (_dir, store) = store();
    let mut snap = snapshot();
    let mut ledger = ready_ledger(&store).await;
    ledger
        .take(1, &snap, "acme-a/p00552", "new", &gpus(&["g6", "g7"]))
        .unwrap();
    snap.apply_allocation("acme-a/p00552", &gpus(&["g6", "g7"]), Default::default());
    assert!(commit(&store, ledger.seal(1, true)).await);
    ledger.settle(1, true);

    // The snapshot loses it (the bug), and lets p00554 have g6 and g7 again.
    snap.remove_allocation("acme-a/p00552");
    let want = gpus(&["g0", "g5", "g6", "g7"]);
    snap.fits(&want).expect("the wrong snapshot allows it");
    let refused = ledger.take(2, &snap, "acme-a/p00554", "x", &want);
    assert!(
        matches!(&refused, Err(LedgerError::Holdings(e)) if matches!(&**e,
            HoldingsError::ItemHeld { holder, item, .. }
                if holder == "acme-a/p00552" && item == "g6")),
        "{refused:?}"
    );
    // Counted dimensions too.
    ledger.take(3, &snap, "p/a", "ua", &cpus(6)).unwrap();
    assert!(commit(&store, ledger.seal(3, true)).await);
    ledger.settle(3, true);
    assert!(matches!(
        ledger.take(4, &snap, "p/b", "ub", &cpus(3)),
        Err(LedgerError::Holdings(e)) if matches!(*e, HoldingsError::OverCapacity { .. })
    ));
    ledger.take(4, &snap, "p/b", "ub", &cpus(2)).unwrap();
}

/// Up to eight batches are in flight: each is checked against the record as the batches
/// before it leave it, and compares the version they leave. One that fails takes every
/// later batch that wrote the same record with it; the record is read again, and nothing
/// built on the failed batch commits.
#[tokio::test]
async fn pipelined_batches_chain_on_versions_and_fail_together() {
    let (_dir, store) = store();
    let snap = snapshot();
    let mut ledger = ready_ledger(&store).await;
    ledger.take(1, &snap, "p/a", "ua", &gpus(&["g0"])).unwrap();
    let w1 = ledger.seal(1, true);
    ledger.take(2, &snap, "p/b", "ub", &gpus(&["g1"])).unwrap();
    assert!(
        ledger.take(2, &snap, "p/c", "uc", &gpus(&["g0"])).is_err(),
        "batch 2 sees batch 1's placement"
    );
    let w2 = ledger.seal(2, true);
    // Batch 1 does not commit (a claim changed); batch 2, planned on it, cannot either.
    assert!(
        !commit(&store, w2).await,
        "batch 2 chains on batch 1's version"
    );
    drop(w1);
    ledger.settle(1, false);
    ledger.settle(2, false);
    assert_eq!(ledger.unread_all(), vec!["n1-gpu".to_string()]);
    assert!(matches!(
        ledger.take(3, &snap, "p/d", "ud", &gpus(&["g0"])),
        Err(LedgerError::Unread(_))
    ));
    ledger.refresh(&store, &ledger.unread_all()).await.unwrap();
    ledger.take(3, &snap, "p/d", "ud", &gpus(&["g0"])).unwrap();
    assert!(commit(&store, ledger.seal(3, true)).await);
    ledger.settle(3, true);
    let kv = store.get(&holdings::key("n1-gpu")).await.unwrap().unwrap();
    let record = Holdings::decode(&kv.value).unwrap();
    assert_eq!(record.item_holder("g0"), Some(("p/d", "ud")));
    assert_eq!(record.holders.len(), 1);
}

/// Ends prune by uid: the end of a claim's old allocation leaves its new one, and records
/// are rewritten without ended holders.
#[tokio::test]
async fn ends_prune_by_uid_and_compaction_writes_them_out() {
    let (_dir, store) = store();
    let snap = snapshot();
    let mut ledger = ready_ledger(&store).await;
    ledger.take(1, &snap, "p/c", "old", &gpus(&["g6"])).unwrap();
    assert!(commit(&store, ledger.seal(1, true)).await);
    ledger.settle(1, true);
    // Placed again (its old allocation gone, as the batch's absent compare proves).
    ledger.take(2, &snap, "p/c", "new", &gpus(&["g6"])).unwrap();
    assert!(commit(&store, ledger.seal(2, true)).await);
    ledger.settle(2, true);
    ledger.ended("old", vec!["n1-gpu".into()]);
    assert!(ledger.take(3, &snap, "p/x", "ux", &gpus(&["g6"])).is_err());
    ledger.seal(3, false);
    ledger.ended("new", vec!["n1-gpu".into()]);
    ledger.compact(&store).await.unwrap();
    let kv = store.get(&holdings::key("n1-gpu")).await.unwrap().unwrap();
    assert!(Holdings::decode(&kv.value).unwrap().holders.is_empty());
    ledger.take(4, &snap, "p/x", "ux", &gpus(&["g6"])).unwrap();
    assert!(
        commit(&store, ledger.seal(4, true)).await,
        "compaction kept the version chain"
    );
}

/// At the start of a term (or after a build without records) the records are made to list
/// exactly the allocations that hold resources; an audit prunes a holder whose allocation
/// the store no longer has.
#[tokio::test]
async fn load_rebuilds_records_and_audit_prunes_what_ended() {
    let (_dir, store) = store();
    let snap = snapshot();
    stored_allocation(&store, "p/a", "ua", gpus(&["g1", "g2"])).await;
    stored_allocation(&store, "p/b", "ub", cpus(5)).await;
    let mut ledger = Ledger::default();
    assert_eq!(
        ledger.load(&store).await.unwrap(),
        2,
        "both records written"
    );
    assert!(ledger.take(1, &snap, "p/x", "ux", &gpus(&["g2"])).is_err());
    assert!(ledger.take(1, &snap, "p/x", "ux", &cpus(4)).is_err());
    ledger.seal(1, false);
    assert_eq!(ready_ledger(&store).await.refusals, 0);
    assert_eq!(
        Ledger::default().load(&store).await.unwrap(),
        0,
        "nothing to correct"
    );

    // p/a ends without the loop seeing it (a relist, say): a refusal has it audited.
    let (ns, name) = ("p", "a");
    let key = objects::key(AllocationSpec::INFO, Some(ns), name);
    let kv = store.get(&key).await.unwrap().unwrap();
    let mut a = objects::decode_typed::<AllocationSpec>(&kv).unwrap();
    a.status.as_mut().unwrap().phase = AllocationPhase::Released;
    store
        .txn(Txn::new().put(key, encode_typed(&a)))
        .await
        .unwrap();
    ledger.refused(&gpus(&["g2"]));
    assert_eq!(ledger.audit(&store).await.unwrap(), 1);
    ledger.take(2, &snap, "p/x", "ux", &gpus(&["g2"])).unwrap();
}
