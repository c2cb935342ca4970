//! Hostile-tenant tests: identity. A node reaches only the Resources whose stored `spec.node`
//! is its own, never another's by a shared name prefix; what it claims to hold is bounded;
//! `explain` names no other tenant's claims; a node's refused requests are audited
//! (issue 16, findings 8, 10 and 11).

use std::collections::BTreeMap;
use std::time::Duration;

use infraos_api::agent_protocol::{CertificateResponse, JoinRequest, PROTOCOL_VERSION};
use infraos_api::kinds::{AgentInfo, Inventory};
use infraos_client::{Client, ClientConfig, ClientIdentity, Method};
use serde_json::json;

use crate::support::*;

const V1: &str = "/apis/infraos.io/v1";

/// A node's client: joins `name` with a fresh key and a new join token, as an agent would.
async fn join(server: &TestServer, name: &str) -> Client {
    let out = server.cli(&["join-token", "create"]);
    assert!(out.status.success(), "join-token create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let (key_pem, csr) = infraos_agent::identity::new_key_and_csr(name).expect("csr");
    let request = JoinRequest {
        token,
        name: name.to_string(),
        csr,
        labels: BTreeMap::new(),
        agent: agent_info(),
    };
    let anonymous = Client::new(&ClientConfig {
        token: None,
        ..server.config.clone()
    })
    .expect("client");
    let answer: CertificateResponse = anonymous
        .send_json(Method::POST, "/agent/v1/join", &request)
        .await
        .expect("join");
    Client::new(&ClientConfig {
        server: server.config.server.clone(),
        ca_pem: Some(answer.ca.into_bytes()),
        token: None,
        identity: Some(ClientIdentity {
            cert_pem: answer.certificate.into_bytes(),
            key_pem: key_pem.into_bytes(),
        }),
    })
    .expect("node client")
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        version: "hostile".into(),
        protocol_version: PROTOCOL_VERSION,
        ..AgentInfo::default()
    }
}

/// A node report: an inventory of `cores` CPUs and `memory_gib` GiB, and `resources`.
fn report(cores: u32, memory_gib: u64, resources: serde_json::Value) -> serde_json::Value {
    let mut inventory = Inventory::default();
    inventory.cpu.cores = cores;
    inventory.memory.total_bytes = memory_gib << 30;
    json!({"agent": agent_info(), "inventory": inventory, "resources": resources})
}

fn compute(name: &str, node: &str, cpu: &str) -> serde_json::Value {
    json!({"apiVersion": "infraos.io/v1", "kind": "Resource", "metadata": {"name": name},
           "spec": {"class": "compute", "node": node, "capacity": {"cpu": cpu, "memory": "1Gi"}}})
}

/// PUTs a node report; the status code and body.
async fn send(node: &Client, body: &serde_json::Value) -> (u16, serde_json::Value) {
    node.raw(
        Method::PUT,
        "/agent/v1/status",
        Some("application/json"),
        serde_json::to_vec(body).unwrap(),
        None,
    )
    .await
    .expect("report")
}

