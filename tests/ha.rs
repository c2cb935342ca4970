//! Several servers on one etcd (a build with the `etcd` feature): exactly one leads and runs
//! the controllers, every one serves the API, and when the leader is SIGKILLed under a
//! steady claim load another takes over, with no acknowledged claim lost and no resource
//! given twice.
#![cfg(feature = "etcd")]
// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use infraos_store::conformance::EtcdCluster;
use serde_json::Value;
use support::*;

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

async fn leader_status(s: &TestServer) -> Option<Value> {
    let (code, body) = s
        .client()
        .raw(infraos_client::Method::GET, "/leader", None, vec![], None)
        .await
        .ok()?;
    (code == 200).then_some(body)
}

/// The index of the one server that leads, once exactly one does.
async fn wait_for_one_leader(servers: &[Option<TestServer>]) -> usize {
    eventually(Duration::from_secs(30), "exactly one leader", || async {
        let mut leading = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            if let Some(s) = s
                && leader_status(s).await?["leading"] == true
            {
                leading.push(i);
            }
        }
        (leading.len() == 1).then(|| leading[0])
    })
    .await
}

#[tokio::test]
async fn the_leader_fails_over_without_losing_or_doubling_anything() {
    // Three etcd members and three servers, all on loopback.
    let etcd = EtcdCluster::start(3).await;
    let config = format!(
        "store: {}\nleaderLeaseDuration: 3s\nleaderRenewInterval: 500ms\n",
        etcd.url("ha")
    );
    let first = TestServer::start_with_config(&config).await;
    let mut servers: Vec<Option<TestServer>> = vec![Some(first)];
    for _ in 0..2 {
        let copy = servers[0].as_ref().unwrap().copy_data_dir();
        servers.push(Some(TestServer::start_in(copy).await));
    }
    let leader = wait_for_one_leader(&servers).await;
    // Any replica serves the API: set up through a follower.
    let follower = (leader + 1) % 3;
    let c = servers[follower].as_ref().unwrap().client();
    apply_yaml(&c, &small_cluster(64)).await;
    let mut created = Vec::new();
    let mut takeovers = Vec::new();
    let mut next = 0;
    let mut create = |c: &infraos_client::Client, created: &mut Vec<String>| {
        let name = format!("c{next:03}");
        next += 1;
        let c = c.clone();
        created.push(name.clone());
        async move {
            c.create(kind("claims"), Some("p"), &claim(&name, "1", "1h"))
                .await
                .unwrap();
            name
        }
    };
    for round in 0..2 {
        let leader = wait_for_one_leader(&servers).await;
        let survivor = (leader + 1) % 3;
        let c = servers[survivor].as_ref().unwrap().client();
        for _ in 0..5 {
            create(&c, &mut created).await;
        }
        // SIGKILL the leader under load, and time until a claim created after it is placed.
        servers[leader].as_mut().unwrap().kill9();
        let killed = Instant::now();
        let probe = create(&c, &mut created).await;
        for _ in 0..5 {
            create(&c, &mut created).await;
        }
        eventually(
            Duration::from_secs(20),
            "a new leader places claims",
            || {
                let c = c.clone();
                let probe = probe.clone();
                async move {
                    let claim = c.get(kind("claims"), Some("p"), &probe).await.ok()?;
                    (phase(&claim) == "Allocated").then_some(())
                }
            },
        )
        .await;
        takeovers.push(killed.elapsed());
        eprintln!(
            "round {round}: placed again {:?} after the leader was killed",
            killed.elapsed()
        );
        // A client given every URL skips the dead one.
        let mut both = servers[survivor].as_ref().unwrap().config.clone();
        both.server = format!(
            "{},{}",
            servers[leader].as_ref().unwrap().config.server,
            both.server
        );
        let failing_over = infraos_client::Client::new(&both).unwrap();
        failing_over
            .get(kind("claims"), Some("p"), &probe)
            .await
            .expect("the second URL answers when the first is down");
        // The killed server comes back as a follower.
        let dead = servers[leader].take().unwrap();
        let dir = dead.copy_data_dir();
        drop(dead);
        servers[leader] = Some(TestServer::start_in(dir).await);
    }
    // Every acknowledged claim is there and placed; no CPU is handed out twice.
    let c = servers[wait_for_one_leader(&servers).await]
        .as_ref()
        .unwrap()
        .client();
    eventually(Duration::from_secs(30), "every claim placed", || {
        let c = c.clone();
        let created = created.clone();
        async move {
            let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            let placed = items.iter().filter(|i| phase(i) == "Allocated").count();
            (items.len() == created.len() && placed == created.len()).then_some(())
        }
    })
    .await;
    let (allocations, _) = c.list(kind("allocations"), Some("p"), None).await.unwrap();
    assert_eq!(allocations.len(), created.len(), "one allocation per claim");
    let cpu: usize = allocations
        .iter()
        .filter(|a| a["spec"]["node"] == "n1")
        .count();
    assert!(cpu <= 64, "n1 has 64 CPUs and {cpu} one-CPU claims on it");
    for t in &takeovers {
        assert!(
            *t < Duration::from_secs(10),
            "failover took {t:?} (target 5 s, limit here 10 s)"
        );
    }
}

