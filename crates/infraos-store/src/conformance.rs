//! The store conformance suite: what every backend must do, tested the same way for all.
//!
//! A backend's tests provide a [`Harness`] and expand [`store_conformance_tests!`], which
//! declares one `#[tokio::test]` per contract below, so failures name the broken contract.
//! ```text
//! infraos_store::store_conformance_tests!(crate::my_harness());
//! ```
//! Test support code: panics are how it reports failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::{Compare, EventKind, Store, StoreError, Txn, WatchStream};

/// Opens stores over one isolated data set.
pub trait Harness: Send + Sync {
    /// Opens the store. After every handle from a previous call is dropped, calling it again
    /// reopens the same data (a restart).
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>>;
}

/// Declares one test per contract for the harness built by `$make`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            put_get_and_revisions, failed_compare_changes_nothing, create_only_compare,
            delete_and_recreate, range_prefix_order_and_pagination, txn_is_atomic,
            watch_delivers_in_order_with_prefix, watch_replays_from_past_revision,
            compaction_forces_relist, concurrent_cas_loses_no_update, ledger_chains_atomically,
            oversized_writes_are_rejected, slow_watcher_sees_no_gap, survives_reopen,
            range_at_a_past_revision, concurrent_ledger_appends_chain, version_compares_chain,
            ledger_writers_fail_alone);
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $make;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

async fn put(store: &dyn Store, key: &str, value: &str) -> u64 {
    let out = store
        .txn(Txn::new().put(key, value.to_string()))
        .await
        .unwrap();
    assert!(out.succeeded);
    out.revision
}

async fn next_events(watch: &mut WatchStream, want: usize) -> Vec<crate::Event> {
    let mut got = Vec::new();
    while got.len() < want {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch event within 10s")
            .expect("watch stream still open")
            .expect("watch batch ok");
        got.extend(batch.iter().cloned());
    }
    got
}

pub async fn put_get_and_revisions(h: &impl Harness) {
    let s = h.open().await;
    let r0 = s.current_revision().await.unwrap();
    let r1 = put(&*s, "/a/1", "one").await;
    assert!(r1 > r0, "a write gets a new revision");
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(kv.value.as_ref(), b"one");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1)
    );
    let r2 = put(&*s, "/a/1", "uno").await;
    assert!(r2 > r1);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    assert_eq!(s.current_revision().await.unwrap(), r2);
    assert!(s.get("/a/2").await.unwrap().is_none());
}

