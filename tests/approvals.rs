//! High-risk claims wait for approval on a real server: a workload that needs the network
//! tier, and claims a Policy covers, are PendingApproval until enough people other than the
//! requester approve; the scheduler does not see them before; self-approval, duplicate
//! approvals and refusals without a reason are refused; every decision is audited.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use infraos_client::{Client, Method};
use serde_json::json;
use support::*;

const V1: &str = "/apis/infraos.io/v1";

const WORLD: &str = r#"
apiVersion: infraos.io/v1
kind: Policy
metadata: {name: two-eyes-for-risky}
spec:
  approval:
    approvers: 2
    projects: [p]
    claimSelector: "risk=high"
"#;

fn binding(user: &str, role: &str, scope: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "infraos.io/v1", "kind": "RoleBinding",
        "metadata": {"name": format!("{user}-{role}")},
        "spec": {"role": role, "scope": scope, "subjects": [{"kind": "User", "name": user}]}
    })
}

async fn call(
    admin: &Client,
    token: &str,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    admin
        .raw(
            method,
            path,
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
            Some(token),
        )
        .await
        .unwrap()
}

fn claim(
    name: &str,
    labels: serde_json::Value,
    workload: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut c = json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p", "labels": labels},
        "spec": {"requests": [{"class": "compute", "amount": {"cpu": "1"}}], "lease": {"duration": "1h"}}
    });
    if let Some(w) = workload {
        c["spec"]["workload"] = w;
    }
    c
}

#[tokio::test]
async fn high_risk_claims_wait_for_approvals_by_others() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, &small_cluster(8)).await;
    apply_yaml(&admin, WORLD).await;
    for (user, role, scope) in [
        ("alice", "project-member", json!({"project": "p"})),
        ("bob", "project-admin", json!({"project": "p"})),
        ("dave", "project-admin", json!({"project": "p"})),
        ("carol", "tenant-admin", json!({"tenant": "t"})),
    ] {
        admin.apply(&binding(user, role, scope)).await.unwrap();
    }
    let (alice, bob, dave, carol) = (
        mint_token(&admin, "alice", None).await,
        mint_token(&admin, "bob", None).await,
        mint_token(&admin, "dave", None).await,
        mint_token(&admin, "carol", None).await,
    );
    let claims = format!("{V1}/namespaces/p/claims");
    let action = |name: &str, what: &str| format!("{claims}/{name}/{what}");

    // A workload that needs the network tier: high-risk without any policy, one approver.
    let net = claim(
        "net",
        json!({}),
        Some(json!({"command": "/bin/true", "tiers": ["network"]})),
    );
    let (code, created) = call(&admin, &alice, Method::POST, &claims, net).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(phase(&created), "PendingApproval", "{created}");
    let approval = &created["status"]["approval"];
    assert_eq!(approval["required"], 1);
    assert_eq!(approval["requester"], "user:alice");
    assert!(
        approval["because"].to_string().contains("network"),
        "{approval}"
    );

    // A member may not approve at all; an admin may not approve their own claim.
    let (code, body) = call(
        &admin,
        &alice,
        Method::POST,
        &action("net", "approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let risky = claim("risky", json!({"risk": "high"}), None);
    let (code, created) = call(&admin, &bob, Method::POST, &claims, risky).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["status"]["approval"]["required"], 2,
        "the policy asks for two"
    );
    let (code, body) = call(
        &admin,
        &bob,
        Method::POST,
        &action("risky", "approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("may not approve"),
        "{body}"
    );

    // The scheduler does not see a claim waiting for approval.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let risky_now = admin.get_path(&format!("{claims}/risky")).await.unwrap();
    assert_eq!(phase(&risky_now), "PendingApproval", "{risky_now}");

    // Two distinct approvers; the same one twice is refused.
    let (code, body) = call(
        &admin,
        &dave,
        Method::POST,
        &action("risky", "approve"),
        json!({"comment": "looked at it"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(phase(&body), "PendingApproval", "one of two: {body}");
    let (code, body) = call(
        &admin,
        &dave,
        Method::POST,
        &action("risky", "approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("already"),
        "{body}"
    );
    let (code, body) = call(
        &admin,
        &carol,
        Method::POST,
        &action("risky", "approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(phase(&body), "Pending", "{body}");
    eventually(
        Duration::from_secs(20),
        "the approved claim is placed",
        || {
            let admin = admin.clone();
            let path = format!("{claims}/risky");
            async move {
                let c = admin.get_path(&path).await.ok()?;
                (phase(&c) == "Allocated").then_some(())
            }
        },
    )
    .await;

    // Approving what needs no approval, and refusing without a reason, are refused; a refusal
    // with a reason fails the claim for good.
    admin.apply(&claim("plain", json!({}), None)).await.unwrap();
    let (code, body) = call(
        &admin,
        &dave,
        Method::POST,
        &action("plain", "approve"),
        json!({}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = call(
        &admin,
        &dave,
        Method::POST,
        &action("net", "refuse"),
        json!({}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = call(
        &admin,
        &dave,
        Method::POST,
        &action("net", "refuse"),
        json!({"reason": "no host networking here"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(phase(&body), "Failed");
    assert_eq!(body["status"]["reason"], "Refused");

    // From the command line: the admin's own claim waits, and the admin may not approve it.
    admin
        .apply(&claim("mine", json!({"risk": "high"}), None))
        .await
        .unwrap();
    let listed = stdout(&server.cli(&["get", "claims", "-n", "p"]));
    assert!(listed.contains("PendingApproval"), "{listed}");
    let out = server.cli(&["approve", "mine", "-n", "p", "--comment", "mine"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("may not approve"), "{}", stderr(&out));
    let out = server.cli(&["refuse", "mine", "-n", "p", "--reason", "changed my mind"]);
    assert!(
        !out.status.success(),
        "refusing counts as deciding: not one's own"
    );

    // The trail: who approved and refused, and the refused attempts.
    let records = admin.get_path(&format!("{V1}/auditrecords")).await.unwrap();
    let items = records["items"].as_array().unwrap();
    let seen = |verb: &str, subject: &str, code: u64| {
        items.iter().any(|r| {
            r["entry"]["verb"] == verb
                && r["entry"]["subject"] == subject
                && r["entry"]["result"]["code"] == code
        })
    };
    assert!(seen("approve", "user:dave", 200));
    assert!(seen("approve", "user:carol", 200));
    assert!(seen("approve", "user:bob", 403), "self-approval is audited");
    assert!(seen("approve", "user:dave", 409), "a duplicate is audited");
    assert!(seen("refuse", "user:dave", 200));
}

#[tokio::test]
async fn policies_are_validated() {
    let server = TestServer::start().await;
    let admin = server.client();
    let (code, body) = admin
        .raw(
            Method::POST,
            &format!("{V1}/policies"),
            Some("application/json"),
            serde_json::to_vec(&json!({
                "apiVersion": "infraos.io/v1", "kind": "Policy", "metadata": {"name": "bad"},
                "spec": {"approval": {"approvers": 0}}
            }))
            .unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("spec.approval.approvers"),
        "{body}"
    );
}
