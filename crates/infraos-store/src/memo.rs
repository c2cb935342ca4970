//! A view of a store that remembers what it read, for the length of one request.
//!
//! A batch of a thousand claims reads the same project, priority class and resource classes
//! a thousand times during admission; reading each once is what a single request would have
//! seen anyway, since nothing ties those reads to the batch's transaction. Writes go through
//! and forget what was read, so a caller never reads back its own stale view.

use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::Mutex;

use crate::{
    KeyValue, LedgerEntry, LedgerHead, RangeResult, Revision, Store, StoreError, Txn, TxnOutcome,
    WatchStream,
};

/// `get`s answered once per key; every other call goes to the store underneath.
pub struct ReadMemo {
    inner: Arc<dyn Store>,
    gets: Mutex<HashMap<String, Option<KeyValue>>>,
}

impl ReadMemo {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        ReadMemo {
            inner,
            gets: Mutex::new(HashMap::default()),
        }
    }
}

#[async_trait::async_trait]
impl Store for ReadMemo {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if let Some(found) = self.gets.lock().get(key) {
            return Ok(found.clone());
        }
        let found = self.inner.get(key).await?;
        self.gets.lock().insert(key.to_string(), found.clone());
        Ok(found)
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        self.inner.range(prefix, start_after, limit).await
    }

    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError> {
        self.inner.range_at(prefix, revision).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.gets.lock().clear();
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner.ledger_range(from, limit).await
    }

    async fn ledger_head(&self) -> Result<LedgerHead, StoreError> {
        self.inner.ledger_head().await
    }
    fn txn_limits(&self) -> crate::TxnLimits {
        self.inner.txn_limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedOptions, EmbeddedStore};

    #[tokio::test]
    async fn reads_once_per_key_until_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap(),
        );
        store.txn(Txn::new().put("a", "1")).await.unwrap();
        let memo = ReadMemo::new(Arc::clone(&store));
        assert_eq!(&memo.get("a").await.unwrap().unwrap().value[..], b"1");
        assert!(memo.get("b").await.unwrap().is_none());
        // Written behind the memo's back: it still answers what it read first.
        store
            .txn(Txn::new().put("a", "2").put("b", "3"))
            .await
            .unwrap();
        assert_eq!(&memo.get("a").await.unwrap().unwrap().value[..], b"1");
        assert!(memo.get("b").await.unwrap().is_none());
        // Its own write forgets what it read.
        memo.txn(Txn::new().put("c", "4")).await.unwrap();
        assert_eq!(&memo.get("a").await.unwrap().unwrap().value[..], b"2");
        assert_eq!(&memo.get("b").await.unwrap().unwrap().value[..], b"3");
    }
}
