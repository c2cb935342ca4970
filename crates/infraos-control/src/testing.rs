//! Test support: a controller [`Context`] over a real embedded store, and a store that
//! misbehaves on purpose (conflicting transactions, compacted watches).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use infraos_store::{Revision, Store, StoreError, Txn, TxnOutcome, WatchStream};

use crate::Context;

/// An embedded store in `dir`.
pub(crate) fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(
        infraos_store::embedded::EmbeddedStore::open(
            &crate::datadir::store_path(dir),
            Default::default(),
        )
        .unwrap(),
    )
}

/// A controller context over `store`, with the system clock and default configuration.
pub(crate) fn context(store: Arc<dyn Store>) -> Context {
    Context {
        store,
        clock: Arc::new(crate::SystemClock),
        config: Arc::new(crate::ControlConfig::default()),
        liveness: Arc::new(crate::liveness::Liveness::default()),
        ready: Arc::new(AtomicBool::new(false)),
        signer: Arc::new(
            crate::signing::ServerKey::generate(infraos_api::signature::Algorithm::Ed25519)
                .unwrap(),
        ),
    }
}

/// A store whose next `conflicts` transactions fail their compare (nothing written, as if
/// another writer got there first), and whose next `compactions` watches end at once with
/// a compacted revision.
pub(crate) struct Flaky {
    pub inner: Arc<dyn Store>,
    pub conflicts: AtomicUsize,
    pub compactions: AtomicUsize,
    /// Transactions refused so far.
    pub refused: AtomicUsize,
    pub watches: AtomicUsize,
}

impl Flaky {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            conflicts: AtomicUsize::new(0),
            compactions: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
        })
    }
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait::async_trait]
impl infraos_store::Wrapper for Flaky {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        if take(&self.conflicts) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Ok(TxnOutcome {
                succeeded: false,
                revision: self.inner.current_revision().await?,
                ledger_seqs: Vec::new(),
            });
        }
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.watches.fetch_add(1, Ordering::SeqCst);
        if take(&self.compactions) {
            let stream = futures::stream::iter([Err(StoreError::Compacted {
                requested: after,
                compacted: after + 1,
            })]);
            return Ok(Box::pin(stream));
        }
        self.inner.watch(prefix, after).await
    }
}
