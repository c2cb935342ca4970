//! The HTTPS API of a real server process: CRUD semantics, optimistic concurrency, the status
//! subresource, lists, watches, discovery, and bad input of every kind.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use infraos_client::Method;
use serde_json::json;
use support::*;

const TENANTS: &str = "/apis/infraos.io/v1/tenants";

/// A bad request: what it is, method, path, content type, body, the expected status code, text
/// the message must contain, and the field the Status must name.
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    &'a str,
    Vec<u8>,
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn crud_with_optimistic_concurrency_and_status() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    let nodes = infraos_api::object::kind_by_plural("nodes").unwrap();

    let node = c.get(nodes, None, "n1").await.unwrap();
    let rv: u64 = node["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(!node["metadata"]["uid"].as_str().unwrap().is_empty());
    assert_eq!(node["metadata"]["generation"], 1);

    // Stale resourceVersion: 409, nothing changes.
    let mut stale = node.clone();
    stale["metadata"]["resourceVersion"] = (rv - 1).to_string().into();
    stale["spec"]["unschedulable"] = true.into();
    let err = c.replace(nodes, None, "n1", &stale).await.unwrap_err();
    assert_eq!(err.code(), Some(409), "{err}");
    assert!(err.to_string().contains("has been modified"), "{err}");
    assert_eq!(
        c.get(nodes, None, "n1").await.unwrap()["spec"],
        json!({"unschedulable": false})
    );

    // Current resourceVersion: accepted, generation bumps with the spec.
    let mut fresh = node.clone();
    fresh["spec"]["unschedulable"] = true.into();
    let updated = c.replace(nodes, None, "n1", &fresh).await.unwrap();
    let rv2: u64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv);
    assert_eq!(updated["metadata"]["generation"], 2);

    // The main resource ignores status; /status ignores everything else.
    let mut with_status = updated.clone();
    with_status["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    let after = c.replace(nodes, None, "n1", &with_status).await.unwrap();
    assert!(
        after.get("status").is_none(),
        "PUT on the object does not write status"
    );
    let mut status_only = after.clone();
    status_only["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    status_only["spec"]["unschedulable"] = false.into();
    let after = c
        .replace_status(nodes, None, "n1", &status_only)
        .await
        .unwrap();
    assert_eq!(after["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        after["spec"]["unschedulable"], true,
        "PUT on /status does not write spec"
    );

    // JSON merge patch.
    let patched = c
        .merge_patch(
            nodes,
            None,
            "n1",
            &json!({"metadata": {"labels": {"rack": "r9"}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"zone": "a", "rack": "r9"})
    );

    // Delete, then it is gone.
    c.delete(nodes, None, "n1").await.unwrap();
    assert!(c.get(nodes, None, "n1").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_writes_nothing() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(8)).await;
    let claims = "/apis/infraos.io/v1/namespaces/p/claims";
    let good = claim("ok", "1", "1h");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let big = vec![b' '; 4 * 1024 * 1024];
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            claims,
            "application/json",
            b"{\"kind\": ".to_vec(),
            400,
            "not valid JSON",
            None,
        ),
        (
            "malformed YAML",
            Method::POST,
            claims,
            "application/yaml",
            b"kind: [unclosed".to_vec(),
            400,
            "not valid YAML",
            None,
        ),
        (
            "not an object",
            Method::POST,
            claims,
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "must be a JSON object",
            None,
        ),
        (
            "unknown kind",
            Method::POST,
            "/apis/infraos.io/v1/namespaces/p/pods",
            "application/json",
            with(&|_| {}),
            404,
            "does not serve",
            None,
        ),
        (
            "cluster path for a namespaced kind",
            Method::POST,
            "/apis/infraos.io/v1/claims",
            "application/json",
            with(&|_| {}),
            404,
            "namespaced",
            None,
        ),
        (
            "kind mismatch",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["kind"] = "Resource".into()),
            422,
            "must be Claim",
            Some("kind"),
        ),
        (
            "unknown field",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["priorty"] = 5.into()),
            422,
            "unknown field `priorty`",
            Some("spec.priorty"),
        ),
        (
            "bad quantity",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["requests"][0]["amount"]["cpu"] = "4Gx".into()),
            422,
            "quantity \"4Gx\" is not valid",
            Some("spec.requests[0].amount.cpu"),
        ),
        (
            "bad label selector",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["selector"] = "zone in (a".into()),
            422,
            "selector",
            Some("spec.selector"),
        ),
        (
            "CEL that does not compile",
            Method::POST,
            claims,
            "application/json",
            with(&|v| {
                v["spec"]["requests"] =
                    json!([{"class": "gpu", "count": 1, "selector": "item.attributes.model =="}])
            }),
            422,
            "does not compile",
            Some("spec.requests[0].selector"),
        ),
        (
            "CEL that does not type-check",
            Method::POST,
            claims,
            "application/json",
            with(
                &|v| v["spec"]["requests"] = json!([{"class": "gpu", "count": 1, "selector": "item.attributes.modle == 'H100'"}]),
            ),
            422,
            "type-check",
            Some("spec.requests[0].selector"),
        ),
        (
            "CEL comparing string with int",
            Method::POST,
            claims,
            "application/json",
            with(
                &|v| v["spec"]["requests"] = json!([{"class": "gpu", "count": 1, "selector": "item.attributes.memoryGiB > 'big'"}]),
            ),
            422,
            "type-check",
            Some("spec.requests[0].selector"),
        ),
        (
            "unknown class",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["requests"][0]["class"] = "fpga".into()),
            422,
            "ResourceClass \"fpga\" not found",
            Some("spec.requests[0].class"),
        ),
        (
            "unknown dimension",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["requests"][0]["amount"] = json!({"disk": "1"})),
            422,
            "no dimension",
            Some("spec.requests[0].amount.disk"),
        ),
        (
            "count on a counted class",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["requests"][0] = json!({"class": "compute", "count": 1})),
            422,
            "counted",
            Some("spec.requests[0].count"),
        ),
        (
            "lease too short",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["lease"]["duration"] = "10ms".into()),
            422,
            "between",
            Some("spec.lease.duration"),
        ),
        (
            "bad duration",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["spec"]["lease"]["duration"] = "soon".into()),
            422,
            "duration \"soon\"",
            Some("spec.lease.duration"),
        ),
        (
            "bad name",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["metadata"]["name"] = "Bad_Name".into()),
            422,
            "lowercase",
            Some("metadata.name"),
        ),
        (
            "resourceVersion on create",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["metadata"]["resourceVersion"] = "5".into()),
            422,
            "must not be set",
            Some("metadata.resourceVersion"),
        ),
        (
            "namespace mismatch",
            Method::POST,
            claims,
            "application/json",
            with(&|v| v["metadata"]["namespace"] = "other".into()),
            400,
            "does not match",
            None,
        ),
        (
            "missing project",
            Method::POST,
            "/apis/infraos.io/v1/namespaces/nope/claims",
            "application/json",
            with(&|v| v["metadata"]["namespace"] = "nope".into()),
            404,
            "Project \"nope\" not found",
            None,
        ),
        (
            "allocations are control-plane only",
            Method::POST,
            "/apis/infraos.io/v1/namespaces/p/allocations",
            "application/json",
            b"{}".to_vec(),
            405,
            "control plane",
            None,
        ),
        (
            "unsupported content type",
            Method::POST,
            claims,
            "text/plain",
            with(&|_| {}),
            415,
            "not supported",
            None,
        ),
        (
            "claim status is the control plane's",
            Method::PUT,
            "/apis/infraos.io/v1/namespaces/p/claims/ok/status",
            "application/json",
            with(&|v| v["status"] = json!({"phase": "Allocated"})),
            405,
            "control plane",
            None,
        ),
        (
            "oversized body",
            Method::POST,
            claims,
            "application/json",
            big,
            413,
            "exceeds",
            None,
        ),
        (
            "patch of a missing object",
            Method::PATCH,
            "/apis/infraos.io/v1/namespaces/p/claims/ghost",
            "application/merge-patch+json",
            b"{}".to_vec(),
            404,
            "not found",
            None,
        ),
        (
            "bad label selector in a list",
            Method::GET,
            "/apis/infraos.io/v1/namespaces/p/claims?labelSelector=a%20in%20(",
            "application/json",
            vec![],
            400,
            "labelSelector",
            None,
        ),
        (
            "bad continue token",
            Method::GET,
            "/apis/infraos.io/v1/namespaces/p/claims?continue=%21%21",
            "application/json",
            vec![],
            400,
            "continue",
            None,
        ),
        (
            "bad resourceVersion",
            Method::GET,
            "/apis/infraos.io/v1/namespaces/p/claims?watch=true&resourceVersion=abc",
            "application/json",
            vec![],
            400,
            "resourceVersion",
            None,
        ),
    ];
    let audit_before = c.audit_records(1, 1).await.unwrap().metadata.head_seq;
    for (what, method, path, ct, body, code, text, field) in &cases {
        let (got, status) = c
            .raw(method.clone(), path, Some(ct), body.clone(), None)
            .await
            .unwrap();
        assert_eq!(got, *code, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}: a Status body");
        let message = status["message"].as_str().unwrap_or("");
        assert!(
            message.contains(text),
            "{what}: message {message:?} lacks {text:?}"
        );
        if let Some(field) = field {
            let fields: Vec<&str> = status["details"]["causes"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x["field"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                fields.contains(field),
                "{what}: causes {fields:?} lack {field}"
            );
        }
    }
    // Authentication.
    let (code, _) = c
        .raw(Method::GET, claims, None, vec![], Some("not-a-token"))
        .await
        .unwrap();
    assert_eq!(code, 401);
    let anonymous = infraos_client::Client::new(&infraos_client::ClientConfig {
        token: None,
        identity: None,
        ..server.config.clone()
    })
    .unwrap();
    let (code, status) = anonymous
        .raw(Method::GET, claims, None, vec![], None)
        .await
        .unwrap();
    assert_eq!(code, 401);
    assert!(status["message"].as_str().unwrap().contains("bearer token"));

    // Nothing was written, the refusals were audited, and the server is fine.
    let claim_kind = infraos_api::object::kind_by_plural("claims").unwrap();
    let (items, _) = c.list(claim_kind, Some("p"), None).await.unwrap();
    assert!(items.is_empty(), "no claim was created: {items:?}");
    let audit_after = c.audit_records(1, 1).await.unwrap().metadata.head_seq;
    assert!(
        audit_after > audit_before,
        "refused writes leave audit records"
    );
    let (code, _) = c
        .raw(Method::GET, "/healthz", None, vec![], None)
        .await
        .unwrap();
    assert_eq!(code, 200, "no panic took the server down");
}