/// On a three-member etcd, losing an etcd member, and then the etcd leader, under a claim
/// load: the servers go on placing claims (after etcd's own election), and nothing
/// acknowledged is lost.
#[tokio::test]
async fn losing_an_etcd_member_or_its_leader_loses_nothing() {
    let mut etcd = EtcdCluster::start(3).await;
    let config = format!(
        "store: {}\nleaderLeaseDuration: 3s\nleaderRenewInterval: 500ms\n",
        etcd.url("members")
    );
    let first = TestServer::start_with_config(&config).await;
    let copy = first.copy_data_dir();
    let servers = vec![Some(first), Some(TestServer::start_in(copy).await)];
    let leader = wait_for_one_leader(&servers).await;
    let c = servers[leader].as_ref().unwrap().client();
    apply_yaml(&c, &small_cluster(64)).await;
    let mut acknowledged = Vec::new();
    let mut n = 0;
    for round in ["a follower member", "the etcd leader"] {
        let etcd_leader = etcd.leader().await.expect("an etcd leader");
        let victim = if round == "the etcd leader" {
            etcd_leader
        } else {
            (etcd_leader + 1) % 3
        };
        etcd.kill(victim);
        let killed = Instant::now();
        // Keep submitting: writes may fail (503) while etcd re-elects; retried, none is lost.
        let mut placed_probe = None;
        for _ in 0..5 {
            n += 1;
            let name = format!("m{n:03}");
            eventually(Duration::from_secs(30), "a write lands", || {
                let c = c.clone();
                let name = name.clone();
                async move {
                    c.create(kind("claims"), Some("p"), &claim(&name, "1", "1h"))
                        .await
                        .ok()
                }
            })
            .await;
            acknowledged.push(name.clone());
            placed_probe.get_or_insert(name);
        }
        let probe = placed_probe.unwrap();
        eventually(Duration::from_secs(30), "claims placed again", || {
            let c = c.clone();
            let probe = probe.clone();
            async move {
                let claim = c.get(kind("claims"), Some("p"), &probe).await.ok()?;
                (phase(&claim) == "Allocated").then_some(())
            }
        })
        .await;
        eprintln!(
            "losing {round}: claims placed again {:?} after",
            killed.elapsed()
        );
        etcd.restart(victim).await;
    }
    eventually(
        Duration::from_secs(30),
        "every acknowledged claim placed",
        || {
            let c = c.clone();
            let acknowledged = acknowledged.clone();
            async move {
                let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
                let placed: Vec<&str> = items
                    .iter()
                    .filter(|i| phase(i) == "Allocated")
                    .filter_map(|i| i["metadata"]["name"].as_str())
                    .collect();
                acknowledged
                    .iter()
                    .all(|a| placed.contains(&a.as_str()))
                    .then_some(())
            }
        },
    )
    .await;
}

/// Leases granted under one leader are reclaimed by the next: the new leader's lease
/// controller takes over the timers.
#[tokio::test]
async fn leases_expire_after_a_failover() {
    let etcd = EtcdCluster::start(3).await;
    let config = format!(
        "store: {}\nleaderLeaseDuration: 2s\nleaderRenewInterval: 300ms\nleaseSkewMargin: 1s\n",
        etcd.url("expiry")
    );
    let first = TestServer::start_with_config(&config).await;
    let copy = first.copy_data_dir();
    let mut servers = vec![Some(first), Some(TestServer::start_in(copy).await)];
    let leader = wait_for_one_leader(&servers).await;
    let survivor = 1 - leader;
    let c = servers[survivor].as_ref().unwrap().client();
    apply_yaml(&c, &small_cluster(8)).await;
    for i in 0..4 {
        c.create(
            kind("claims"),
            Some("p"),
            &claim(&format!("e{i}"), "1", "3s"),
        )
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(20), "placed", || {
        let c = c.clone();
        async move {
            let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            items.iter().all(|i| phase(i) == "Allocated").then_some(())
        }
    })
    .await;
    servers[leader].as_mut().unwrap().kill9();
    eventually(
        Duration::from_secs(20),
        "expired under the new leader",
        || {
            let c = c.clone();
            async move {
                let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
                items.iter().all(|i| phase(i) == "Expired").then_some(())
            }
        },
    )
    .await;
}
