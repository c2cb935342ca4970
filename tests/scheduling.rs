//! Scheduling through a real server: claims become allocations, capacity is never exceeded
//! even when claims race, freed capacity goes to waiting claims, and deleting a claim
//! releases what it holds.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::*;

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

async fn phases(c: &infraos_client::Client) -> (Vec<String>, Vec<String>) {
    let (items, _) = c.list(kind("claims"), Some("p"), None).await.unwrap();
    let mut allocated = Vec::new();
    let mut pending = Vec::new();
    for i in &items {
        let name = i["metadata"]["name"].as_str().unwrap().to_string();
        match phase(i) {
            "Allocated" => allocated.push(name),
            "Pending" => pending.push(name),
            _ => {}
        }
    }
    (allocated, pending)
}

#[tokio::test]
async fn racing_claims_never_overcommit_and_freed_capacity_is_reused() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(10)).await;
    let submissions = futures::stream::iter((0..30).map(|i| {
        let c = c.clone();
        async move {
            c.create(
                kind("claims"),
                Some("p"),
                &claim(&format!("c{i:02}"), "1", "1h"),
            )
            .await
        }
    }))
    .buffer_unordered(16);
    let results: Vec<_> = submissions.collect().await;
    assert!(results.iter().all(|r| r.is_ok()));
    eventually(
        Duration::from_secs(30),
        "10 allocated, 20 explained",
        || {
            let c = c.clone();
            async move {
                let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
                let allocated = items.iter().filter(|i| phase(i) == "Allocated").count();
                let explained = items
                    .iter()
                    .filter(|i| phase(i) == "Pending" && i["status"]["reason"] == "Unschedulable")
                    .count();
                (allocated == 10 && explained == 20).then_some(())
            }
        },
    )
    .await;
    let (allocated, pending) = phases(&c).await;
    assert_eq!(allocated.len(), 10, "exactly the capacity is allocated");
    assert_eq!(pending.len(), 20);
    let (items, _) = c.list(kind("claims"), Some("p"), None).await.unwrap();
    let waiting = items.iter().find(|i| phase(i) == "Pending").unwrap();
    assert_eq!(
        waiting["status"]["message"],
        "0/1 nodes are available: 1 insufficient compute."
    );
    // Allocations add up to at most the capacity.
    let (allocs, _) = c.list(kind("allocations"), Some("p"), None).await.unwrap();
    let cpus: usize = allocs
        .iter()
        .filter(|a| a["status"]["phase"] == "Active")
        .map(|a| {
            a["spec"]["resources"][0]["amount"]["cpu"]
                .as_str()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(cpus, 10);

    // Release three and delete two: five waiting claims get the capacity.
    for name in &allocated[..3] {
        c.claim_action("p", name, "release", None).await.unwrap();
    }
    for name in &allocated[3..5] {
        c.delete(kind("claims"), Some("p"), name).await.unwrap();
    }
    eventually(Duration::from_secs(30), "freed capacity reused", || {
        let c = c.clone();
        async move {
            let (items, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            let allocated = items.iter().filter(|i| phase(i) == "Allocated").count();
            (allocated == 10).then_some(())
        }
    })
    .await;
    for name in &allocated[3..5] {
        assert!(
            c.get(kind("claims"), Some("p"), name)
                .await
                .unwrap_err()
                .is_not_found(),
            "deleted claim is gone"
        );
        assert!(
            c.get(kind("allocations"), Some("p"), name)
                .await
                .unwrap_err()
                .is_not_found(),
            "its allocation too"
        );
    }
    let released = c
        .get(kind("allocations"), Some("p"), &allocated[0])
        .await
        .unwrap();
    assert_eq!(released["status"]["phase"], "Released");
}

#[tokio::test]
async fn items_pools_and_colocation_through_the_api() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    apply_yaml(
        &c,
        r#"
apiVersion: infraos.io/v1
kind: Resource
metadata: {name: n1-gpus}
spec:
  class: gpu
  node: n1
  items:
    - {name: g0, attributes: {model: A100, memoryGiB: 40}}
    - {name: g1, attributes: {model: H100, memoryGiB: 80}}
    - {name: g2, attributes: {model: H100, memoryGiB: 80}}
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {name: ipv4}
spec: {kind: items}
---
apiVersion: infraos.io/v1
kind: Resource
metadata: {name: pool-b, labels: {zone: b}}
spec: {class: ipv4, cidr: 10.9.0.0/30}
---
apiVersion: infraos.io/v1
kind: Resource
metadata: {name: pool-a, labels: {zone: a}}
spec: {class: ipv4, cidr: 10.8.0.0/30, exclude: [10.8.0.1]}
"#,
    )
    .await;
    c.create(
        kind("claims"),
        Some("p"),
        &json!({"apiVersion": "infraos.io/v1", "kind": "Claim", "metadata": {"name": "job", "namespace": "p"},
            "spec": {"requests": [
                {"class": "compute", "amount": {"cpu": "2"}},
                {"class": "gpu", "count": 2, "selector": "item.attributes.model == \"H100\""},
                {"class": "ipv4", "count": 1}
            ], "topology": {"colocate": ["zone"]}}}),
    )
    .await
    .unwrap();
    let alloc = eventually(Duration::from_secs(20), "job allocated", || {
        let c = c.clone();
        async move { c.get(kind("allocations"), Some("p"), "job").await.ok() }
    })
    .await;
    let parts = alloc["spec"]["resources"].as_array().unwrap();
    let gpu = parts.iter().find(|p| p["class"] == "gpu").unwrap();
    assert_eq!(gpu["items"], json!(["g1", "g2"]));
    let ip = parts.iter().find(|p| p["class"] == "ipv4").unwrap();
    assert_eq!(
        ip["resource"], "pool-a",
        "the address comes from the node's zone"
    );
    assert_eq!(
        ip["items"],
        json!(["10.8.0.2"]),
        "network and excluded gateway are skipped"
    );
    assert_eq!(alloc["status"]["lease"]["fencingEpoch"], 1);
    assert!(alloc["spec"]["score"]["plugins"]["binpack"].is_number());
    let claim = c.get(kind("claims"), Some("p"), "job").await.unwrap();
    assert_eq!(claim["status"]["allocation"], "job");
    assert_eq!(claim["status"]["node"], "n1");
}