async fn resource(admin: &Client, name: &str) -> Option<serde_json::Value> {
    admin.get_path(&format!("{V1}/resources/{name}")).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_touch_another_nodes_resource_that_shares_its_name_prefix() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, &small_cluster(8)).await;
    let victim = join(&server, "evil-node").await;
    let evil = join(&server, "evil").await;
    let (code, body) = send(
        &victim,
        &report(
            4,
            8,
            json!([compute("evil-node-compute", "evil-node", "4")]),
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let before = resource(&admin, "evil-node-compute").await.expect("stored");

    let attempts = [
        // The finding: rewrite it as its own, with another node and capacity.
        json!([compute("evil-node-compute", "evil", "64")]),
        // Name it on the victim's node.
        json!([compute("evil-node-compute", "evil-node", "64")]),
        // Squat a name of the victim's that does not exist yet.
        json!([compute("evil-node-gpu", "evil", "1")]),
    ];
    for attempt in attempts {
        let (code, body) = send(&evil, &report(64, 64, attempt.clone())).await;
        assert_eq!(code, 403, "{attempt}: {body}");
    }
    let after = resource(&admin, "evil-node-compute").await.expect("stored");
    assert_eq!(
        after["spec"], before["spec"],
        "spec.node and capacity unchanged"
    );
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert!(resource(&admin, "evil-node-gpu").await.is_none());

    // Its own resources it publishes and withdraws; withdrawing never reaches the victim's,
    // although both are under the prefix `evil-`.
    let (code, body) = send(
        &evil,
        &report(4, 8, json!([compute("evil-compute", "evil", "2")])),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(resource(&admin, "evil-compute").await.is_some());
    let (code, body) = send(&evil, &report(4, 8, json!([]))).await;
    assert_eq!(code, 200, "{body}");
    assert!(resource(&admin, "evil-compute").await.is_none());
    let after = resource(&admin, "evil-node-compute")
        .await
        .expect("still there");
    assert_eq!(after["spec"]["node"], "evil-node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_capacity_is_cut_to_the_limits_and_the_node_says_so() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, &small_cluster(8)).await;
    let evil = join(&server, "evil").await;
    let condition = |node: &serde_json::Value| {
        node["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "CapacityLimited").cloned())
    };

    // A million CPUs, and an inventory that agrees: the server's default limit still holds.
    let absurd = report(
        1_000_000,
        1 << 20,
        json!([compute("evil-compute", "evil", "1000000")]),
    );
    let (code, body) = send(&evil, &absurd).await;
    assert_eq!(code, 200, "{body}");
    let published = resource(&admin, "evil-compute").await.expect("published");
    assert_eq!(published["spec"]["capacity"]["cpu"], "1024", "{published}");
    let node = admin.get_path(&format!("{V1}/nodes/evil")).await.unwrap();
    let limited = condition(&node).expect("CapacityLimited");
    assert_eq!(limited["status"], "True");
    let message = limited["message"].as_str().unwrap_or_default();
    assert!(message.contains("nodeCapacityLimits"), "{message}");

    // The administrator pins the node to what it knows it has.
    admin
        .merge_patch(
            infraos_api::object::kind_by_any_name("Node").unwrap(),
            None,
            "evil",
            &json!({"spec": {"capacityLimits": {"compute": {"cpu": "8"}}}}),
        )
        .await
        .expect("set capacityLimits");
    let (code, body) = send(
        &evil,
        &report(
            1_000_000,
            1 << 20,
            json!([compute("evil-compute", "evil", "999999")]),
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let published = resource(&admin, "evil-compute").await.expect("published");
    assert_eq!(published["spec"]["capacity"]["cpu"], "8");
    let node = admin.get_path(&format!("{V1}/nodes/evil")).await.unwrap();
    let message = condition(&node).expect("CapacityLimited")["message"].to_string();
    assert!(message.contains("spec.capacityLimits"), "{message}");

    // More than its own inventory reports: cut to the inventory.
    let (code, body) = send(
        &evil,
        &report(2, 8, json!([compute("evil-compute", "evil", "6")])),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let published = resource(&admin, "evil-compute").await.expect("published");
    assert_eq!(published["spec"]["capacity"]["cpu"], "2");

    // An honest report clears the condition.
    let (code, body) = send(
        &evil,
        &report(4, 8, json!([compute("evil-compute", "evil", "3")])),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let node = admin.get_path(&format!("{V1}/nodes/evil")).await.unwrap();
    assert!(condition(&node).is_none(), "{node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_refused_requests_are_audited() {
    let server = TestServer::start().await;
    let admin = server.client();
    let evil = join(&server, "evil").await;
    let _other = join(&server, "other").await;
    let head = admin.audit_records(1, 1).await.unwrap().metadata.head_seq;
    let refused = evil
        .get_path(&format!("{V1}/nodes/other"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(403), "{refused}");
    let claims = evil.get_path(&format!("{V1}/claims")).await.unwrap_err();
    assert_eq!(claims.code(), Some(403), "{claims}");
    let page = admin.audit_records(head + 1, 100).await.unwrap();
    let refusals: Vec<&serde_json::Value> = page
        .items
        .iter()
        .map(|r| &r.entry)
        .filter(|e| e["subject"] == "node:evil" && e["result"]["code"] == 403)
        .collect();
    assert!(
        refusals.iter().any(|e| e["object"]["kind"] == "Node"
            && e["object"]["name"] == "other"
            && e["verb"] == "get"),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .any(|e| e["object"]["kind"] == "Claim" && e["verb"] == "list"),
        "{refusals:?}"
    );
}

const TWO_TENANTS: &str = r#"
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
  dimensions: [{name: cpu}, {name: memory}]
---
apiVersion: infraos.io/v1
kind: Node
metadata: {name: n1}
spec: {}
---
apiVersion: infraos.io/v1
kind: Tenant
metadata: {name: other}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: theirs}
spec: {tenant: other}
---
apiVersion: infraos.io/v1
kind: PriorityClass
metadata: {name: first}
spec: {value: 1000, preemptionPolicy: Never}
"#;

/// One scheduling batch places another tenant's claim and then the member's: the member's
/// decision assumed the other's allocation. `explain` as the member counts it, never names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_as_a_project_member_never_names_another_tenants_claims() {
    let server = TestServer::start().await;
    let admin = server.client();
    // No capacity yet: both claims wait, and are decided together when it comes.
    apply_yaml(&admin, TWO_TENANTS).await;
    admin
        .apply(
            &json!({"apiVersion": "infraos.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": "mia-p"},
                        "spec": {"role": "project-member", "scope": {"project": "p"},
                                 "subjects": [{"kind": "User", "name": "mia"}]}}),
        )
        .await
        .unwrap();
    let mia = mint_token(&admin, "mia", None).await;
    let mut theirs = claim("their-secret-claim", "1", "1h");
    theirs["metadata"]["namespace"] = "theirs".into();
    theirs["spec"]["priorityClassName"] = "first".into();
    admin.apply(&theirs).await.unwrap();
    admin.apply(&claim("mine", "1", "1h")).await.unwrap();
    for (ns, name) in [("theirs", "their-secret-claim"), ("p", "mine")] {
        eventually(Duration::from_secs(20), "both claims wait", || {
            let admin = admin.clone();
            async move {
                let c = admin
                    .get_path(&format!("{V1}/namespaces/{ns}/claims/{name}"))
                    .await
                    .ok()?;
                c.pointer("/status/unschedulable").map(|_| ())
            }
        })
        .await;
    }
    apply_yaml(
        &admin,
        "apiVersion: infraos.io/v1\nkind: Resource\nmetadata: {name: n1-compute}\nspec: {class: compute, node: n1, capacity: {cpu: \"8\", memory: 64Gi}}\n",
    )
    .await;
    let explain = format!("{V1}/namespaces/p/claims/mine/explain");
    let as_admin = eventually(Duration::from_secs(30), "mine placed after theirs", || {
        let admin = admin.clone();
        let explain = explain.clone();
        async move {
            let replay = admin.get_path(&explain).await.ok()?;
            (replay["recorded"]["outcome"] == "placed").then_some(replay)
        }
    })
    .await;
    assert_eq!(
        as_admin["assumed"],
        json!(["theirs/their-secret-claim"]),
        "the administrator sees what was assumed: {as_admin}"
    );
    let (code, as_mia) = admin
        .raw(Method::GET, &explain, None, Vec::new(), Some(&mia))
        .await
        .unwrap();
    assert_eq!(code, 200, "{as_mia}");
    assert!(
        !as_mia.to_string().contains("their-secret-claim")
            && !as_mia.to_string().contains("theirs/"),
        "{as_mia}"
    );
    assert_eq!(as_mia["assumed"], json!([]));
    assert_eq!(as_mia["assumedElsewhere"], 1, "{as_mia}");
    // The other tenant's claim itself stays out of reach.
    let (code, _) = admin
        .raw(
            Method::GET,
            &format!("{V1}/namespaces/theirs/claims/their-secret-claim/explain"),
            None,
            Vec::new(),
            Some(&mia),
        )
        .await
        .unwrap();
    assert_eq!(code, 403);
}
