//! Hostile-tenant tests: the audit trail as a disk-filling primitive, and joins (issue 16,
//! findings 3, 4, 6 and 7), through a real server:
//! - a huge node name on the open join endpoint gets a small 4xx and a small audit record,
//!   recorded as `anonymous` from the caller's address, never as the node it named;
//! - a flood of forged joins gets 429s beyond `apiLimits.anonymousRate`, not a record each;
//! - a project member's 2 MB `metadata.name` gets a small 422 and a small audit record;
//! - a join token cannot take over a node name already held, unless minted for that name;
//! - the token's labels beat the agent's, and agents cannot set `infraos.io/` labels.

use std::time::Instant;

use infraos_api::agent_protocol::{JoinRequest, PROTOCOL_VERSION};
use infraos_api::kinds::AgentInfo;
use infraos_client::{Client, ClientConfig, Method};
use serde_json::{Value, json};

use crate::support::*;

const V1: &str = "/apis/infraos.io/v1";
/// What "small" means for an answer or an audit record that quotes a refused input: three
/// times `infraos_api::text::REASON_MAX` (a message, the causes, and their framing).
const SMALL: usize = 3 * infraos_api::text::REASON_MAX;

fn anonymous(server: &TestServer) -> Client {
    Client::new(&ClientConfig {
        token: None,
        identity: None,
        ..server.config.clone()
    })
    .unwrap()
}

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

/// A join request for `name` with a fresh key (its PEM is returned too, for rejoins).
fn join_request(token: &str, name: &str) -> (JoinRequest, String) {
    let (key_pem, csr) = infraos_agent::identity::new_key_and_csr(name).unwrap();
    let request = JoinRequest {
        token: token.to_string(),
        name: name.to_string(),
        csr,
        labels: Default::default(),
        agent: agent_info(),
    };
    (request, key_pem)
}

async fn post_join(client: &Client, body: Vec<u8>) -> (u16, Value) {
    client
        .raw(
            Method::POST,
            "/agent/v1/join",
            Some("application/json"),
            body,
            Some(""),
        )
        .await
        .unwrap()
}

async fn join(client: &Client, request: &JoinRequest) -> (u16, Value) {
    post_join(client, serde_json::to_vec(request).unwrap()).await
}

async fn join_token(admin: &Client, body: Value) -> String {
    let created: Value = admin
        .send_json(Method::POST, &format!("{V1}/jointokens"), &body)
        .await
        .unwrap();
    created["token"].as_str().unwrap().to_string()
}

async fn head_seq(admin: &Client) -> u64 {
    let list = admin
        .get_path(&format!("{V1}/auditrecords?limit=1"))
        .await
        .unwrap();
    list["metadata"]["headSeq"].as_u64().unwrap()
}

/// Every audit record after `after`, oldest first.
async fn records_after(admin: &Client, after: u64) -> Vec<Value> {
    let mut from = after + 1;
    let mut out = Vec::new();
    loop {
        let page = admin
            .get_path(&format!("{V1}/auditrecords?from={from}"))
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap().clone();
        out.extend(items);
        match page["metadata"]["next"].as_u64() {
            Some(next) => from = next,
            None => return out,
        }
    }
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).unwrap().len()
}

