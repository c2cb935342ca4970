//! Revoking a node on a real server: an agent (simulated over real mTLS: its own key, CSR and
//! certificate) heartbeats and holds an allocation; `infraos node revoke` makes its
//! certificate useless at once, refuses its joins, cordons it, and its claim moves back to the
//! queue once the lease has ended; `infraos node reinstate` lets it join again.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use infraos_api::agent_protocol::{CertificateResponse, JoinRequest, PROTOCOL_VERSION};
use infraos_api::kinds::AgentInfo;
use infraos_client::{Client, ClientConfig, ClientIdentity, Method};
use serde_json::json;
use support::*;

const V1: &str = "/apis/infraos.io/v1";

const CONFIG: &str = "heartbeatInterval: 200ms\nnodeGracePeriod: 1s\nleaseSkewMargin: 500ms\n";

fn agent_info() -> AgentInfo {
    AgentInfo {
        version: "test".into(),
        protocol_version: PROTOCOL_VERSION,
        drivers: vec!["process".into()],
        address: None,
        certificate_expires: None,
        fingerprints: Default::default(),
    }
}

async fn join_token(admin: &Client) -> String {
    let created: serde_json::Value = admin
        .send_json(
            Method::POST,
            &format!("{V1}/jointokens"),
            &json!({"ttl": "1h"}),
        )
        .await
        .unwrap();
    created["token"].as_str().unwrap().to_string()
}

/// Joins as `name` with `key_pem`/`csr`: the node's client, or the refusal.
async fn join(
    server: &TestServer,
    token: &str,
    name: &str,
    key_pem: &str,
    csr: &str,
) -> Result<Client, (u16, serde_json::Value)> {
    let anonymous = Client::new(&ClientConfig {
        token: None,
        identity: None,
        ..server.config.clone()
    })
    .unwrap();
    let request = JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        csr: csr.to_string(),
        labels: Default::default(),
        agent: agent_info(),
    };
    let (code, body) = anonymous
        .raw(
            Method::POST,
            "/agent/v1/join",
            Some("application/json"),
            serde_json::to_vec(&request).unwrap(),
            Some(""),
        )
        .await
        .unwrap();
    if code != 201 {
        return Err((code, body));
    }
    let answer: CertificateResponse = serde_json::from_value(body).unwrap();
    Ok(Client::new(&ClientConfig {
        server: server.config.server.clone(),
        ca_pem: Some(answer.ca.into_bytes()),
        token: None,
        identity: Some(ClientIdentity {
            cert_pem: answer.certificate.into_bytes(),
            key_pem: key_pem.as_bytes().to_vec(),
        }),
    })
    .unwrap())
}

async fn heartbeat(node: &Client) -> (u16, serde_json::Value) {
    node.raw(
        Method::POST,
        "/agent/v1/heartbeat",
        Some("application/json"),
        b"{}".to_vec(),
        None,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_cordoned_and_its_claims_move_and_it_can_be_reinstated() {
    let server = TestServer::start_with_config(CONFIG).await;
    let admin = server.client();
    let (key_pem, csr) = infraos_agent::identity::new_key_and_csr("n1").unwrap();
    let node = join(&server, &join_token(&admin).await, "n1", &key_pem, &csr)
        .await
        .unwrap_or_else(|e| panic!("join: {e:?}"));
    // The agent's heartbeats, every 200 ms, until the test ends.
    let beating = {
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let _ = heartbeat(&node).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    apply_yaml(
        &admin,
        r#"
apiVersion: infraos.io/v1
kind: Tenant
metadata: {name: t}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: p}
spec: {tenant: t}
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {name: compute}
spec:
  kind: counted
  dimensions: [{name: cpu}]
---
apiVersion: infraos.io/v1
kind: Resource
metadata: {name: n1-compute}
spec: {class: compute, node: n1, capacity: {cpu: "4"}}
"#,
    )
    .await;
    admin
        .apply(&json!({
            "apiVersion": "infraos.io/v1", "kind": "Claim",
            "metadata": {"name": "c1", "namespace": "p"},
            "spec": {"requests": [{"class": "compute", "amount": {"cpu": "1"}}], "lease": {"duration": "2s"}}
        }))
        .await
        .unwrap();
    let claim_path = format!("{V1}/namespaces/p/claims/c1");
    eventually(Duration::from_secs(20), "c1 allocated on n1", || {
        let admin = admin.clone();
        let path = claim_path.clone();
        async move {
            let c = admin.get_path(&path).await.ok()?;
            (phase(&c) == "Allocated").then_some(())
        }
    })
    .await;

    // Revoke: the certificate is refused at once, everywhere, with the reason.
    let out = server.cli(&["node", "revoke", "n1", "--reason", "key leaked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("revoked"), "{}", stdout(&out));
    let (code, body) = heartbeat(&node).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (code, _) = node
        .raw(
            Method::GET,
            &format!("{V1}/nodes/n1"),
            None,
            Vec::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 401, "the node API too");
    let n1 = admin.get_path(&format!("{V1}/nodes/n1")).await.unwrap();
    assert_eq!(n1["spec"]["unschedulable"], true, "cordoned: {n1}");

    // A join under its name is refused, whatever the token.
    let (code, body) = join(&server, &join_token(&admin).await, "n1", &key_pem, &csr)
        .await
        .map(|_| ())
        .expect_err("a revoked node cannot join");
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("reinstate"),
        "{body}"
    );

    // Its claim goes back to the queue once the lease has run out (never before).
    eventually(Duration::from_secs(30), "c1 requeued", || {
        let admin = admin.clone();
        let path = claim_path.clone();
        async move {
            let c = admin.get_path(&path).await.ok()?;
            (phase(&c) == "Pending").then_some(())
        }
    })
    .await;

    // The trail: who revoked, and the refused certificate.
    let records = admin.get_path(&format!("{V1}/auditrecords")).await.unwrap();
    let items = records["items"].as_array().unwrap();
    assert!(items.iter().any(|r| r["entry"]["verb"] == "revoke"
        && r["entry"]["node"] == "n1"
        && r["entry"]["subject"] == "user:admin"));
    assert!(
        items
            .iter()
            .any(|r| r["entry"]["subject"] == "node:n1" && r["entry"]["result"]["code"] == 401)
    );

    // Reinstated: the same agent joins again, heartbeats, and the node is uncordoned.
    let out = server.cli(&["node", "reinstate", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let node = join(&server, &join_token(&admin).await, "n1", &key_pem, &csr)
        .await
        .unwrap_or_else(|e| panic!("rejoin: {e:?}"));
    assert_eq!(heartbeat(&node).await.0, 200);
    let n1 = admin.get_path(&format!("{V1}/nodes/n1")).await.unwrap();
    assert_eq!(n1["spec"]["unschedulable"], false, "{n1}");
    let out = server.cli(&["node", "reinstate", "n1"]);
    assert!(!out.status.success(), "nothing to reinstate");
    beating.abort();
}
