//! `?watch=true`: newline-delimited JSON events, Kubernetes style.
//!
//! ```text
//!   resourceVersion absent or 0 ─► ADDED for every current object, then changes after the list
//!   resourceVersion N           ─► changes after N, or 410 Gone when N is compacted,
//!                                   or 400 when N is newer than the store's revision
//!   mid-stream compaction        ─► {"type":"ERROR","object":<Status 410>} and the stream ends
//!   allowWatchBookmarks=true     ─► BOOKMARK every `watchBookmarkInterval` (1 min), when the
//!                                   revision moved on since the last line (events the
//!                                   selector hid)
//! ```
//! With a label selector, an object that starts or stops matching is sent as ADDED or DELETED,
//! as the Kubernetes API server does.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use infraos_api::{KindInfo, LabelSelector};
use infraos_store::{EventKind, StoreError};
use tokio::sync::mpsc;

use super::objects::selector_matches;
use crate::authz::ListFilter;
use crate::border::ListParams;
use crate::error::ApiError;
use crate::objects::{self, decode_stored};
use crate::state::AppState;

const MAX_WATCH: Duration = Duration::from_secs(30 * 60);

fn line(kind: &str, object: &serde_json::Value) -> Bytes {
    let mut out = serde_json::to_vec(&serde_json::json!({"type": kind, "object": object}))
        .unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A watch line around an object already rendered as JSON.
fn raw_line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

pub async fn watch(
    state: AppState,
    info: &'static KindInfo,
    ns: Option<String>,
    params: ListParams,
    filter: Option<ListFilter>,
) -> Result<Response, ApiError> {
    let selector = params.selector()?;
    let bookmarks = params.bookmarks();
    let timeout = params.timeout()?.unwrap_or(MAX_WATCH).min(MAX_WATCH);
    let prefix = objects::prefix(info, ns.as_deref());
    let mut initial = Vec::new();
    let start = match params.resource_version()? {
        Some(rv) if rv > 0 => rv,
        _ => {
            // List first, then watch from the list's revision: no gap, no duplicate.
            let mut after: Option<String> = None;
            let mut revision = None;
            loop {
                let page = state.store.range(&prefix, after.as_deref(), 1000).await?;
                revision.get_or_insert(page.revision);
                for kv in &page.kvs {
                    // Parsed only when a selector needs the labels; otherwise the stored
                    // bytes are sent as they are, as for live events.
                    let keep = filter.as_ref().is_none_or(|f| f.admits(kv))
                        && match &selector {
                            None => true,
                            Some(_) => {
                                selector_matches(selector.as_ref(), &decode_stored(kv)?.value)
                            }
                        };
                    if keep {
                        initial.push(raw_line(
                            "ADDED",
                            &objects::with_revision(&kv.value, kv.mod_revision),
                        ));
                    }
                    after = Some(kv.key.clone());
                }
                if !page.more {
                    break;
                }
            }
            revision.unwrap_or(0)
        }
    };
    if params.resource_version()?.is_some_and(|rv| rv > 0) {
        // A revision the store has not reached would be waited for in silence: refuse it.
        let current = state.store.range(&prefix, None, 1).await?.revision;
        check_not_future(start, current)?;
    }
    let events = match state.store.watch(&prefix, start).await {
        Ok(s) => s,
        Err(StoreError::Compacted { compacted, .. }) => {
            return Err(ApiError::gone(format!(
                "too old resource version: {start} (oldest watchable is after {compacted}); list again"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(pump(
        events,
        tx,
        initial,
        selector,
        filter,
        bookmarks.then(|| state.config.watch_bookmark_interval.as_std()),
        timeout,
        start,
        info,
    ));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    }));
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Refuses a `resourceVersion` newer than the store's current revision with 400: no client
/// can have seen it (every revision a client sees is at most the current one, on every
/// replica), so it is a made-up or corrupted value, and waiting for it would hold a watch
/// open in silence. The store's own `FutureRevision` answers the same.
pub fn check_not_future(requested: u64, current: u64) -> Result<(), ApiError> {
    if requested > current {
        return Err(ApiError::bad_request(format!(
            "resourceVersion: {requested} is newer than the current revision {current}; \
             list again and use the list's resourceVersion"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    mut events: infraos_store::WatchStream,
    tx: mpsc::Sender<Bytes>,
    initial: Vec<Bytes>,
    selector: Option<LabelSelector>,
    filter: Option<ListFilter>,
    bookmarks: Option<Duration>,
    timeout: Duration,
    start: u64,
    info: &'static KindInfo,
) {
    for l in initial {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(bookmarks.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    let mut last = start;
    // The revision the watcher last learnt, from an event or a bookmark.
    let mut told = start;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks.is_some() => {
                if last == told {
                    continue;
                }
                told = last;
                let bookmark = serde_json::json!({
                    "apiVersion": infraos_api::API_VERSION,
                    "kind": info.kind,
                    "metadata": {"resourceVersion": last.to_string()},
                });
                if tx.send(line("BOOKMARK", &bookmark)).await.is_err() {
                    return;
                }
            }
            batch = events.next() => {
                let batch = match batch {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        let status = match e {
                            StoreError::Compacted { .. } => ApiError::gone(format!("watch fell behind: {e}; list again")),
                            other => ApiError::from(other),
                        };
                        let _ = tx.send(line("ERROR", &status.to_status_json())).await;
                        return;
                    }
                    None => return,
                };
                for event in batch.iter() {
                    last = event.kv.mod_revision;
                    if filter.as_ref().is_some_and(|f| !f.admits(&event.kv)) {
                        continue;
                    }
                    if let Some(l) = render(event, selector.as_ref()) {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                        told = last;
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct LabelsOnly<'a> {
    #[serde(borrow, default)]
    metadata: MetadataLabels<'a>,
}

#[derive(serde::Deserialize, Default)]
struct MetadataLabels<'a> {
    #[serde(borrow, default)]
    labels: std::collections::HashMap<std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>>,
}

/// The watch line for one store event, or `None` when the selector hides it.
fn render(event: &infraos_store::Event, selector: Option<&LabelSelector>) -> Option<Bytes> {
    let revision = event.kv.mod_revision;
    let object = objects::with_revision(&event.kv.value, revision);
    let Some(selector) = selector else {
        // Without a selector nothing needs parsing: the stored bytes are the object.
        let kind = match (event.kind, &event.prev) {
            (EventKind::Delete, _) => "DELETED",
            (EventKind::Put, None) => "ADDED",
            (EventKind::Put, Some(_)) => "MODIFIED",
        };
        return Some(raw_line(kind, &object));
    };
    // Only the labels are read: every watcher with a selector looks at every event.
    let matches = |bytes: &[u8]| {
        serde_json::from_slice::<LabelsOnly>(bytes)
            .is_ok_and(|o| selector.matches_with(|k| o.metadata.labels.get(k).map(|v| v.as_ref())))
    };
    let now = matches(&event.kv.value);
    match event.kind {
        EventKind::Delete => now.then(|| raw_line("DELETED", &object)),
        EventKind::Put => {
            let before = event.prev.as_ref().map(|prev| matches(&prev.value));
            match (before, now) {
                (None, true) | (Some(false), true) => Some(raw_line("ADDED", &object)),
                (Some(true), true) => Some(raw_line("MODIFIED", &object)),
                (Some(true), false) => Some(raw_line("DELETED", &object)),
                _ => None,
            }
        }
    }
}
