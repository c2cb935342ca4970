//! The plan applier against a store that takes only so much in one transaction (as etcd's
//! `--max-txn-ops` and `--max-request-bytes` do): a large plan is written as several
//! transactions, a gang stays in one, and a claim too large for any is told why.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use infraos_api::kinds::{
    AllocatedResource, ClaimSpec, GroupSpec, NodeSpec, ResourceClassSpec, ResourceSpec,
    ScoreBreakdown,
};
use infraos_api::{Labels, Object};
use infraos_scheduler::{Decision, Placement};
use infraos_store::{Store, StoreError, TxnOutcome};

use super::*;
use crate::testing;

/// An embedded store that refuses, as etcd does, a transaction beyond `limits`, and tells
/// writers those limits.
struct Limited {
    inner: Arc<dyn Store>,
    limits: TxnLimits,
    refused: AtomicUsize,
    /// The transactions that wrote allocations: their cost.
    committed: Mutex<Vec<TxnCost>>,
}

#[async_trait::async_trait]
impl infraos_store::Wrapper for Limited {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let cost = TxnCost::of(&txn);
        if !self.limits.admits(cost) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::TxnTooLarge(format!("{cost:?}")));
        }
        let allocates = txn
            .ops
            .iter()
            .any(|op| matches!(op, infraos_store::Op::Put(k, _) if k.contains("/allocations/")));
        let out = self.inner.txn(txn).await?;
        if allocates && out.succeeded {
            self.committed.lock().unwrap().push(cost);
        }
        Ok(out)
    }
    fn txn_limits(&self) -> TxnLimits {
        self.limits
    }
}

/// `nodes` nodes `n{i}`, each with 8 CPUs (`n{i}-cpu`).
fn snapshot(nodes: usize) -> Snapshot {
    let mut snap = Snapshot::new();
    snap.upsert_class(
        "compute",
        &serde_json::from_value::<ResourceClassSpec>(
            serde_json::json!({"kind": "counted", "dimensions": [{"name": "cpu"}]}),
        )
        .unwrap(),
    );
    for i in 0..nodes {
        snap.upsert_node(&format!("n{i}"), &Labels::new(), &NodeSpec::default(), None);
        snap.upsert_resource(
            &format!("n{i}-cpu"),
            &Labels::new(),
            &ResourceSpec {
                class: "compute".into(),
                node: Some(format!("n{i}")),
                capacity: [("cpu".to_string(), infraos_api::Quantity::from_units(8))].into(),
                ..Default::default()
            },
        );
    }
    snap
}

fn placed_on(node: usize) -> Outcome {
    Outcome::Placed(Placement {
        node: Some(format!("n{node}")),
        resources: vec![AllocatedResource {
            request: "main".into(),
            resource: format!("n{node}-cpu"),
            class: "compute".into(),
            amount: [("cpu".to_string(), infraos_api::Quantity::from_units(1))].into(),
            items: Vec::new(),
        }],
        score: ScoreBreakdown::default(),
        runner_up: None,
        borrowing: false,
    })
}

/// Stores claim `p/name` (in `group` when given) and returns its entry.
async fn stored_claim(store: &dyn Store, name: &str, group: Option<&str>) -> ClaimEntry {
    let claim: Claim = Object::new(
        name,
        Some("p"),
        ClaimSpec {
            group: group.map(|g| GroupSpec {
                name: g.into(),
                min_members: 1,
            }),
            ..ClaimSpec::default()
        },
    );
    let key = objects::key(ClaimSpec::INFO, Some("p"), name);
    let bytes = objects::encode_typed(&claim);
    let size = bytes.len();
    let out = store.txn(Txn::new().put(key, bytes)).await.unwrap();
    assert!(out.succeeded);
    ClaimEntry {
        claim: Arc::new(claim),
        revision: out.revision,
        size,
    }
}