fn store_size(server: &TestServer) -> u64 {
    std::fs::metadata(server.data_dir().join("store.redb"))
        .unwrap()
        .len()
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_node_name_on_join_is_refused_small_and_recorded_small_as_anonymous() {
    let server = TestServer::start().await;
    let admin = server.client();
    let anon = anonymous(&server);
    let token = join_token(&admin, json!({"ttl": "1h"})).await;
    let before = head_seq(&admin).await;
    let store_before = store_size(&server);

    // Finding 3: a 2.5 MB name. The body cap of the open endpoint (64 KiB) refuses it unread.
    let (mut huge, _) = join_request(&token, "n1");
    huge.name = "a".repeat(2_500_000);
    let started = Instant::now();
    for _ in 0..5 {
        let (code, body) = join(&anon, &huge).await;
        assert_eq!(code, 413, "{}", message(&body));
        assert!(size(&body) < SMALL, "a {}-byte answer", size(&body));
    }
    // Under the cap, a 60 KB name reaches the name check: 422, small, whatever the token.
    let mut long = huge.clone();
    long.name = "b".repeat(60_000);
    for t in [token.as_str(), "iojoin_forged"] {
        long.token = t.to_string();
        let (code, body) = join(&anon, &long).await;
        assert_eq!(code, 422, "{}", message(&body));
        assert!(size(&body) < SMALL, "a {}-byte answer", size(&body));
        assert!(
            message(&body).contains("(60000 bytes)"),
            "{}",
            message(&body)
        );
    }
    // A name that is a real node's, with a forged token: refused, and not in its name.
    let (mut forged, _) = join_request("iojoin_forged", "n1");
    let (code, _) = join(&anon, &forged).await;
    assert_eq!(code, 401);
    forged.name = "n2".into();
    let (code, _) = join(&anon, &forged).await;
    assert_eq!(code, 401);
    // Within the address's burst (10), every refusal is a record: small, anonymous, from
    // the caller's address, naming what it asked for only as a request.
    let records = records_after(&admin, before).await;
    let joins: Vec<&Value> = records
        .iter()
        .filter(|r| r["entry"]["verb"] == "join")
        .collect();
    assert_eq!(joins.len(), 9, "{records:#?}");
    for r in &joins {
        let entry = &r["entry"];
        assert!(size(r) < SMALL, "a {}-byte audit record", size(r));
        assert_eq!(entry["subject"], "anonymous", "{entry}");
        assert!(
            entry["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{entry}"
        );
        assert!(
            entry["node"].is_null(),
            "refusals are about no node: {entry}"
        );
        assert!(entry["result"]["code"].as_u64().unwrap() >= 400, "{entry}");
    }
    let n1 = joins
        .iter()
        .find(|r| r["entry"]["object"]["name"] == "n1")
        .expect("the forged join as n1");
    let reason = n1["entry"]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("join as node \"n1\" requested") && reason.contains("not known"),
        "{reason}"
    );
    // Nothing was registered, and the store grew by kilobytes, not the 52 MB of before.
    assert!(admin.get_path(&format!("{V1}/nodes/n1")).await.is_err());
    let grown = store_size(&server).saturating_sub(store_before);
    println!(
        "store grew {grown} bytes for 5 × 2.5 MB and 2 × 60 KB names and 2 forged joins ({:?})",
        started.elapsed()
    );
    assert!(grown < 2 << 20, "the store grew {grown} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_joins_beyond_the_anonymous_rate_get_429_and_no_record() {
    let server = TestServer::start().await;
    let admin = server.client();
    let anon = anonymous(&server);
    let before = head_seq(&admin).await;
    let (request, _) = join_request("iojoin_forged", "victim");
    let body = serde_json::to_vec(&request).unwrap();
    let started = Instant::now();
    let codes: Vec<u16> = futures::future::join_all((0..500).map(|_| {
        let anon = anon.clone();
        let body = body.clone();
        async move { post_join(&anon, body).await.0 }
    }))
    .await;
    let elapsed = started.elapsed();
    let refused = codes.iter().filter(|c| **c == 401).count();
    let throttled = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(refused + throttled, 500, "{codes:?}");
    let records = records_after(&admin, before)
        .await
        .into_iter()
        .filter(|r| r["entry"]["verb"] == "join")
        .count();
    // anonymousRate 10: a burst of 10, then 10 a second.
    let bound = 10 + 10 * (elapsed.as_secs() as usize + 1);
    println!(
        "500 forged joins in {elapsed:?}: {refused} refused (401) and audited, {throttled} got 429; \
         {records} audit records (bound {bound})"
    );
    assert_eq!(records, refused, "one record per audited refusal");
    assert!(records <= bound, "{records} records in {elapsed:?}");
    assert!(throttled >= 500 - bound, "{throttled} 429s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_members_two_megabyte_name_gets_a_small_422_and_a_small_record() {
    let server = TestServer::start().await;
    let admin = server.client();
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
kind: RoleBinding
metadata: {name: alice-member}
spec:
  role: project-member
  scope: {project: p}
  subjects: [{kind: User, name: alice}]
"#,
    )
    .await;
    let alice = mint_token(&admin, "alice", None).await;
    let before = head_seq(&admin).await;
    let huge = "c".repeat(2 << 20);
    let claim = |name: &str, labels: Value| {
        serde_json::to_vec(&json!({
            "apiVersion": "infraos.io/v1", "kind": "Claim",
            "metadata": {"name": name, "namespace": "p", "labels": labels},
            "spec": {"requests": [{"class": "compute", "amount": {"cpu": "1"}}],
                     "lease": {"duration": "1m"}}
        }))
        .unwrap()
    };
    let path = format!("{V1}/namespaces/p/claims");
    // Finding 4: a 2 MB name, then a 2 MB label key and 1,000 bad label keys.
    let many: serde_json::Map<String, Value> = (0..1000)
        .map(|i| (format!("-bad{i}-{}", "x".repeat(1000)), json!("v")))
        .collect();
    for (what, body) in [
        ("a 2 MB name", claim(&huge, json!({}))),
        (
            "a 2 MB label key",
            claim("ok", json!({ huge.clone(): "v" })),
        ),
        ("1,000 bad label keys", claim("ok", Value::Object(many))),
    ] {
        let (code, answer) = admin
            .raw(
                Method::POST,
                &path,
                Some("application/json"),
                body,
                Some(&alice),
            )
            .await
            .unwrap();
        assert_eq!(code, 422, "{what}: {}", message(&answer));
        assert!(
            size(&answer) < SMALL,
            "{what}: a {}-byte answer",
            size(&answer)
        );
        println!("{what}: a {}-byte 422", size(&answer));
    }
    let records: Vec<Value> = records_after(&admin, before)
        .await
        .into_iter()
        .filter(|r| r["entry"]["subject"] == "user:alice")
        .collect();
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert_eq!(r["entry"]["result"]["code"], 422, "{}", r["entry"]);
        assert!(size(r) < SMALL, "a {}-byte audit record", size(r));
    }
    println!(
        "audit records of the three refusals: {:?} bytes",
        records.iter().map(size).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_takes_a_held_node_name_only_when_minted_for_it() {
    let server = TestServer::start().await;
    let admin = server.client();
    let anon = anonymous(&server);
    // Finding 6: an operator-declared node with the network tier.
    apply_yaml(
        &admin,
        "apiVersion: infraos.io/v1\nkind: Node\nmetadata: {name: declared, labels: {zone: a}}\n\
         spec: {tiers: [inventory, execute, network]}\n",
    )
    .await;
    let generic = join_token(&admin, json!({"ttl": "1h"})).await;
    let (request, _) = join_request(&generic, "declared");
    let (code, body) = join(&anon, &request).await;
    assert_eq!(code, 403, "{body}");
    assert!(message(&body).contains("--node declared"), "{body}");
    let node = admin
        .get_path(&format!("{V1}/nodes/declared"))
        .await
        .unwrap();
    assert!(
        node["metadata"]["annotations"].is_null(),
        "not bound to the joiner's key: {node}"
    );

    // A joined node: another key with a generic token is refused; its own key rejoins.
    let (first, _) = join_request(&generic, "joined");
    assert_eq!(join(&anon, &first).await.0, 201);
    let (intruder, _) = join_request(&generic, "joined");
    let (code, body) = join(&anon, &intruder).await;
    assert_eq!(code, 409, "{body}");
    assert!(message(&body).contains("another key"), "{body}");
    let (code, body) = join(&anon, &first).await;
    assert_eq!(code, 201, "the node's own key rejoins: {body}");

    // A token minted for a name may join only that name, and takes it over.
    let for_declared = join_token(
        &admin,
        json!({"ttl": "1h", "node": "declared", "tiers": ["inventory"]}),
    )
    .await;
    let (elsewhere, _) = join_request(&for_declared, "joined");
    let (code, body) = join(&anon, &elsewhere).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        message(&body).contains("minted for node \"declared\""),
        "{body}"
    );
    let (adopt, _) = join_request(&for_declared, "declared");
    let (code, body) = join(&anon, &adopt).await;
    assert_eq!(code, 201, "{body}");
    let node = admin
        .get_path(&format!("{V1}/nodes/declared"))
        .await
        .unwrap();
    assert_eq!(
        node["spec"]["tiers"],
        json!(["inventory"]),
        "the token's tiers: {node}"
    );
    assert_eq!(node["metadata"]["labels"]["zone"], "a", "{node}");
    // One use by default: it is spent.
    let (again, _) = join_request(&for_declared, "declared");
    let (code, body) = join(&anon, &again).await;
    assert_eq!(code, 401, "{body}");

    // Re-provisioning a joined node: a token minted for it re-keys it; the old key is out.
    let for_joined = join_token(&admin, json!({"ttl": "1h", "node": "joined"})).await;
    let (reinstalled, _) = join_request(&for_joined, "joined");
    assert_eq!(join(&anon, &reinstalled).await.0, 201);
    let mut old = first.clone();
    old.token = join_token(&admin, json!({"ttl": "1h"})).await;
    let (code, body) = join(&anon, &old).await;
    assert_eq!(
        code, 409,
        "the previous key no longer holds the name: {body}"
    );

    // The trail: refusals anonymous, successes as the node, with the token and how.
    let records = records_after(&admin, 0).await;
    let joins: Vec<&Value> = records
        .iter()
        .filter(|r| r["entry"]["verb"] == "join")
        .map(|r| &r["entry"])
        .collect();
    assert!(
        joins
            .iter()
            .filter(|e| e["result"]["code"].as_u64() != Some(201))
            .all(|e| e["subject"] == "anonymous")
    );
    assert!(joins.iter().any(|e| {
        e["subject"] == "node:declared"
            && e["result"]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("minted for it")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_labels_beat_agent_labels_and_agents_cannot_set_reserved_labels() {
    let server = TestServer::start().await;
    let admin = server.client();
    let anon = anonymous(&server);
    let token = join_token(
        &admin,
        json!({"ttl": "1h", "labels": {"zone": "quarantine"}, "tiers": ["inventory"]}),
    )
    .await;

    // Finding 7: reserved labels are refused, naming the label; nothing is registered.
    for key in ["infraos.io/node", "node.infraos.io/role"] {
        let (mut request, _) = join_request(&token, "edge-1");
        request.labels.insert(key.into(), "other".into());
        let (code, body) = join(&anon, &request).await;
        assert_eq!(code, 422, "{body}");
        assert!(message(&body).contains(key), "{body}");
        assert!(message(&body).contains("reserved"), "{body}");
    }
    assert!(admin.get_path(&format!("{V1}/nodes/edge-1")).await.is_err());

    // The token's labels win over the agent's; the agent's others are kept.
    let (mut request, _) = join_request(&token, "edge-1");
    request.labels.insert("zone".into(), "prod-east".into());
    request.labels.insert("rack".into(), "r12".into());
    let (code, body) = join(&anon, &request).await;
    assert_eq!(code, 201, "{body}");
    let node = admin.get_path(&format!("{V1}/nodes/edge-1")).await.unwrap();
    assert_eq!(node["metadata"]["labels"]["zone"], "quarantine", "{node}");
    assert_eq!(node["metadata"]["labels"]["rack"], "r12", "{node}");

    // A rejoin keeps what an administrator set since: labels and tiers, whatever the new
    // token or the agent say.
    admin
        .raw(
            Method::PATCH,
            &format!("{V1}/nodes/edge-1"),
            Some("application/merge-patch+json"),
            serde_json::to_vec(&json!({"metadata": {"labels": {"zone": "isolated"}}})).unwrap(),
            None,
        )
        .await
        .map(|(code, body)| assert_eq!(code, 200, "{body}"))
        .unwrap();
    let wide = join_token(
        &admin,
        json!({"ttl": "1h", "labels": {"zone": "prod-east"},
               "tiers": ["inventory", "execute", "network"]}),
    )
    .await;
    request.token = wide;
    let (code, body) = join(&anon, &request).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["tiers"], json!(["inventory"]), "{body}");
    let node = admin.get_path(&format!("{V1}/nodes/edge-1")).await.unwrap();
    assert_eq!(node["metadata"]["labels"]["zone"], "isolated", "{node}");
    assert_eq!(node["spec"]["tiers"], json!(["inventory"]), "{node}");
}