#[tokio::test]
async fn lists_page_and_filter_by_label() {
    let server = TestServer::start().await;
    let c = server.client();
    let tenants = infraos_api::object::kind_by_plural("tenants").unwrap();
    for i in 0..25 {
        let tier = if i % 5 == 0 { "gold" } else { "silver" };
        c.create(
            tenants,
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "Tenant",
            "metadata": {"name": format!("t{i:02}"), "labels": {"tier": tier}}}),
        )
        .await
        .unwrap();
    }
    let (code, page) = c
        .raw(
            Method::GET,
            &format!("{TENANTS}?limit=10"),
            None,
            vec![],
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(page["kind"], "TenantList");
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    let mut names = Vec::new();
    let mut page = page;
    loop {
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        let Some(token) = page["metadata"]["continue"].as_str() else {
            break;
        };
        page = c
            .get_path(&format!("{TENANTS}?limit=10&continue={token}"))
            .await
            .unwrap();
    }
    let want: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(names, want, "pages cover every object once, in order");
    let (gold, _) = c.list(tenants, None, Some("tier=gold")).await.unwrap();
    assert_eq!(gold.len(), 5);
    let (not_gold, _) = c
        .list(tenants, None, Some("tier notin (gold)"))
        .await
        .unwrap();
    assert_eq!(not_gold.len(), 20);
}

