//! Batch creates (`POST …/claims:batchCreate`) on a real server: many claims in one request
//! and one transaction, each admitted, authorized and audited as a single create is; a bad
//! item, a duplicate or an existing name refuses the whole batch, naming the item, and
//! writes nothing.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use infraos_client::{Client, Method};
use serde_json::{Value, json};
use support::*;

const BATCH: &str = "/apis/infraos.io/v1/namespaces/p/claims:batchCreate";

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

async fn post(c: &Client, token: Option<&str>, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let (code, _, body) = c
        .raw_with_headers(
            Method::POST,
            BATCH,
            &[("content-type", content_type.to_string())],
            body,
            token,
        )
        .await
        .unwrap();
    (code, body)
}

fn items(names: &[&str]) -> Vec<Value> {
    names.iter().map(|n| claim(n, "1", "1h")).collect()
}

async fn claim_names(c: &Client) -> Vec<String> {
    let (list, _) = c.list(kind("claims"), Some("p"), None).await.unwrap();
    let mut names: Vec<String> = list
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_batch_is_created_scheduled_and_audited_item_by_item() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    let created = c
        .create_batch(kind("claims"), Some("p"), &items(&["a", "b", "c"]))
        .await
        .unwrap();
    assert_eq!(created.len(), 3);
    let revisions: Vec<&str> = created
        .iter()
        .map(|o| o["metadata"]["resourceVersion"].as_str().unwrap())
        .collect();
    assert!(
        revisions.iter().all(|r| *r == revisions[0]),
        "one transaction: {revisions:?}"
    );
    for o in &created {
        assert!(!o["metadata"]["uid"].as_str().unwrap().is_empty());
        assert_eq!(phase(o), "Pending");
    }
    eventually(Duration::from_secs(20), "all three allocated", || {
        let c = c.clone();
        async move {
            let (list, _) = c.list(kind("claims"), Some("p"), None).await.ok()?;
            (list.iter().filter(|i| phase(i) == "Allocated").count() == 3).then_some(())
        }
    })
    .await;
    let page = c.audit_records(1, 10_000).await.unwrap();
    let mut audited: Vec<String> = page
        .items
        .iter()
        .map(|r| &r.entry)
        .filter(|e| e["verb"] == "create" && e["object"]["kind"] == "Claim")
        .filter_map(|e| e["object"]["name"].as_str().map(str::to_string))
        .collect();
    audited.sort();
    assert_eq!(audited, ["a", "b", "c"], "one audit record per claim");

    // YAML works too, with the optional list kind.
    let yaml = "kind: ClaimList\nitems:\n  - apiVersion: infraos.io/v1\n    kind: Claim\n    metadata: {name: y}\n    spec:\n      requests: [{class: compute, amount: {cpu: \"1\"}}]\n      lease: {duration: 1h}\n";
    let (code, body) = post(&c, None, "application/yaml", yaml.as_bytes().to_vec()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["kind"], "ClaimList");
    assert_eq!(body["items"][0]["metadata"]["name"], "y");

    // `Prefer: return=minimal` (what load generators send): names, uids and the revision.
    let body = serde_json::to_vec(&json!({"items": items(&["m1", "m2"])})).unwrap();
    let (code, headers, body) = c
        .raw_with_headers(
            Method::POST,
            BATCH,
            &[
                ("content-type", "application/json".to_string()),
                ("prefer", "respond-async, return=minimal".to_string()),
            ],
            body,
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let applied = headers.iter().find(|(k, _)| k == "preference-applied");
    assert_eq!(applied.map(|(_, v)| v.as_str()), Some("return=minimal"));
    let short: Vec<&Value> = body["items"].as_array().unwrap().iter().collect();
    assert_eq!(short.len(), 2);
    assert_eq!(short[0]["metadata"]["name"], "m1");
    assert!(!short[1]["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(
        short[0]["spec"].is_null(),
        "no object in a minimal answer: {body}"
    );
    assert_eq!(
        short[0]["metadata"]["resourceVersion"],
        body["metadata"]["resourceVersion"]
    );
    let (stored, _) = c.list(kind("claims"), Some("p"), None).await.unwrap();
    let m1 = stored
        .iter()
        .find(|o| o["metadata"]["name"] == "m1")
        .unwrap();
    assert_eq!(m1["metadata"]["uid"], short[0]["metadata"]["uid"]);
}

#[tokio::test]
async fn a_bad_batch_names_the_item_and_writes_nothing() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    c.create(kind("claims"), Some("p"), &claim("taken", "1", "1h"))
        .await
        .unwrap();
    let json_body = |items: Vec<Value>| serde_json::to_vec(&json!({ "items": items })).unwrap();
    let mut invalid = items(&["x0", "x1", "x2"]);
    invalid[1]["spec"]["requests"][0]["amount"]["cpu"] = json!("lots");
    let mut unknown_class = items(&["u0", "u1"]);
    unknown_class[1]["spec"]["priorityClassName"] = json!("nope");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("invalid field", json_body(invalid), 422, "items[1]"),
        (
            "unknown priority class",
            json_body(unknown_class),
            422,
            "items[1]",
        ),
        (
            "duplicate name",
            json_body(items(&["d", "e", "d"])),
            400,
            "items[2]: Claim \"d\" appears twice",
        ),
        (
            "existing name",
            json_body(items(&["f", "taken"])),
            409,
            "items[1]",
        ),
        (
            "wrong list kind",
            serde_json::to_vec(&json!({"kind": "NodeList", "items": items(&["g"])})).unwrap(),
            400,
            "is not \"ClaimList\"",
        ),
        (
            "no items",
            serde_json::to_vec(&json!({"items": []})).unwrap(),
            400,
            "items is empty",
        ),
        (
            "not a batch body",
            serde_json::to_vec(&claim("h", "1", "1h")).unwrap(),
            400,
            "batch create body",
        ),
        (
            "over the item limit",
            json_body(
                (0..1001)
                    .map(|i| claim(&format!("m{i}"), "1", "1h"))
                    .collect(),
            ),
            413,
            "at most 1000",
        ),
    ];
    for (what, body, want, says) in cases {
        let (code, answer) = post(&c, None, "application/json", body).await;
        assert_eq!(code, want, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{what}: {message}");
    }
    assert_eq!(
        claim_names(&c).await,
        ["taken"],
        "no refused batch wrote anything"
    );
    // The refusal is audited once, as a refused create.
    let page = c.audit_records(1, 10_000).await.unwrap();
    assert!(
        page.items
            .iter()
            .any(|r| r.entry["verb"] == "create" && r.entry["result"]["code"] == 409),
        "the refused batch is in the audit trail"
    );
}

#[tokio::test]
async fn batch_creates_need_create_on_claims_in_the_project() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, &small_cluster(8)).await;
    for (user, role) in [("mia", "project-member"), ("vic", "viewer")] {
        admin
            .create(
                kind("rolebindings"),
                None,
                &json!({
                    "apiVersion": "infraos.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": format!("{user}-{role}")},
                    "spec": {"role": role, "scope": {"project": "p"},
                             "subjects": [{"kind": "User", "name": user}]}
                }),
            )
            .await
            .unwrap();
    }
    let member = mint_token(&admin, "mia", None).await;
    let viewer = mint_token(&admin, "vic", None).await;
    let body = serde_json::to_vec(&json!({ "items": items(&["m1", "m2"]) })).unwrap();
    let (code, answer) = post(&admin, Some(&viewer), "application/json", body.clone()).await;
    assert_eq!(code, 403, "{answer}");
    assert!(claim_names(&admin).await.is_empty());
    let (code, answer) = post(&admin, Some(&member), "application/json", body).await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(claim_names(&admin).await, ["m1", "m2"]);
    // The path maps to RBAC only for POST on a collection.
    let (code, _, _) = admin
        .raw_with_headers(Method::GET, BATCH, &[], Vec::new(), Some(&member))
        .await
        .unwrap();
    assert_eq!(code, 404);
}
