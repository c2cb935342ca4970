//! The lease contract through a real server: an expired lease is freed only after expireTime
//! plus the skew margin, renewals extend it, and a renewal after expiry is refused.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use infraos_api::Time;
use serde_json::json;
use support::*;

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

fn time(v: &serde_json::Value, p: &str) -> Time {
    v.pointer(p)
        .and_then(|t| t.as_str())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn expired_leases_are_freed_after_the_skew_margin_and_waiting_claims_get_them() {
    let server = TestServer::start_with_config("leaseSkewMargin: 2s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(1)).await;
    c.create(kind("claims"), Some("p"), &claim("short", "1", "2s"))
        .await
        .unwrap();
    let alloc = eventually(Duration::from_secs(10), "short allocated", || {
        let c = c.clone();
        async move { c.get(kind("allocations"), Some("p"), "short").await.ok() }
    })
    .await;
    c.create(kind("claims"), Some("p"), &claim("next", "1", "1h"))
        .await
        .unwrap();
    let expire = time(&alloc, "/status/lease/expireTime");

    // Past expireTime but inside the margin, the resources are still held.
    eventually(Duration::from_secs(10), "past expireTime", || async {
        (output_now() > expire.plus(infraos_api::Duration::from_millis(300))).then_some(())
    })
    .await;
    let held = c
        .get(kind("allocations"), Some("p"), "short")
        .await
        .unwrap();
    assert_eq!(
        held["status"]["phase"], "Active",
        "not freed before expireTime + margin"
    );
    assert_eq!(
        phase(&c.get(kind("claims"), Some("p"), "next").await.unwrap()),
        "Pending"
    );

    let expired = eventually(Duration::from_secs(15), "short expired", || {
        let c = c.clone();
        async move {
            let a = c.get(kind("allocations"), Some("p"), "short").await.ok()?;
            (a["status"]["phase"] == "Expired").then_some(a)
        }
    })
    .await;
    let ended = time(&expired, "/status/endTime");
    assert!(
        ended.unix_millis() >= expire.unix_millis() + 2000,
        "freed at {ended}, expireTime {expire}: not before the 2s margin"
    );
    assert!(
        ended.unix_millis() <= expire.unix_millis() + 2000 + 3000,
        "and promptly after it"
    );
    let claim = c.get(kind("claims"), Some("p"), "short").await.unwrap();
    assert_eq!(phase(&claim), "Expired");
    assert_eq!(claim["status"]["reason"], "LeaseExpired");
    eventually(
        Duration::from_secs(15),
        "the waiting claim gets the CPU",
        || {
            let c = c.clone();
            async move {
                (phase(&c.get(kind("claims"), Some("p"), "next").await.ok()?) == "Allocated")
                    .then_some(())
            }
        },
    )
    .await;
    let (events, _) = c.list(kind("events"), Some("p"), None).await.unwrap();
    assert!(events.iter().any(
        |e| e["spec"]["reason"] == "Expired" && e["spec"]["involvedObject"]["name"] == "short"
    ));
    let page = c.audit_records(1, 5000).await.unwrap();
    assert!(page.items.iter().any(|r| r.entry["verb"] == "expire" && r.entry["subject"] == "system:lease-controller"));
}

fn output_now() -> Time {
    Time::from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

#[tokio::test]
async fn renewals_extend_the_lease_and_late_ones_are_refused() {
    let server = TestServer::start_with_config("leaseSkewMargin: 5s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(2)).await;
    c.create(kind("claims"), Some("p"), &claim("r", "1", "2s"))
        .await
        .unwrap();
    let before = eventually(Duration::from_secs(10), "allocated", || {
        let c = c.clone();
        async move { c.get(kind("allocations"), Some("p"), "r").await.ok() }
    })
    .await;
    let renewed = c
        .claim_action("p", "r", "renew", Some(&json!({"duration": "3s"})))
        .await
        .unwrap();
    let after = c.get(kind("allocations"), Some("p"), "r").await.unwrap();
    assert!(time(&after, "/status/lease/expireTime") > time(&before, "/status/lease/expireTime"));
    assert_eq!(
        renewed["status"]["expireTime"],
        after["status"]["lease"]["expireTime"]
    );
    assert_eq!(
        after["status"]["lease"]["fencingEpoch"], 1,
        "renewal keeps the epoch"
    );
    let err = c
        .claim_action("p", "r", "renew", Some(&json!({"duration": "1000d"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(422), "{err}");
    // Wait past expireTime (the margin keeps it from being freed yet) and renew: refused.
    let expire = time(&after, "/status/lease/expireTime");
    eventually(Duration::from_secs(10), "past expireTime", || async {
        (output_now() > expire.plus(infraos_api::Duration::from_millis(200))).then_some(())
    })
    .await;
    let err = c.claim_action("p", "r", "renew", None).await.unwrap_err();
    assert_eq!(err.code(), Some(409), "{err}");
    assert!(err.to_string().contains("lease expired"), "{err}");
    // Release after the lease ended is refused the same way once it expired.
    let err = c
        .claim_action("p", "missing", "release", None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

/// Issue 17, finding 2: a lease past its expireTime (inside the skew margin) that a
/// higher-priority claim then tries to preempt used to take the requeue path: the claim went
/// back to Pending and got a new lease. Expired is final: the lease ends Expired, its claim
/// too, and the preemptor gets the room once the margin has passed.
#[tokio::test]
async fn an_expired_lease_is_never_revived_by_a_later_preemption() {
    let server = TestServer::start_with_config("leaseSkewMargin: 4s\n").await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(1)).await;
    apply_yaml(
        &c,
        r#"
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: prod}
spec: {value: 1000}
"#,
    )
    .await;
    c.create(kind("claims"), Some("p"), &claim("short", "1", "2s"))
        .await
        .unwrap();
    let alloc = eventually(Duration::from_secs(10), "short allocated", || {
        let c = c.clone();
        async move { c.get(kind("allocations"), Some("p"), "short").await.ok() }
    })
    .await;
    let expire = time(&alloc, "/status/lease/expireTime");
    eventually(Duration::from_secs(10), "past expireTime", || async {
        (output_now() > expire.plus(infraos_api::Duration::from_millis(200))).then_some(())
    })
    .await;
    // Inside the margin the CPU is still held: the prod claim can only preempt for it.
    let mut urgent = claim("urgent", "1", "1h");
    urgent["spec"]["priorityClassName"] = "prod".into();
    c.create(kind("claims"), Some("p"), &urgent).await.unwrap();
    eventually(Duration::from_secs(20), "urgent allocated", || {
        let c = c.clone();
        async move {
            (phase(&c.get(kind("claims"), Some("p"), "urgent").await.ok()?) == "Allocated")
                .then_some(())
        }
    })
    .await;
    let short = c.get(kind("claims"), Some("p"), "short").await.unwrap();
    assert_eq!(phase(&short), "Expired", "{short}");
    assert_eq!(short["status"]["reason"], "LeaseExpired");
    assert_eq!(short["status"]["fencingEpoch"], 1, "never allocated again");
    let ended = c
        .get(kind("allocations"), Some("p"), "short")
        .await
        .unwrap();
    assert_eq!(ended["status"]["phase"], "Expired", "{ended}");
    assert!(ended["status"]["preemption"].is_null(), "{ended}");
    let (events, _) = c.list(kind("events"), Some("p"), None).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e["spec"]["involvedObject"]["name"] == "short"
                && matches!(e["spec"]["reason"].as_str(), Some("Requeued" | "Preempted"))),
        "an expired lease is neither preempted nor requeued"
    );
}