pub async fn failed_compare_changes_nothing(h: &impl Harness) {
    let s = h.open().await;
    let r1 = put(&*s, "/k", "v1").await;
    let out = s
        .txn(
            Txn::new()
                .when(Compare::unchanged("/k", r1 - 1))
                .put("/k", "v2")
                .put("/other", "x"),
        )
        .await
        .unwrap();
    assert!(!out.succeeded);
    assert_eq!(
        out.revision, r1,
        "a failed txn does not advance the revision"
    );
    assert_eq!(s.get("/k").await.unwrap().unwrap().value.as_ref(), b"v1");
    assert!(s.get("/other").await.unwrap().is_none());
    assert_eq!(s.current_revision().await.unwrap(), r1);
    let ok = s
        .txn(
            Txn::new()
                .when(Compare::unchanged("/k", r1))
                .put("/k", "v2"),
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
}

pub async fn create_only_compare(h: &impl Harness) {
    let s = h.open().await;
    let create = || Txn::new().when(Compare::absent("/c")).put("/c", "x");
    assert!(s.txn(create()).await.unwrap().succeeded);
    assert!(
        !s.txn(create()).await.unwrap().succeeded,
        "second create must fail"
    );
}

/// A version compare holds on the writes since creation: a writer can chain transactions
/// on the version the previous one leaves before it has committed (the plan applier's
/// holdings records), and one that lost its predecessor fails with it.
pub async fn version_compares_chain(h: &impl Harness) {
    let s = h.open().await;
    let first = Txn::new()
        .when(Compare::Version("/v".into(), 0))
        .put("/v", "1");
    assert!(s.txn(first).await.unwrap().succeeded, "version 0: absent");
    let stale = Txn::new()
        .when(Compare::Version("/v".into(), 0))
        .put("/v", "x");
    assert!(!s.txn(stale).await.unwrap().succeeded);
    let second = Txn::new()
        .when(Compare::Version("/v".into(), 1))
        .put("/v", "2");
    let third = Txn::new()
        .when(Compare::Version("/v".into(), 2))
        .put("/v", "3");
    assert!(s.txn(second).await.unwrap().succeeded);
    assert!(s.txn(third).await.unwrap().succeeded);
    let kv = s.get("/v").await.unwrap().unwrap();
    assert_eq!((kv.version, kv.value.as_ref()), (3, b"3".as_slice()));
    // A chained write whose predecessor never committed fails too.
    let orphan = Txn::new()
        .when(Compare::Version("/v".into(), 4))
        .put("/v", "5");
    assert!(!s.txn(orphan).await.unwrap().succeeded);
    assert_eq!(s.get("/v").await.unwrap().unwrap().version, 3);
}

pub async fn delete_and_recreate(h: &impl Harness) {
    let s = h.open().await;
    put(&*s, "/d", "1").await;
    put(&*s, "/d", "2").await;
    let del = s.txn(Txn::new().delete("/d")).await.unwrap();
    assert!(del.succeeded);
    assert!(s.get("/d").await.unwrap().is_none());
    let again = s
        .txn(Txn::new().when(Compare::absent("/d")).put("/d", "3"))
        .await
        .unwrap();
    assert!(again.succeeded, "absent compare holds after delete");
    let kv = s.get("/d").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (again.revision, 1),
        "re-created key starts over"
    );
}

pub async fn range_prefix_order_and_pagination(h: &impl Harness) {
    let s = h.open().await;
    let mut want = Vec::new();
    for i in (0..25).rev() {
        put(&*s, &format!("/r/x/{i:03}"), &i.to_string()).await;
        want.push(format!("/r/x/{i:03}"));
    }
    want.sort();
    put(&*s, "/r/xy/000", "outside").await;
    put(&*s, "/r/w", "before").await;
    let all = s.range("/r/x/", None, 0).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|k| k.key.clone()).collect();
    assert_eq!(keys, want, "prefix range is exact and ordered");
    assert!(!all.more);
    assert_eq!(all.revision, s.current_revision().await.unwrap());
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.range("/r/x/", after.as_deref(), 7).await.unwrap();
        assert!(page.kvs.len() <= 7);
        paged.extend(page.kvs.iter().map(|k| k.key.clone()));
        after = page.kvs.last().map(|k| k.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(paged, want, "pages cover every key exactly once");
}

pub async fn txn_is_atomic(h: &impl Harness) {
    let s = h.open().await;
    let out = s
        .txn(
            Txn::new()
                .put("/t/1", "a")
                .put("/t/2", "b")
                .delete("/t/none"),
        )
        .await
        .unwrap();
    assert!(out.succeeded);
    let one = s.get("/t/1").await.unwrap().unwrap();
    let two = s.get("/t/2").await.unwrap().unwrap();
    assert_eq!(one.mod_revision, out.revision);
    assert_eq!(
        two.mod_revision, out.revision,
        "all ops of a txn share its revision"
    );
}

