//! Crash safety: SIGKILL the server in the middle of a write load, restart it, and check that
//! every acknowledged write is there, the store file opens, revisions keep increasing and the
//! audit chain still verifies.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::sync::Mutex;

fn tenants() -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural("tenants").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_under_load() {
    let mut server = TestServer::start().await;
    let mut all_acked: Vec<(String, u64)> = Vec::new();
    for round in 0..3 {
        let c = server.client();
        let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let mut writers = Vec::new();
        for w in 0..8 {
            let c = c.clone();
            let acked = Arc::clone(&acked);
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("r{round}-w{w}-{i}");
                    let body = json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": name}});
                    match c.create(tenants(), None, &body).await {
                        Ok(v) => {
                            let rv = v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                            acked.lock().await.push((name, rv));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill while the writers are busy: after some writes were acknowledged.
        eventually(Duration::from_secs(30), "writes acknowledged", || {
            let acked = Arc::clone(&acked);
            async move { (acked.lock().await.len() >= 150).then_some(()) }
        })
        .await;
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().await.clone();
        all_acked.extend(acked.iter().cloned());

        server.spawn().await;
        let c = server.client();
        let (items, _) = c.list(tenants(), None, None).await.unwrap();
        let present: std::collections::HashSet<&str> = items
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        let lost: Vec<&String> = all_acked
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !present.contains(n.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged writes lost: {lost:?}"
        );
        let max_rv = all_acked.iter().map(|(_, rv)| *rv).max().unwrap();
        let after = c
            .create(tenants(), None, &json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": format!("after-{round}")}}))
            .await
            .unwrap();
        let rv: u64 = after["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rv > max_rv,
            "round {round}: revision {rv} after restart must exceed {max_rv}"
        );
    }
    let out = server.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "audit chain after crashes: {}",
        stderr(&out)
    );
    let page = server.client().audit_records(1, 1).await.unwrap();
    assert!(
        page.metadata.head_seq as usize >= all_acked.len(),
        "every acknowledged write was audited"
    );
}