#[tokio::test]
async fn watches_stream_changes_in_order_and_gone_after_restart() {
    let mut server = TestServer::start().await;
    let c = server.client();
    let tenants = infraos_api::object::kind_by_plural("tenants").unwrap();
    let (_, rv) = c.list(tenants, None, None).await.unwrap();
    let mut all = c.watch(tenants, None, None, Some(rv)).await.unwrap();
    let mut gold = c
        .watch(tenants, None, Some("tier=gold"), Some(rv))
        .await
        .unwrap();
    let t = |tier: &str| json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "w", "labels": {"tier": tier}}});
    c.create(tenants, None, &t("silver")).await.unwrap();
    c.merge_patch(
        tenants,
        None,
        "w",
        &json!({"metadata": {"labels": {"tier": "gold"}}}),
    )
    .await
    .unwrap();
    c.merge_patch(
        tenants,
        None,
        "w",
        &json!({"metadata": {"labels": {"tier": "bronze"}}}),
    )
    .await
    .unwrap();
    c.delete(tenants, None, "w").await.unwrap();
    let next = async |s: &mut infraos_client::WatchEvents| loop {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("event")
            .expect("open")
            .expect("ok");
        if e.type_ != "BOOKMARK" {
            return e;
        }
    };
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next(&mut all).await;
        seen.push((
            e.type_.clone(),
            e.object["metadata"]["labels"]["tier"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED".to_string(), "silver".to_string()),
            ("MODIFIED".to_string(), "gold".to_string()),
            ("MODIFIED".to_string(), "bronze".to_string()),
            ("DELETED".to_string(), "bronze".to_string()),
        ]
    );
    // Through a selector, entering and leaving it look like ADDED and DELETED.
    let entered = next(&mut gold).await;
    let left = next(&mut gold).await;
    assert_eq!(
        (entered.type_.as_str(), left.type_.as_str()),
        ("ADDED", "DELETED")
    );

    // Without a resourceVersion, a watch starts with the current objects.
    c.create(tenants, None, &t("gold")).await.unwrap();
    let mut fresh = c.watch(tenants, None, None, None).await.unwrap();
    let first = next(&mut fresh).await;
    assert_eq!(
        (
            first.type_.as_str(),
            first.object["metadata"]["name"].as_str()
        ),
        ("ADDED", Some("w"))
    );

    // After a restart the history is gone: an old revision is 410 Gone, and the client relists.
    server.stop();
    server.spawn().await;
    let c = server.client();
    let (code, status) = c
        .raw(
            Method::GET,
            &format!("{TENANTS}?watch=true&resourceVersion=1"),
            None,
            vec![],
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 410, "{status}");
    assert_eq!(status["reason"], "Expired");
}

