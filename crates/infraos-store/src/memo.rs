//! A view of a store that remembers what it read, for the length of one request.
//!
//! A batch of a thousand claims reads the same project, priority class and resource classes
//! a thousand times during admission; reading each once is what a single request would have
//! seen anyway, since nothing ties those reads to the batch's transaction. Writes go through
//! and forget what was read, so a caller never reads back its own stale view.

use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::Mutex;

use crate::{KeyValue, Store, StoreError, Txn, TxnOutcome};

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
impl crate::Wrapper for ReadMemo {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if let Some(found) = self.gets.lock().get(key) {
            return Ok(found.clone());
        }
        let found = self.inner.get(key).await?;
        self.gets.lock().insert(key.to_string(), found.clone());
        Ok(found)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.gets.lock().clear();
        self.inner.txn(txn).await
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
