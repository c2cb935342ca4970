//! DELETE against a store where the server's own writes land between the handler's read and
//! its write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use infraos_store::embedded::{EmbeddedOptions, EmbeddedStore};
use infraos_store::{Op, Store, StoreError, Txn, TxnOutcome};

use super::*;

/// A store that, before each of the first `times` transactions touching `key`, writes the
/// key itself, as the scheduler writing a claim's status would.
struct Meddling {
    inner: EmbeddedStore,
    key: String,
    times: usize,
    meddled: AtomicUsize,
}

#[async_trait::async_trait]
impl infraos_store::Wrapper for Meddling {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let touches = txn.ops.iter().any(|op| match op {
            Op::Put(k, _) | Op::Delete(k) => *k == self.key,
        });
        if touches && self.meddled.load(Ordering::SeqCst) < self.times {
            self.meddled.fetch_add(1, Ordering::SeqCst);
            if let Some(kv) = self.inner.get(&self.key).await? {
                let mut v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                v["status"] = serde_json::json!({"phase": "Allocated", "fencingEpoch": 1});
                self.inner
                    .txn(Txn::new().put(self.key.clone(), serde_json::to_vec(&v).unwrap()))
                    .await?;
            }
        }
        self.inner.txn(txn).await
    }
}

const CLAIM_KEY: &str = "/registry/claims/p/c";

async fn server_with_claim(times: usize) -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let inner =
        EmbeddedStore::open(&dir.path().join("meddled.redb"), EmbeddedOptions::default()).unwrap();
    let claim = serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": "c", "namespace": "p", "uid": "u1",
                     "finalizers": ["infraos.io/allocation"]},
        "spec": {"requests": [{"class": "compute", "amount": {"cpu": "1"}}]},
    });
    inner
        .txn(Txn::new().put(CLAIM_KEY, serde_json::to_vec(&claim).unwrap()))
        .await
        .unwrap();
    let store = Meddling {
        inner,
        key: CLAIM_KEY.into(),
        times,
        meddled: AtomicUsize::new(0),
    };
    let state = crate::testing::state(&dir.path().join("data"), Arc::new(store)).await;
    (dir, state)
}

fn claims() -> &'static KindInfo {
    infraos_api::object::kind_by_plural("claims").unwrap()
}

/// Issue 17: a DELETE of a claim answered 409 when the scheduler wrote the claim's status
/// between the handler's read and its write. The client gave no precondition: the delete is
/// made on the claim as it now is, and the server's write is kept.
#[tokio::test]
async fn a_plain_delete_does_not_conflict_with_the_servers_own_writes() {
    let (_dir, state) = server_with_claim(2).await;
    let response = delete_object(&state, &crate::testing::admin(), claims(), Some("p"), "c")
        .await
        .expect("no conflict");
    assert_eq!(response.status(), StatusCode::ACCEPTED, "finalizers run");
    let kv = state.store.get(CLAIM_KEY).await.unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    assert!(
        stored["metadata"]["deletionTimestamp"].is_string(),
        "{stored}"
    );
    assert_eq!(
        stored["status"]["phase"], "Allocated",
        "the server's write is kept"
    );
}

/// The retry is bounded: an object that changes on every attempt still answers 409.
#[tokio::test]
async fn a_delete_racing_a_writer_forever_still_answers_409() {
    let (_dir, state) = server_with_claim(usize::MAX).await;
    let err = delete_object(&state, &crate::testing::admin(), claims(), Some("p"), "c")
        .await
        .expect_err("a conflict in the end");
    assert_eq!(err.code, StatusCode::CONFLICT, "{err:?}");
}