#[tokio::test]
async fn watch_bookmarks_carry_the_last_revision() {
    let server = TestServer::start_with_config("watchBookmarkInterval: 1s\n").await;
    let c = server.client();
    let tenants = infraos_api::object::kind_by_plural("tenants").unwrap();
    let (_, rv) = c.list(tenants, None, None).await.unwrap();
    // The selector hides the new tenant: only a bookmark tells the watcher the revision moved.
    let mut w = c
        .watch(tenants, None, Some("team=red"), Some(rv))
        .await
        .unwrap();
    let created = c
        .create(
            tenants,
            None,
            &json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "b"}}),
        )
        .await
        .unwrap();
    let bookmark = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bookmark.type_, "BOOKMARK");
    assert_eq!(
        bookmark.object["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    // Nothing moved since: no further bookmark, however long the watch stays idle.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), w.next()).await;
    assert!(quiet.is_err(), "unexpected line: {quiet:?}");
}

#[tokio::test]
async fn discovery_openapi_and_health() {
    let server = TestServer::start().await;
    let c = server.client();
    for path in [
        "/healthz",
        "/readyz",
        "/version",
        "/apis",
        "/apis/infraos.io/v1",
    ] {
        let (code, _) = c
            .raw(Method::GET, path, None, vec![], Some("wrong"))
            .await
            .unwrap();
        assert_eq!(code, 200, "{path} needs no token");
    }
    let (code, _) = c
        .raw(Method::GET, "/openapi/v3", None, vec![], Some("wrong"))
        .await
        .unwrap();
    assert_eq!(code, 401, "the OpenAPI document needs a token");
    let doc = c.get_path("/openapi/v3").await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/apis/infraos.io/v1/namespaces/{namespace}/claims"]["post"].is_object());
    assert!(
        doc["paths"]["/apis/infraos.io/v1/namespaces/{namespace}/claims/{name}/renew"]["post"]
            .is_object()
    );
    let claim_schema = &doc["components"]["schemas"]["Claim"];
    assert_eq!(claim_schema["properties"]["kind"]["const"], "Claim");
    assert!(doc["components"]["schemas"]["ClaimSpec"].is_object());
    let resources = c.get_path("/apis/infraos.io/v1").await.unwrap();
    let names: Vec<&str> = resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for kind in [
        "resourceclasses",
        "resources",
        "claims",
        "allocations",
        "nodes",
        "tenants",
        "projects",
        "events",
    ] {
        assert!(names.contains(&kind), "{kind} is discoverable");
    }
}

#[tokio::test]
async fn in_use_objects_are_not_deleted_and_immutable_fields_stay() {
    let server = TestServer::start().await;
    let c = server.client();
    apply_yaml(&c, &small_cluster(4)).await;
    let kinds = |p: &str| infraos_api::object::kind_by_plural(p).unwrap();
    let err = c.delete(kinds("tenants"), None, "t").await.unwrap_err();
    assert!(
        err.is_conflict() && err.to_string().contains("still owns project"),
        "{err}"
    );
    let err = c
        .delete(kinds("resourceclasses"), None, "compute")
        .await
        .unwrap_err();
    assert!(
        err.is_conflict() && err.to_string().contains("in use"),
        "{err}"
    );
    c.create(kinds("claims"), Some("p"), &claim("c1", "1", "1h"))
        .await
        .unwrap();
    let err = c.delete(kinds("projects"), None, "p").await.unwrap_err();
    assert!(
        err.is_conflict() && err.to_string().contains("not empty"),
        "{err}"
    );
    let err = c
        .merge_patch(
            kinds("claims"),
            Some("p"),
            "c1",
            &json!({"spec": {"lease": {"duration": "2h"}}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(422), "{err}");
    assert!(err.to_string().contains("immutable"), "{err}");
    let err = c
        .merge_patch(
            kinds("projects"),
            None,
            "p",
            &json!({"spec": {"tenant": "x"}}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}
