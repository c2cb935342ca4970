//! The etcd backend runs the whole conformance suite against a real etcd (Debian's
//! `etcd-server`), one member per test on loopback ports.
#![cfg(feature = "etcd")]

infraos_store::store_conformance_tests!(infraos_store::conformance::EtcdHarness::new());

mod limits {
    //! etcd's limits on one transaction (`--max-txn-ops`, 128 by default) are refused with an
    //! error naming them, never sent to fail as a store outage, and nothing is written.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use infraos_store::conformance::EtcdProcess;
    use infraos_store::etcd::{EtcdOptions, EtcdStore};
    use infraos_store::{Store, StoreError, Txn};

    fn wide(puts: usize, append: bool) -> Txn {
        let mut txn = Txn::new();
        for i in 0..puts {
            txn = txn.put(format!("/wide/{i}"), "v");
        }
        if append {
            txn = txn.append(b"wide".to_vec());
        }
        txn
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_past_max_txn_ops_is_refused_by_name() {
        let etcd = EtcdProcess::start().await;
        let url = format!("etcd://{}/limits", etcd.endpoint);
        let store = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        // 127 puts + 1 entry + the ledger head = 129 operations: one too many.
        let err = store.txn(wide(127, true)).await.unwrap_err();
        assert!(matches!(err, StoreError::TxnTooLarge(_)), "{err}");
        assert!(err.to_string().contains("--max-txn-ops"), "{err}");
        assert!(store.get("/wide/0").await.unwrap().is_none());
        // 126 + 1 + 1 = 128 fits.
        assert!(store.txn(wide(126, true)).await.unwrap().succeeded);

        // A URL that claims a larger limit than the member has: etcd's refusal is named too.
        let url = format!("etcd://{}/limits2?maxTxnOps=1000", etcd.endpoint);
        let store = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let err = store.txn(wide(300, false)).await.unwrap_err();
        assert!(matches!(err, StoreError::TxnTooLarge(_)), "{err}");
        assert!(err.to_string().contains("too many operations"), "{err}");
        assert!(store.get("/wide/0").await.unwrap().is_none());
    }

    /// A batch create of 100 objects, each with its audit entry, fits one default etcd
    /// transaction: the entries of one request are one key (a block).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_audited_writes_fit_one_default_transaction() {
        let etcd = EtcdProcess::start().await;
        let url = format!("etcd://{}/blocks", etcd.endpoint);
        let store = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let limits = store.txn_limits();
        assert_eq!((limits.compares, limits.ops), (127, 127));
        let mut txn = Txn::new();
        for i in 0..100 {
            txn = txn
                .when(infraos_store::Compare::absent(format!("/batch/{i}")))
                .put(format!("/batch/{i}"), "v")
                .append(format!("created {i}").into_bytes());
        }
        let out = store.txn(txn).await.unwrap();
        assert!(out.succeeded);
        assert_eq!(out.ledger_seqs, (1..=100).collect::<Vec<u64>>());
        // A few more transactions, grouped or not, then read the chain back whole and in part.
        let writes = (0..20).map(|i| {
            let store = store.clone();
            async move {
                store
                    .txn(Txn::new().append(format!("more {i}").into_bytes()))
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(writes).await;
        let all = store.ledger_range(0, 0).await.unwrap();
        assert_eq!(all.len(), 120);
        let mut prev = [0u8; 32];
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.prev_hash, prev);
            assert_eq!(
                e.hash,
                infraos_api::audit::chain_hash(e.seq, &prev, &e.payload)
            );
            prev = e.hash;
        }
        assert_eq!(&all[41].payload[..], b"created 41");
        let part = store.ledger_range(50, 10).await.unwrap();
        assert_eq!(
            part.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (50..60).collect::<Vec<u64>>()
        );
        let tail = store.ledger_range(119, 5).await.unwrap();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [119, 120]);
        assert!(store.ledger_range(121, 0).await.unwrap().is_empty());
        assert_eq!(store.ledger_head().await.unwrap().seq, 120);
    }