#[tokio::test]
async fn a_plan_larger_than_one_transaction_is_written_as_several_and_a_gang_in_one() {
    let dir = tempfile::tempdir().unwrap();
    // About ten single placements per transaction (4 compares each).
    let limits = TxnLimits {
        compares: 40,
        ops: 40,
        bytes: 256 * 1024,
    };
    let store = Arc::new(Limited {
        inner: testing::store(dir.path()),
        limits,
        refused: AtomicUsize::new(0),
        committed: Mutex::new(Vec::new()),
    });
    let state = testing::context(Arc::clone(&store) as Arc<dyn Store>);
    let mut snap = snapshot(60);
    let mut ledger = Ledger::default();
    ledger.load(&*state.store).await.unwrap();
    let mut claims = HashMap::default();
    let mut decisions = Vec::new();
    // 45 single claims, with a gang of 8 in the middle of them (one member decided late) and
    // a claim too large for any transaction.
    for i in 0..45 {
        let name = format!("c{i}");
        claims.insert(
            format!("p/{name}"),
            stored_claim(&*store, &name, None).await,
        );
        decisions.push(Decision {
            claim_key: format!("p/{name}"),
            outcome: placed_on(i),
        });
        if i == 20 {
            for g in 0..7 {
                let name = format!("g{g}");
                claims.insert(
                    format!("p/{name}"),
                    stored_claim(&*store, &name, Some("gang")).await,
                );
                decisions.push(Decision {
                    claim_key: format!("p/{name}"),
                    outcome: placed_on(45 + g),
                });
            }
        }
    }
    claims.insert(
        "p/g7".into(),
        stored_claim(&*store, "g7", Some("gang")).await,
    );
    decisions.push(Decision {
        claim_key: "p/g7".into(),
        outcome: placed_on(52),
    });
    let mut huge = stored_claim(&*store, "huge", None).await;
    huge.size = 300 * 1024;
    claims.insert("p/huge".into(), huge);
    decisions.push(Decision {
        claim_key: "p/huge".into(),
        outcome: placed_on(53),
    });

    let mut next_batch = 7;
    let plan = Plan {
        snapshot_revision: 1,
        decisions,
    };
    let batches = prepare(
        &state,
        &mut snap,
        &mut ledger,
        &mut next_batch,
        plan,
        &claims,
    )
    .await;
    assert!(
        batches.len() >= 6,
        "53 placements at about ten a transaction: {} batches",
        batches.len()
    );
    assert_eq!(next_batch, 7 + batches.len() as u64);
    let mut revisions = HashMap::default();
    for writes in batches {
        let written = write(&state, writes).await;
        assert!(
            written.committed.is_some() || written.assumed.is_empty(),
            "batch {} committed",
            written.batch
        );
        ledger.settle(written.batch, true);
        for key in written.assumed {
            revisions.insert(key, written.committed);
        }
    }
    assert_eq!(store.refused.load(Ordering::SeqCst), 0);
    for cost in store.committed.lock().unwrap().iter() {
        assert!(limits.admits(*cost), "{cost:?} within {limits:?}");
    }
    // Every placement became an allocation, each gang member in the same transaction.
    assert_eq!(revisions.len(), 53);
    for i in 0..45 {
        let key = objects::key(AllocationSpec::INFO, Some("p"), &format!("c{i}"));
        assert!(store.get(&key).await.unwrap().is_some(), "c{i} allocated");
    }
    let gang: Vec<_> = (0..8).map(|g| revisions[&format!("p/g{g}")]).collect();
    assert!(
        gang.iter().all(|r| *r == gang[0]),
        "one transaction: {gang:?}"
    );
    // The claim too large for one transaction is not placed, and says why.
    assert!(!revisions.contains_key("p/huge"));
    let kv = store
        .get(&objects::key(ClaimSpec::INFO, Some("p"), "huge"))
        .await
        .unwrap()
        .unwrap();
    let huge = objects::decode_typed::<ClaimSpec>(&kv).unwrap();
    let status = huge.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some(TOO_LARGE_FOR_STORE));
    let message = status.message.unwrap_or_default();
    assert!(message.contains("--max-request-bytes"), "{message}");
    // The records the batches chained hold every placement.
    let mut again = Ledger::default();
    assert_eq!(again.load(&*state.store).await.unwrap(), 0);
}

#[tokio::test]
async fn without_limits_a_plan_is_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let state = testing::context(testing::store(dir.path()));
    let mut snap = snapshot(40);
    let mut ledger = Ledger::default();
    ledger.load(&*state.store).await.unwrap();
    let mut claims = HashMap::default();
    let mut decisions = Vec::new();
    for i in 0..40 {
        let name = format!("c{i}");
        claims.insert(
            format!("p/{name}"),
            stored_claim(&*state.store, &name, None).await,
        );
        decisions.push(Decision {
            claim_key: format!("p/{name}"),
            outcome: placed_on(i),
        });
    }
    let mut next_batch = 0;
    let plan = Plan {
        snapshot_revision: 1,
        decisions,
    };
    let batches = prepare(
        &state,
        &mut snap,
        &mut ledger,
        &mut next_batch,
        plan,
        &claims,
    )
    .await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].assumed.len(), 40);
    assert_eq!(batches[0].decided.len(), 40);
}