pub async fn watch_delivers_in_order_with_prefix(h: &impl Harness) {
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch("/w/", start).await.unwrap();
    put(&*s, "/w/a", "1").await;
    put(&*s, "/elsewhere", "x").await;
    put(&*s, "/w/b", "2").await;
    put(&*s, "/w/a", "3").await;
    s.txn(Txn::new().delete("/w/b")).await.unwrap();
    let events = next_events(&mut w, 4).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.as_str(),
                String::from_utf8_lossy(&e.kv.value).to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, "/w/a", "1".to_string()),
            (EventKind::Put, "/w/b", "2".to_string()),
            (EventKind::Put, "/w/a", "3".to_string()),
            (EventKind::Delete, "/w/b", "2".to_string()),
        ]
    );
    assert!(
        events
            .windows(2)
            .all(|p| p[0].kv.mod_revision < p[1].kv.mod_revision)
    );
    assert_eq!(
        events[2].prev.as_ref().unwrap().value.as_ref(),
        b"1",
        "puts carry the previous value"
    );
}

pub async fn watch_replays_from_past_revision(h: &impl Harness) {
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    let r1 = put(&*s, "/p/1", "a").await;
    put(&*s, "/p/2", "b").await;
    let mut from_start = s.watch("/p/", start).await.unwrap();
    assert_eq!(next_events(&mut from_start, 2).await.len(), 2);
    let mut from_r1 = s.watch("/p/", r1).await.unwrap();
    let events = next_events(&mut from_r1, 1).await;
    assert_eq!(
        events[0].kv.key, "/p/2",
        "a watch after r1 starts with the change after r1"
    );
}

pub async fn compaction_forces_relist(h: &impl Harness) {
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    put(&*s, "/cp/1", "a").await;
    let r2 = put(&*s, "/cp/2", "b").await;
    put(&*s, "/cp/3", "c").await;
    s.compact(r2).await.unwrap();
    match s.watch("/cp/", start).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut w = s.watch("/cp/", r2).await.unwrap();
    assert_eq!(next_events(&mut w, 1).await[0].kv.key, "/cp/3");
}