    /// Two servers' committers (each pipelining its groups) extending one chain at once, with
    /// some writes whose compare fails: every other write commits once, with its own sequence
    /// numbers, only the failing ones fail, and the chain is whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_pipelined_committers_keep_one_chain() {
        let etcd = EtcdProcess::start().await;
        let url = format!("etcd://{}/two", etcd.endpoint);
        let a = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let b = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                let mut failed = 0;
                for i in 0..25u64 {
                    let mut txn = Txn::new()
                        .put(format!("/two/{w}/{i}"), "v")
                        .append(format!("{w}-{i}").into_bytes());
                    // Every fifth write requires a key that never exists to exist.
                    if i % 5 == 4 {
                        txn = txn.when(infraos_store::Compare::unchanged("/two/never", 7));
                    }
                    let out = store.txn(txn).await.unwrap();
                    assert_eq!(out.succeeded, i % 5 != 4, "writer {w} write {i}");
                    if out.succeeded {
                        seqs.extend(out.ledger_seqs);
                    } else {
                        failed += 1;
                    }
                }
                (seqs, failed)
            }));
        }
        let mut all = Vec::new();
        let mut failed = 0;
        for t in tasks {
            let (seqs, f) = t.await.unwrap();
            all.extend(seqs);
            failed += f;
        }
        assert_eq!(failed, 16 * 5);
        all.sort_unstable();
        assert_eq!(all, (1..=16 * 20).collect::<Vec<u64>>());
        let entries = a.ledger_range(1, 0).await.unwrap();
        assert_eq!(entries.len(), 16 * 20);
        let mut prev = [0u8; 32];
        for e in &entries {
            assert_eq!(e.prev_hash, prev, "entry {} chains", e.seq);
            prev = e.hash;
        }
        assert_eq!(b.ledger_head().await.unwrap().hash, prev);
    }

    /// A range whose answer exceeds gRPC's default 4 MiB (a restart listing thousands of
    /// allocations) is read whole: before, it failed and was retried for ever, and a server
    /// restarted on such a store never became ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_answer_over_four_mebibytes_is_read() {
        let etcd = EtcdProcess::start().await;
        let url = format!("etcd://{}/big", etcd.endpoint);
        let store = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let value = vec![b'x'; 256 * 1024];
        for i in 0..24 {
            let out = store
                .txn(Txn::new().put(format!("/big/{i:02}"), value.clone()))
                .await
                .unwrap();
            assert!(out.succeeded);
        }
        let all = store.range("/big/", None, 0).await.unwrap();
        assert_eq!(all.kvs.len(), 24);
        assert!(all.kvs.iter().all(|kv| kv.value.len() == value.len()));
        let revision = store.current_revision().await.unwrap();
        assert_eq!(
            store.range_at("/big/", revision).await.unwrap().kvs.len(),
            24
        );
    }

    /// A ledger written one key per entry (before blocks) still reads, and grows in blocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ledger_of_single_entry_keys_still_reads_and_grows() {
        let etcd = EtcdProcess::start().await;
        let mut client = etcd_client::Client::connect([etcd.endpoint.clone()], None)
            .await
            .unwrap();
        let mut prev = [0u8; 32];
        for seq in 1..=3u64 {
            let payload = format!("old {seq}");
            let hash = infraos_api::audit::chain_hash(seq, &prev, payload.as_bytes());
            let mut raw = prev.to_vec();
            raw.extend_from_slice(&hash);
            raw.extend_from_slice(payload.as_bytes());
            client
                .put(format!("/old/ledger/{seq:020}"), raw, None)
                .await
                .unwrap();
            prev = hash;
        }
        let mut head = 3u64.to_le_bytes().to_vec();
        head.extend_from_slice(&prev);
        client.put("/old/ledger-head", head, None).await.unwrap();

        let url = format!("etcd://{}/old", etcd.endpoint);
        let store = EtcdStore::connect(EtcdOptions::parse_url(&url).unwrap())
            .await
            .unwrap();
        let out = store
            .txn(
                Txn::new()
                    .append(b"new 4".to_vec())
                    .append(b"new 5".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out.ledger_seqs, [4, 5]);
        let all = store.ledger_range(1, 0).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all[3].prev_hash, prev);
        assert_eq!(&all[1].payload[..], b"old 2");
        let from_two = store.ledger_range(2, 2).await.unwrap();
        assert_eq!(from_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        let from_five = store.ledger_range(5, 0).await.unwrap();
        assert_eq!(from_five.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn limits_in_the_store_url_parse_or_name_the_parameter() {
        let o = EtcdOptions::parse_url("etcd://e:2379/r?maxTxnOps=1024&maxInFlight=64").unwrap();
        assert_eq!(
            (o.max_txn_ops, o.max_in_flight, o.root.as_str()),
            (1024, 64, "/r")
        );
        for (bad, names) in [
            ("etcd://e:2379/r?maxTxnOps=0", "maxTxnOps"),
            ("etcd://e:2379/r?maxTxnOps=lots", "maxTxnOps"),
            ("etcd://e:2379/r?txnOps=5", "txnOps"),
        ] {
            let e = EtcdOptions::parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }
}
