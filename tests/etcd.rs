//! The server on etcd (a build with the `etcd` feature) against a real etcd: claims are
//! placed and explained as on the embedded store, state outlives a SIGKILLed server, and an
//! unreachable etcd stops the server at start with a clear error.
#![cfg(feature = "etcd")]
// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use infraos_store::conformance::EtcdProcess;
use serde_json::json;
use support::*;

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

#[tokio::test]
async fn a_server_on_etcd_schedules_explains_and_survives_a_restart() {
    let etcd = EtcdProcess::start().await;
    let mut server =
        TestServer::start_with_config(&format!("store: etcd://{}/it\n", etcd.endpoint)).await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    for name in ["a", "b"] {
        c.create(kind("claims"), Some("p"), &claim(name, "1", "1h"))
            .await
            .unwrap();
    }
    c.create(kind("claims"), Some("p"), &claim("big", "16", "1h"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "two placed, one pending", || {
        let c = c.clone();
        async move {
            let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            let phases: Vec<&str> = items.iter().map(phase).collect();
            (phases.iter().filter(|p| **p == "Allocated").count() == 2
                && items
                    .iter()
                    .any(|i| i["status"]["reason"] == "Unschedulable"))
            .then_some(())
        }
    })
    .await;
    // Replays read etcd's own history.
    for name in ["a", "b", "big"] {
        let (code, body) = c
            .raw(
                infraos_client::Method::GET,
                &format!("/apis/infraos.io/v1/namespaces/p/claims/{name}/explain"),
                None,
                vec![],
                None,
            )
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["matches"], json!(true), "{body:#}");
    }
    // The objects are in etcd, under the root the URL named.
    let store = infraos_store::etcd::EtcdStore::connect(
        infraos_store::etcd::EtcdOptions::parse_url(&format!("etcd://{}/it", etcd.endpoint))
            .unwrap(),
    )
    .await
    .unwrap();
    use infraos_store::Store as _;
    let allocations = store.range("/", None, 0).await.unwrap();
    assert!(
        allocations
            .kvs
            .iter()
            .any(|kv| kv.key.contains("allocations")),
        "allocations are stored in etcd"
    );
    // SIGKILL and restart on the same etcd: nothing is lost, and the audit chain verifies.
    server.kill9();
    server.spawn().await;
    let c = server.client();
    let a = c.get(kind("allocations"), Some("p"), "a").await.unwrap();
    assert_eq!(a["spec"]["node"], "n1");
    let out = server.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_unreachable_etcd_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_infraos"))
        .args(["server", "init", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_infraos"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("etcd") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = Command::new(env!("CARGO_BIN_EXE_infraos"))
        .args(["server", "--listen", "127.0.0.1:0", "--store", "mysql://x"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a store URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// etcd going away mid-flight: writes answer 503 with the reason and nothing is half-written;
/// when it comes back the server recovers by itself (watches relist, the controllers resume).
#[tokio::test]
async fn the_server_answers_503_while_etcd_is_away_and_recovers() {
    let mut etcd = EtcdProcess::start().await;
    let server = TestServer::start_with_config(&format!(
        "store: etcd://{}/away\nleaderLeaseDuration: 1s\nleaderRenewInterval: 200ms\n",
        etcd.endpoint
    ))
    .await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    c.create(kind("claims"), Some("p"), &claim("before", "1", "1h"))
        .await
        .unwrap();
    etcd.kill();
    let err = c
        .create(kind("claims"), Some("p"), &claim("during", "1", "1h"))
        .await
        .expect_err("no store, no write");
    assert_eq!(err.code(), Some(503), "{err}");
    assert!(err.to_string().contains("store unavailable"), "{err}");
    let (code, _) = c
        .raw(infraos_client::Method::GET, "/readyz", None, vec![], None)
        .await
        .unwrap();
    assert_eq!(code, 503, "not ready without a store");
    etcd.restart().await;
    eventually(Duration::from_secs(30), "writes work again", || {
        let c = c.clone();
        async move {
            c.create(kind("claims"), Some("p"), &claim("after", "1", "1h"))
                .await
                .ok()
        }
    })
    .await;
    eventually(Duration::from_secs(30), "both claims placed", || {
        let c = c.clone();
        async move {
            let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            let names: Vec<&str> = items
                .iter()
                .filter(|i| phase(i) == "Allocated")
                .filter_map(|i| i["metadata"]["name"].as_str())
                .collect();
            (names.contains(&"before") && names.contains(&"after")).then_some(())
        }
    })
    .await;
    let gone = c.get(kind("claims"), Some("p"), "during").await;
    assert!(
        gone.is_err_and(|e| e.is_not_found()),
        "the refused write left nothing behind"
    );
}