pub async fn range_at_a_past_revision(h: &impl Harness) {
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    let r1 = put(&*s, "/ra/a", "a1").await;
    put(&*s, "/ra/b", "b1").await;
    let r3 = put(&*s, "/ra/a", "a2").await;
    s.txn(Txn::new().delete("/ra/b")).await.unwrap();
    put(&*s, "/ra/c", "c1").await;
    put(&*s, "/other/x", "x").await;
    let values = |r: &crate::RangeResult| -> Vec<(String, String)> {
        r.kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    };
    let at = |r| {
        let s = Arc::clone(&s);
        async move { s.range_at("/ra/", r).await.unwrap() }
    };
    assert!(
        at(start).await.kvs.is_empty(),
        "nothing under /ra/ at the start"
    );
    let v1 = at(r1).await;
    assert_eq!(v1.revision, r1);
    assert_eq!(values(&v1), [("/ra/a".to_string(), "a1".to_string())]);
    assert_eq!(
        values(&at(r3).await),
        [
            ("/ra/a".to_string(), "a2".to_string()),
            ("/ra/b".to_string(), "b1".to_string())
        ],
        "an update and a later delete are both undone"
    );
    let now = s.current_revision().await.unwrap();
    assert_eq!(
        values(&at(now).await),
        [
            ("/ra/a".to_string(), "a2".to_string()),
            ("/ra/c".to_string(), "c1".to_string())
        ]
    );
    let (older, v) = (at(r1).await.kvs, &at(r1).await.kvs[0]);
    assert_eq!(
        (older.len(), v.mod_revision),
        (1, r1),
        "old revisions come back"
    );
    match s.range_at("/ra/", now + 10).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    s.compact(r3).await.unwrap();
    match s.range_at("/ra/", r1).await {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
}

pub async fn concurrent_cas_loses_no_update(h: &impl Harness) {
    let s = h.open().await;
    put(&*s, "/counter", "0").await;
    let tasks = 8;
    let per_task = 25;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                loop {
                    let kv = s.get("/counter").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    let out = s
                        .txn(
                            Txn::new()
                                .when(Compare::unchanged("/counter", kv.mod_revision))
                                .put("/counter", (n + 1).to_string()),
                        )
                        .await
                        .unwrap();
                    if out.succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let kv = s.get("/counter").await.unwrap().unwrap();
    assert_eq!(kv.value.as_ref(), (tasks * per_task).to_string().as_bytes());
}

pub async fn ledger_chains_atomically(h: &impl Harness) {
    let s = h.open().await;
    let head0 = s.ledger_head().await.unwrap();
    let ok = s
        .txn(
            Txn::new()
                .put("/l/1", "x")
                .append(b"first".to_vec())
                .append(b"second".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(ok.ledger_seqs, vec![head0.seq + 1, head0.seq + 2]);
    let failed = s
        .txn(
            Txn::new()
                .when(Compare::absent("/l/1"))
                .put("/l/1", "y")
                .append(b"never".to_vec()),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(failed.ledger_seqs.is_empty());
    let only_ledger = s.txn(Txn::new().append(b"third".to_vec())).await.unwrap();
    assert!(only_ledger.succeeded);
    // The embedded store keeps the ledger beside the keys (the revision stays); etcd keeps
    // it in keys (the revision moves on). Neither goes back.
    assert!(only_ledger.revision >= ok.revision);
    let entries = s.ledger_range(head0.seq + 1, 0).await.unwrap();
    let payloads: Vec<_> = entries.iter().map(|e| e.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
    );
    let mut prev = head0.hash;
    for e in &entries {
        assert_eq!(e.prev_hash, prev);
        assert_eq!(
            e.hash,
            infraos_api::audit::chain_hash(e.seq, &prev, &e.payload)
        );
        prev = e.hash;
    }
    let head = s.ledger_head().await.unwrap();
    assert_eq!((head.seq, head.hash), (head0.seq + 3, prev));
    assert_eq!(
        s.ledger_range(head0.seq + 2, 1).await.unwrap().len(),
        1,
        "limit applies"
    );
}

/// Writers racing to extend the ledger each get their own sequence numbers, and the chain
/// stays whole.
pub async fn concurrent_ledger_appends_chain(h: &impl Harness) {
    let s = h.open().await;
    let head0 = s.ledger_head().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..8 {
                let out = s
                    .txn(
                        Txn::new()
                            .put(format!("/cl/{w}"), format!("{i}"))
                            .append(format!("w{w}-{i}").into_bytes()),
                    )
                    .await
                    .unwrap();
                assert!(out.succeeded);
                seqs.extend(out.ledger_seqs);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let expected: Vec<u64> = (head0.seq + 1..=head0.seq + 48).collect();
    assert_eq!(all, expected, "every append got its own sequence number");
    let entries = s.ledger_range(head0.seq + 1, 0).await.unwrap();
    assert_eq!(entries.len(), 48);
    let mut prev = head0.hash;
    for e in &entries {
        assert_eq!(e.prev_hash, prev, "entry {} does not chain", e.seq);
        prev = e.hash;
    }
    assert_eq!(s.ledger_head().await.unwrap().hash, prev);
}

/// Many ledger writers at once, some of whose compares fail: backends may commit writers
/// together (etcd's group commit, the embedded store's group), but a writer whose compare
/// fails changes nothing and fails alone, every other one commits with its own sequence
/// numbers, and a writer that reads a key another one writes sees that write or none of it.
pub async fn ledger_writers_fail_alone(h: &impl Harness) {
    let s = h.open().await;
    put(&*s, "/fa/taken", "x").await;
    let head0 = s.ledger_head().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..48u64 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            // Every third writer wants a key that exists: its compare fails.
            let key = if w % 3 == 0 {
                "/fa/taken".to_string()
            } else {
                format!("/fa/{w}")
            };
            let out = s
                .txn(
                    Txn::new()
                        .when(Compare::absent(key.clone()))
                        .put(key, w.to_string())
                        .put(format!("/fa/log/{w}"), "written")
                        .append(format!("fa-{w}").into_bytes()),
                )
                .await
                .unwrap();
            (w, out)
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let (w, out) = t.await.unwrap();
        let logged = s.get(&format!("/fa/log/{w}")).await.unwrap();
        if w % 3 == 0 {
            assert!(!out.succeeded, "writer {w}'s compare cannot hold");
            assert!(out.ledger_seqs.is_empty());
            assert!(
                logged.is_none(),
                "writer {w} failed but its other put landed"
            );
        } else {
            assert!(out.succeeded, "writer {w} failed with the failing ones");
            assert_eq!(out.ledger_seqs.len(), 1);
            assert!(logged.is_some());
            seqs.extend(out.ledger_seqs);
        }
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (head0.seq + 1..=head0.seq + 32).collect();
    assert_eq!(
        seqs, expected,
        "32 writers committed, each with its own entry"
    );
    let entries = s.ledger_range(head0.seq + 1, 0).await.unwrap();
    assert_eq!(entries.len(), 32, "no entry of a failed writer");
    let mut prev = head0.hash;
    for e in &entries {
        assert_eq!(e.prev_hash, prev, "entry {} does not chain", e.seq);
        assert_ne!(e.payload.as_ref(), b"fa-0");
        prev = e.hash;
    }
    assert_eq!(
        s.get("/fa/taken").await.unwrap().unwrap().value.as_ref(),
        b"x"
    );

    // Two writers of one counter, each comparing what it read: one wins, the other sees
    // the winner's write (a group must not apply both against the state before it).
    put(&*s, "/fa/counter", "0").await;
    let kv = s.get("/fa/counter").await.unwrap().unwrap();
    let racers: Vec<_> = (0..2)
        .map(|i| {
            let s = Arc::clone(&s);
            let rev = kv.mod_revision;
            tokio::spawn(async move {
                s.txn(
                    Txn::new()
                        .when(Compare::unchanged("/fa/counter", rev))
                        .put("/fa/counter", format!("{i}"))
                        .append(format!("counter-{i}").into_bytes()),
                )
                .await
                .unwrap()
                .succeeded
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(
        won, 1,
        "exactly one compare-and-swap on the same revision wins"
    );
}

pub async fn oversized_writes_are_rejected(h: &impl Harness) {
    let s = h.open().await;
    let big = vec![b'x'; crate::MAX_VALUE_LEN + 1];
    let err = s.txn(Txn::new().put("/big", big)).await.unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    let long_key = format!("/{}", "k".repeat(crate::MAX_KEY_LEN));
    let err = s.txn(Txn::new().put(long_key, "v")).await.unwrap_err();
    assert!(matches!(err, StoreError::KeyTooLarge { .. }), "{err}");
    assert!(s.get("/big").await.unwrap().is_none());
}

pub async fn slow_watcher_sees_no_gap(h: &impl Harness) {
    let s = h.open().await;
    let start = s.current_revision().await.unwrap();
    let mut w = s.watch("/slow/", start).await.unwrap();
    let n = 3000;
    let mut writers = Vec::new();
    for t in 0..4 {
        let s = Arc::clone(&s);
        writers.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                s.txn(Txn::new().put(format!("/slow/{t}/{i}"), "v"))
                    .await
                    .unwrap();
            }
        }));
    }
    for wr in writers {
        wr.await.unwrap();
    }
    // Now read everything: either every event arrives in order, or the stream ends with
    // Compacted. A silent gap is the one forbidden outcome.
    let mut last = start;
    let mut seen = BTreeMap::new();
    while seen.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("progress");
        match next {
            Some(Ok(batch)) => {
                for e in batch.iter() {
                    assert!(e.kv.mod_revision > last, "revisions increase");
                    last = e.kv.mod_revision;
                    seen.insert(e.kv.key.clone(), ());
                }
            }
            Some(Err(StoreError::Compacted { .. })) => return,
            Some(Err(e)) => panic!("unexpected watch error {e}"),
            None => panic!("watch ended without an error"),
        }
    }
    assert_eq!(seen.len(), n);
}

pub async fn survives_reopen(h: &impl Harness) {
    let (rev, head) = {
        let s = h.open().await;
        put(&*s, "/keep/1", "a").await;
        let out = s
            .txn(Txn::new().put("/keep/2", "b").append(b"audit".to_vec()))
            .await
            .unwrap();
        (out.revision, s.ledger_head().await.unwrap())
    };
    let s = h.open().await;
    assert_eq!(
        s.get("/keep/2").await.unwrap().unwrap().value.as_ref(),
        b"b"
    );
    assert_eq!(s.current_revision().await.unwrap(), rev);
    assert_eq!(s.ledger_head().await.unwrap(), head);
    let next = put(&*s, "/keep/3", "c").await;
    assert!(next > rev, "revisions keep increasing after a restart");
    let more = s.txn(Txn::new().append(b"more".to_vec())).await.unwrap();
    assert_eq!(
        more.ledger_seqs,
        vec![head.seq + 1],
        "the ledger chain continues"
    );
    let e = &s.ledger_range(head.seq + 1, 1).await.unwrap()[0];
    assert_eq!(e.prev_hash, head.hash);
}

/// A harness for the embedded backend in a temporary directory.
pub struct EmbeddedHarness {
    dir: tempfile::TempDir,
    options: crate::embedded::EmbeddedOptions,
}

impl EmbeddedHarness {
    pub fn new() -> Self {
        Self::with_options(crate::embedded::EmbeddedOptions::default())
    }

    pub fn with_options(options: crate::embedded::EmbeddedOptions) -> Self {
        EmbeddedHarness {
            dir: tempfile::tempdir().unwrap(),
            options,
        }
    }
}

impl Default for EmbeddedHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for EmbeddedHarness {
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let path = self.dir.path().join("store.redb");
            let store = crate::embedded::EmbeddedStore::open(&path, self.options.clone()).unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

/// A real single-member etcd on loopback ports with its own data dir, killed on drop: what
/// the etcd backend's tests (and the server's HA tests) run against.
#[cfg(feature = "etcd")]
pub struct EtcdProcess {
    child: Option<std::process::Child>,
    binary: &'static str,
    args: Vec<String>,
    dir: tempfile::TempDir,
    pub endpoint: String,
}

/// A loopback port free right now.
#[cfg(feature = "etcd")]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[cfg(feature = "etcd")]
impl EtcdProcess {
    /// Starts `etcd` (Debian's `etcd-server`) and waits until it serves.
    pub async fn start() -> Self {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("etcd is not installed: `apt-get install -y etcd-server` (the test command does)")
            });
        // A port found free may be taken before etcd binds it (tests run in parallel): then
        // etcd exits at once, and it starts again on other ports.
        for attempt in 1.. {
            let (client, peer) = (free_port(), free_port());
            let dir = tempfile::tempdir().unwrap();
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                "--name=n0".to_string(),
                format!("--data-dir={}", dir.path().join("data").display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=n0={peer_url}"),
                "--max-request-bytes=8388608".to_string(),
                "--log-level=error".to_string(),
            ];
            let mut process = EtcdProcess {
                child: None,
                binary,
                args,
                dir,
                endpoint: format!("127.0.0.1:{client}"),
            };
            process.spawn();
            match process.try_wait_serving().await {
                Ok(()) => return process,
                Err(log) if attempt < 5 && log.contains("address already in use") => continue,
                Err(log) => panic!("etcd did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// SIGKILL: the store goes away mid-flight.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data (after [`EtcdProcess::kill`]).
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_serving().await;
    }

    fn spawn(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = std::process::Command::new(self.binary)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary));
        self.child = Some(child);
    }

    async fn wait_serving(&mut self) {
        if let Err(log) = self.try_wait_serving().await {
            panic!("etcd did not start:\n{log}");
        }
    }

    /// Waits until it serves; its log if it exited or did not serve within 30 s.
    async fn try_wait_serving(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let log = |dir: &tempfile::TempDir| {
            std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
        };
        loop {
            let options = crate::etcd::EtcdOptions::new(vec![self.endpoint.clone()]);
            if crate::etcd::EtcdStore::connect(options).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited ({status}):\n{}", log(&self.dir)));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("not serving within 30s:\n{}", log(&self.dir)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(feature = "etcd")]
impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real three-member etcd cluster on loopback, for failover tests: members can be killed
/// and restarted one by one, and the raft leader found.
#[cfg(feature = "etcd")]
pub struct EtcdCluster {
    members: Vec<EtcdProcess>,
}

#[cfg(feature = "etcd")]
impl EtcdCluster {
    pub async fn start(size: usize) -> Self {
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("etcd is not installed: `apt-get install -y etcd-server` (the test command does)")
            });
        // As for one member: ports taken before etcd binds them mean starting over.
        for attempt in 1.. {
            match Self::try_start(binary, size).await {
                Ok(cluster) => return cluster,
                Err(log) if attempt < 5 && log.contains("address already in use") => continue,
                Err(log) => panic!("etcd did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    async fn try_start(binary: &'static str, size: usize) -> Result<Self, String> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members: Vec<EtcdProcess> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let dir = tempfile::tempdir().unwrap();
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                EtcdProcess {
                    child: None,
                    binary,
                    args: vec![
                        format!("--name=m{i}"),
                        format!("--data-dir={}", dir.path().join("data").display()),
                        format!("--listen-client-urls={client_url}"),
                        format!("--advertise-client-urls={client_url}"),
                        format!("--listen-peer-urls={peer_url}"),
                        format!("--initial-advertise-peer-urls={peer_url}"),
                        format!("--initial-cluster={}", initial.join(",")),
                        "--initial-cluster-state=new".to_string(),
                        "--initial-cluster-token=infraos-test".to_string(),
                        "--max-request-bytes=8388608".to_string(),
                        "--log-level=error".to_string(),
                    ],
                    dir,
                    endpoint: format!("127.0.0.1:{client}"),
                }
            })
            .collect();
        // Members wait for each other to form the cluster: start them all, then wait.
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            m.try_wait_serving().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// `etcd://a,b,c/root`.
    pub fn url(&self, root: &str) -> String {
        let endpoints: Vec<&str> = self.members.iter().map(|m| m.endpoint.as_str()).collect();
        format!("etcd://{}/{root}", endpoints.join(","))
    }

    pub fn kill(&mut self, member: usize) {
        self.members[member].kill();
    }

    pub async fn restart(&mut self, member: usize) {
        self.members[member].restart().await;
    }

    /// The member that is raft leader now, asked of the live members.
    pub async fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok(mut client) = etcd_client::Client::connect([m.endpoint.as_str()], None).await
            else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let leader = status.leader();
            for (i, other) in self.members.iter().enumerate() {
                let Ok(mut c) = etcd_client::Client::connect([other.endpoint.as_str()], None).await
                else {
                    continue;
                };
                if let Ok(s) = c.status().await
                    && s.header().is_some_and(|h| h.member_id() == leader)
                {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// The conformance harness for the etcd backend: one etcd per test; a reopen is a new client.
#[cfg(feature = "etcd")]
pub struct EtcdHarness {
    etcd: tokio::sync::OnceCell<EtcdProcess>,
}

#[cfg(feature = "etcd")]
impl EtcdHarness {
    pub fn new() -> Self {
        EtcdHarness {
            etcd: tokio::sync::OnceCell::new(),
        }
    }
}

#[cfg(feature = "etcd")]
impl Default for EtcdHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "etcd")]
impl Harness for EtcdHarness {
    fn open(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let etcd = self.etcd.get_or_init(EtcdProcess::start).await;
            let options = crate::etcd::EtcdOptions::new(vec![etcd.endpoint.clone()]);
            let store = crate::etcd::EtcdStore::connect(options).await.unwrap();
            Arc::new(store) as Arc<dyn Store>
        })
    }
}
