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
