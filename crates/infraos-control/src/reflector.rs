//! Watch → cache plumbing, written once for every controller (kube-runtime's `watcher`).
//!
//! ```text
//!   list(prefix) ──► Resync(all objects, revision)
//!   watch(prefix, revision) ──► Apply / Delete … in revision order
//!        └─ Compacted ──► list again ──► Resync (the consumer swaps its view atomically)
//! ```
//! Consumers are level-triggered: a Resync carries the whole state, so they never depend on
//! having seen every event.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infraos_store::{Event, KeyValue, Store, StoreError};
use tokio::sync::{mpsc, watch};

/// Changes to a watched prefix, tagged with the consumer's name for the prefix.
#[derive(Debug)]
pub enum Change<S> {
    /// The complete current state of the prefix (after start or a relist).
    Resync(S, Vec<KeyValue>, u64),
    /// Puts and deletes in revision order, as the store delivered them (one message per
    /// commit group, not per event). A delete's value is the key's last state.
    Events(S, Arc<[Event]>),
}

/// Feeds `tx` with the changes under `prefix` until shutdown or until the receiver is gone.
pub async fn run<S: Copy + Send + 'static, T: From<Change<S>> + Send + 'static>(
    store: Arc<dyn Store>,
    prefix: String,
    source: S,
    tx: mpsc::Sender<T>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (kvs, revision) = match list(&*store, &prefix).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "list failed; retrying");
                if sleep_or_shutdown(&mut shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if tx
            .send(Change::Resync(source, kvs, revision).into())
            .await
            .is_err()
        {
            return;
        }
        let mut stream = match store.watch(&prefix, revision).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "watch failed; relisting");
                if sleep_or_shutdown(&mut shutdown, Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = shutdown.changed() => return,
            };
            match next {
                Some(Ok(batch)) => {
                    if tx.send(Change::Events(source, batch).into()).await.is_err() {
                        return;
                    }
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    tracing::info!(%prefix, "watch compacted; relisting");
                    break;
                }
                Some(Err(StoreError::Closed)) | None => return,
                Some(Err(e)) => {
                    tracing::warn!(%prefix, error = %e, "watch failed; relisting");
                    break;
                }
            }
        }
    }
}

async fn list(store: &dyn Store, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let mut revision = None;
    loop {
        let page = store.range(prefix, after.as_deref(), 5000).await?;
        revision.get_or_insert(page.revision);
        after = page.kvs.last().map(|kv| kv.key.clone());
        out.extend(page.kvs);
        if !page.more {
            break;
        }
    }
    Ok((out, revision.unwrap_or(0)))
}

/// Sleeps; returns true if shutdown was signalled meanwhile.
pub async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
