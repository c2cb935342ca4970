//! Stores that wrap another store and change a few of its calls: the leader's fenced store,
//! a request's read memo, tests' misbehaving stores. A [`Wrapper`] names the store underneath
//! and overrides only what it changes; every other call passes through by default, and the
//! blanket impl makes it a [`Store`]. A method added to [`Store`] is passed through here,
//! once, not in each wrapper.
//!
//! Implement it by path (`impl infraos_store::Wrapper for …`) rather than importing it
//! beside [`Store`]: a concrete wrapper has both traits' methods, and with both in scope a
//! call like `memo.get(key)` would be ambiguous.

use crate::{
    KeyValue, LedgerEntry, LedgerHead, RangeResult, Revision, Store, StoreError, Txn, TxnLimits,
    TxnOutcome, WatchStream,
};

/// A store over another: each call goes to [`Wrapper::inner`] unless overridden.
#[async_trait::async_trait]
pub trait Wrapper: Send + Sync + 'static {
    /// The store underneath, which gets every call the wrapper does not change.
    fn inner(&self) -> &dyn Store;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner().get(key).await
    }
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        self.inner().range(prefix, start_after, limit).await
    }
    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError> {
        self.inner().range_at(prefix, revision).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.inner().txn(txn).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner().watch(prefix, after).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner().current_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner().compact(revision).await
    }
    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner().ledger_range(from, limit).await
    }
    async fn ledger_head(&self) -> Result<LedgerHead, StoreError> {
        self.inner().ledger_head().await
    }
    fn txn_limits(&self) -> TxnLimits {
        self.inner().txn_limits()
    }
}

#[async_trait::async_trait]
impl<W: Wrapper> Store for W {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Wrapper::get(self, key).await
    }
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        Wrapper::range(self, prefix, start_after, limit).await
    }
    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError> {
        Wrapper::range_at(self, prefix, revision).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        Wrapper::txn(self, txn).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        Wrapper::watch(self, prefix, after).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Wrapper::current_revision(self).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        Wrapper::compact(self, revision).await
    }
    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        Wrapper::ledger_range(self, from, limit).await
    }
    async fn ledger_head(&self) -> Result<LedgerHead, StoreError> {
        Wrapper::ledger_head(self).await
    }
    fn txn_limits(&self) -> TxnLimits {
        Wrapper::txn_limits(self)
    }
}
