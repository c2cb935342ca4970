//! RBAC through the real HTTP API: every built-in role, bound at its scope, against verbs ×
//! kinds × scopes (its own project or tenant, another one, the cluster); filtered lists and
//! watches; API tokens (TTL, revocation); roles and bindings that are refused.

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
kind: Tenant
metadata: {name: t1}
---
apiVersion: infraos.io/v1
kind: Tenant
metadata: {name: t2}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: p1}
spec: {tenant: t1}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: p2}
spec: {tenant: t1}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: q1}
spec: {tenant: t2}
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {name: compute}
spec:
  kind: counted
  dimensions: [{name: cpu}]
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: p1-quota}
spec: {project: p1, limits: {compute: {cpu: "100"}}}
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: q1-quota}
spec: {project: q1, limits: {compute: {cpu: "100"}}}
---
apiVersion: infraos.io/v1
kind: Quota
metadata: {name: t1-quota}
spec: {tenant: t1, limits: {compute: {cpu: "1000"}}}
"#;

fn claim_in(project: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": project},
        "spec": {"requests": [{"class": "compute", "amount": {"cpu": "1"}}], "lease": {"duration": "1h"}}
    })
}

fn binding(name: &str, role: &str, scope: serde_json::Value, user: &str) -> serde_json::Value {
    json!({
        "apiVersion": "infraos.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name},
        "spec": {"role": role, "scope": scope, "subjects": [{"kind": "User", "name": user}]}
    })
}

/// The users of the table, each bound to one built-in role at one scope, and one bound to
/// nothing.
const USERS: [(&str, &str, &str); 7] = [
    ("ca", "cluster-admin", "cluster"),
    ("ta", "tenant-admin", "t1"),
    ("pa", "project-admin", "p1"),
    ("pm", "project-member", "p1"),
    ("vw", "viewer", "t1"),
    ("au", "auditor", "cluster"),
    ("no", "", ""),
];

async fn world(server: &TestServer) -> Vec<String> {
    let admin = server.client();
    apply_yaml(&admin, WORLD).await;
    for (p, c) in [("p1", "c1"), ("p2", "c2"), ("q1", "d1")] {
        admin.apply(&claim_in(p, c)).await.unwrap();
    }
    let mut tokens = Vec::new();
    for (user, role, at) in USERS {
        if !role.is_empty() {
            let scope = match at {
                "cluster" => json!({}),
                t if t.starts_with('t') => json!({"tenant": t}),
                p => json!({"project": p}),
            };
            admin
                .apply(&binding(&format!("{user}-{role}"), role, scope, user))
                .await
                .unwrap();
        }
        tokens.push(mint_token(&admin, user, None).await);
    }
    tokens
}

/// One row: what is tried, and whether each user of [`USERS`] may (Y) or may not (N), in
/// that order. "May" means the answer is anything but 403.
struct Row {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    expect: &'static str,
}

fn row(
    what: &'static str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    expect: &'static str,
) -> Row {
    Row {
        what,
        method,
        path: path.to_string(),
        body,
        expect,
    }
}

fn table() -> Vec<Row> {
    let ns = |p: &str, rest: &str| format!("{V1}/namespaces/{p}/{rest}");
    let cl = |rest: &str| format!("{V1}/{rest}");
    let get = Method::GET;
    let post = Method::POST;
    let patch = Method::PATCH;
    let del = Method::DELETE;
    let empty = Some(json!({}));
    vec![
        //                                                                ca ta pa pm vw au no
        row(
            "get claim, own project",
            get.clone(),
            &ns("p1", "claims/c1"),
            None,
            "YYYYYNN",
        ),
        row(
            "get claim, other tenant",
            get.clone(),
            &ns("q1", "claims/d1"),
            None,
            "YNNNNNN",
        ),
        row(
            "get claim, sibling project",
            get.clone(),
            &ns("p2", "claims/c2"),
            None,
            "YYNNYNN",
        ),
        row(
            "list claims, own project",
            get.clone(),
            &ns("p1", "claims"),
            None,
            "YYYYYNN",
        ),
        row(
            "list claims, other tenant",
            get.clone(),
            &ns("q1", "claims"),
            None,
            "YNNNNNN",
        ),
        row(
            "watch claims, own project",
            get.clone(),
            &ns("p1", "claims?watch=true&timeoutSeconds=1"),
            None,
            "YYYYYNN",
        ),
        row(
            "create claim, own project",
            post.clone(),
            &ns("p1", "claims"),
            Some(claim_in("p1", "new")),
            "YYYYNNN",
        ),
        row(
            "create claim, other tenant",
            post.clone(),
            &ns("q1", "claims"),
            Some(claim_in("q1", "new")),
            "YNNNNNN",
        ),
        row(
            "patch claim, own project",
            patch.clone(),
            &ns("p1", "claims/c1"),
            empty.clone(),
            "YYYYNNN",
        ),
        row(
            "delete claim, own project",
            del.clone(),
            &ns("p1", "claims/absent"),
            None,
            "YYYYNNN",
        ),
        row(
            "delete claim, other tenant",
            del.clone(),
            &ns("q1", "claims/absent"),
            None,
            "YNNNNNN",
        ),
        row(
            "renew claim, own project",
            post.clone(),
            &ns("p1", "claims/c1/renew"),
            empty.clone(),
            "YYYYNNN",
        ),
        row(
            "release claim, other tenant",
            post.clone(),
            &ns("q1", "claims/d1/release"),
            empty.clone(),
            "YNNNNNN",
        ),
        row(
            "claim log, own project",
            get.clone(),
            &ns("p1", "claims/c1/log"),
            None,
            "YYYYNNN",
        ),
        row(
            "claim log, other tenant",
            get.clone(),
            &ns("q1", "claims/d1/log"),
            None,
            "YNNNNNN",
        ),
        row(
            "explain claim, other tenant",
            get.clone(),
            &ns("q1", "claims/d1/explain"),
            None,
            "YNNNNNN",
        ),
        row(
            "explain claim, own project",
            get.clone(),
            &ns("p1", "claims/c1/explain"),
            None,
            "YYYYYNN",
        ),
        row(
            "list allocations, own project",
            get.clone(),
            &ns("p1", "allocations"),
            None,
            "YYYYYNN",
        ),
        row(
            "list events, other tenant",
            get.clone(),
            &ns("q1", "events"),
            None,
            "YNNNNNN",
        ),
        row(
            "get project, own",
            get.clone(),
            &cl("projects/p1"),
            None,
            "YYYYYNN",
        ),
        row(
            "get project, other tenant",
            get.clone(),
            &cl("projects/q1"),
            None,
            "YNNNNNN",
        ),
        row(
            "patch project, own",
            patch.clone(),
            &cl("projects/p1"),
            empty.clone(),
            "YYNNNNN",
        ),
        row(
            "create project, own tenant",
            post.clone(),
            &cl("projects"),
            Some(
                json!({"apiVersion": "infraos.io/v1", "kind": "Project", "metadata": {"name": "p3"}, "spec": {"tenant": "t1"}}),
            ),
            "YYNNNNN",
        ),
        row(
            "create project, other tenant",
            post.clone(),
            &cl("projects"),
            Some(
                json!({"apiVersion": "infraos.io/v1", "kind": "Project", "metadata": {"name": "q3"}, "spec": {"tenant": "t2"}}),
            ),
            "YNNNNNN",
        ),
        row(
            "delete project, other tenant",
            del.clone(),
            &cl("projects/q1"),
            None,
            "YNNNNNN",
        ),
        row(
            "get tenant, own",
            get.clone(),
            &cl("tenants/t1"),
            None,
            "YYNNYNN",
        ),
        row(
            "get tenant, other",
            get.clone(),
            &cl("tenants/t2"),
            None,
            "YNNNNNN",
        ),
        row(
            "patch tenant, own",
            patch.clone(),
            &cl("tenants/t1"),
            empty.clone(),
            "YNNNNNN",
        ),
        row(
            "create tenant",
            post.clone(),
            &cl("tenants"),
            Some(
                json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "t9"}}),
            ),
            "YNNNNNN",
        ),
        row(
            "get project quota, own",
            get.clone(),
            &cl("quotas/p1-quota"),
            None,
            "YYYYYNN",
        ),
        row(
            "patch project quota, own",
            patch.clone(),
            &cl("quotas/p1-quota"),
            empty.clone(),
            "YYNNNNN",
        ),
        row(
            "patch project quota, other",
            patch.clone(),
            &cl("quotas/q1-quota"),
            empty.clone(),
            "YNNNNNN",
        ),
        row(
            "get tenant quota, own",
            get.clone(),
            &cl("quotas/t1-quota"),
            None,
            "YYNNYNN",
        ),
        row(
            "patch tenant quota, own",
            patch.clone(),
            &cl("quotas/t1-quota"),
            empty.clone(),
            "YNNNNNN",
        ),
        row(
            "bind project-member, own project",
            post.clone(),
            &cl("rolebindings"),
            Some(binding(
                "x-pm-p1",
                "project-member",
                json!({"project": "p1"}),
                "x",
            )),
            "YYYNNNN",
        ),
        row(
            "bind project-member, other tenant",
            post.clone(),
            &cl("rolebindings"),
            Some(binding(
                "x-pm-q1",
                "project-member",
                json!({"project": "q1"}),
                "x",
            )),
            "YNNNNNN",
        ),
        row(
            "bind cluster-admin, own project",
            post.clone(),
            &cl("rolebindings"),
            Some(binding(
                "x-ca-p1",
                "cluster-admin",
                json!({"project": "p1"}),
                "x",
            )),
            "YNNNNNN",
        ),
        row(
            "bind auditor, cluster",
            post.clone(),
            &cl("rolebindings"),
            Some(binding("x-au", "auditor", json!({}), "x")),
            "YNNNNNN",
        ),
        row("get node", get.clone(), &cl("nodes/n1"), None, "YNNNNNN"),
        row("list nodes", get.clone(), &cl("nodes"), None, "YNNNNNN"),
        row(
            "list resource classes",
            get.clone(),
            &cl("resourceclasses"),
            None,
            "YYYYYYY",
        ),
        row(
            "create resource class",
            post.clone(),
            &cl("resourceclasses"),
            Some(
                json!({"apiVersion": "infraos.io/v1", "kind": "ResourceClass", "metadata": {"name": "x"}, "spec": {"kind": "counted", "dimensions": [{"name": "n"}]}}),
            ),
            "YNNNNNN",
        ),
        row("list roles", get.clone(), &cl("roles"), None, "YYYYYYY"),
        row(
            "create role",
            post.clone(),
            &cl("roles"),
            Some(
                json!({"apiVersion": "infraos.io/v1", "kind": "Role", "metadata": {"name": "r"}, "spec": {"rules": [{"verbs": ["get"], "kinds": ["Claim"]}]}}),
            ),
            "YNNNNNN",
        ),
        row(
            "list audit records",
            get.clone(),
            &cl("auditrecords?limit=1"),
            None,
            "YNNNNYN",
        ),
        row("list tokens", get.clone(), &cl("tokens"), None, "YNNNNNN"),
        row(
            "create token",
            post.clone(),
            &cl("tokens"),
            Some(json!({"subject": "mallory"})),
            "YNNNNNN",
        ),
        row(
            "list join tokens",
            get.clone(),
            &cl("jointokens"),
            None,
            "YNNNNNN",
        ),
        row(
            "list claims, all projects",
            get.clone(),
            &cl("claims"),
            None,
            "YYYYYNN",
        ),
        row(
            "list projects",
            get.clone(),
            &cl("projects"),
            None,
            "YYYYYNN",
        ),
        row("list tenants", get.clone(), &cl("tenants"), None, "YYNNYNN"),
        row(
            "agent API as a user",
            post.clone(),
            "/agent/v1/heartbeat",
            empty.clone(),
            "NNNNNNN",
        ),
    ]
}

#[tokio::test]
async fn every_builtin_role_against_verbs_kinds_and_scopes() {
    let server = TestServer::start().await;
    let tokens = world(&server).await;
    let c = server.client();
    let mut failures = Vec::new();
    for r in table() {
        for (i, (user, role, _)) in USERS.iter().enumerate() {
            let body = r
                .body
                .as_ref()
                .map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default();
            let ct = if r.method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            let (code, answer) = c
                .raw(r.method.clone(), &r.path, Some(ct), body, Some(&tokens[i]))
                .await
                .unwrap();
            let may = code != 403;
            let expected = r.expect.as_bytes()[i] == b'Y';
            if may != expected {
                failures.push(format!(
                    "{} as {user} ({role}): got {code} {}, expected {}",
                    r.what,
                    answer["message"].as_str().unwrap_or_default(),
                    if expected { "allowed" } else { "403" }
                ));
            }
            if code == 403 {
                let message = answer["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!("user:{user}")),
                    "a 403 names the caller: {message}"
                );
            }
            // Undo what a create did, so the next user tries the same thing afresh.
            if r.method == Method::POST && code == 201 {
                let name = answer["metadata"]["name"].as_str().unwrap_or_default();
                let ns = answer["metadata"]["namespace"].as_str();
                let plural = r.path.rsplit('/').next().unwrap();
                let path = match ns {
                    Some(ns) => format!("{V1}/namespaces/{ns}/{plural}/{name}"),
                    None if plural == "tokens" => {
                        format!("{V1}/tokens/{}", answer["id"].as_str().unwrap())
                    }
                    None => format!("{V1}/{plural}/{name}"),
                };
                let mut outcome = (0, serde_json::Value::Null);
                for _ in 0..10 {
                    // A controller may be writing the object too: 409, try again.
                    outcome = c
                        .raw(Method::DELETE, &path, None, Vec::new(), None)
                        .await
                        .unwrap();
                    if outcome.0 != 409 {
                        break;
                    }
                }
                let (code, body) = outcome;
                assert!(code < 300, "cleaning up {path}: {code} {body}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Refusals are audited, with the caller and the reason.
    let records = c.get_path(&format!("{V1}/auditrecords")).await.unwrap();
    let refused = records["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["entry"]["result"]["code"] == 403 && r["entry"]["subject"] == "user:no")
        .count();
    assert!(
        refused >= 40,
        "user:no's refusals are in the audit chain ({refused})"
    );
}

fn names(list: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn lists_and_watches_show_only_what_the_caller_may_see() {
    let server = TestServer::start().await;
    let tokens = world(&server).await;
    let c = server.client();
    let as_user = |i: usize| {
        let c = c.clone();
        let token = tokens[i].clone();
        move |path: String| {
            let c = c.clone();
            let token = token.clone();
            async move {
                let (code, body) = c
                    .raw(Method::GET, &path, None, Vec::new(), Some(&token))
                    .await
                    .unwrap();
                assert_eq!(code, 200, "{path}: {body}");
                body
            }
        }
    };
    let (ca, ta, pm, vw) = (as_user(0), as_user(1), as_user(3), as_user(4));
    assert_eq!(names(&ca(format!("{V1}/claims")).await), ["c1", "c2", "d1"]);
    assert_eq!(names(&ta(format!("{V1}/claims")).await), ["c1", "c2"]);
    assert_eq!(names(&pm(format!("{V1}/claims")).await), ["c1"]);
    assert_eq!(names(&vw(format!("{V1}/claims")).await), ["c1", "c2"]);
    assert_eq!(names(&ta(format!("{V1}/projects")).await), ["p1", "p2"]);
    assert_eq!(names(&pm(format!("{V1}/projects")).await), ["p1"]);
    assert_eq!(names(&ta(format!("{V1}/tenants")).await), ["t1"]);
    assert_eq!(
        names(&ta(format!("{V1}/quotas")).await),
        ["p1-quota", "t1-quota"]
    );
    assert_eq!(names(&pm(format!("{V1}/quotas")).await), ["p1-quota"]);
    let bindings = names(&ta(format!("{V1}/rolebindings")).await);
    assert!(
        bindings
            .iter()
            .all(|b| !b.starts_with("ca-") && !b.starts_with("au-")),
        "a tenant admin sees no cluster-wide bindings: {bindings:?}"
    );
    assert!(bindings.contains(&"pm-project-member".to_string()));

    // A path the authorizer cannot name is closed to all but administrators.
    let odd = format!("{V1}/namespaces/p1/claims/c1/secrets");
    let (code, body) = c
        .raw(Method::GET, &odd, None, Vec::new(), Some(&tokens[3]))
        .await
        .unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(!body.to_string().contains("subresource"), "{body}");
    let (code, body) = c
        .raw(Method::GET, &odd, None, Vec::new(), None)
        .await
        .unwrap();
    assert_eq!(code, 404);
    assert!(
        body.to_string().contains("subresource"),
        "the router explains to an admin: {body}"
    );

    // A watch across projects: the member hears of its project's claims only.
    let text = reqwest_text(
        &server,
        &format!("{V1}/claims?watch=true&timeoutSeconds=2"),
        &tokens[3],
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let admin = server.client();
            admin.apply(&claim_in("q1", "d2")).await.unwrap();
            admin.apply(&claim_in("p1", "c3")).await.unwrap();
        },
    )
    .await;
    assert!(text.contains("\"c1\"") && text.contains("\"c3\""), "{text}");
    assert!(
        !text.contains("\"d1\"") && !text.contains("\"d2\"") && !text.contains("\"c2\""),
        "{text}"
    );
}

/// Runs a watch as text while `meanwhile` makes changes.
async fn reqwest_text(
    server: &TestServer,
    path: &str,
    token: &str,
    meanwhile: impl std::future::Future<Output = ()>,
) -> String {
    let mut config = server.config.clone();
    config.token = Some(token.to_string());
    let client = Client::new(&config).unwrap();
    let stream = client.get_stream(path);
    let (stream, ()) = tokio::join!(stream, meanwhile);
    use futures::StreamExt;
    let chunks: Vec<_> = stream.unwrap().collect().await;
    chunks
        .into_iter()
        .filter_map(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

#[tokio::test]
async fn tokens_expire_are_revoked_and_never_stored_or_audited_in_clear() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, WORLD).await;
    admin
        .apply(&binding(
            "eve-pm",
            "project-member",
            json!({"project": "p1"}),
            "eve",
        ))
        .await
        .unwrap();
    let short = mint_token(&admin, "eve", Some("1s")).await;
    let long = mint_token(&admin, "eve", None).await;
    let claims = format!("{V1}/namespaces/p1/claims");
    let try_with = |t: String| {
        let c = admin.clone();
        let claims = claims.clone();
        async move {
            c.raw(Method::GET, &claims, None, Vec::new(), Some(&t))
                .await
                .unwrap()
        }
    };
    assert_eq!(try_with(short.clone()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, body) = try_with(short.clone()).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(try_with(long.clone()).await.0, 200);

    // `token list` shows ids and subjects, never secrets; `token revoke --subject` ends both.
    let list = stdout(&server.cli(&["token", "list"]));
    assert!(list.contains("eve") && !list.contains(&long), "{list}");
    let out = server.cli(&["token", "revoke", "--subject", "eve"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = try_with(long.clone()).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown or revoked"),
        "{body}"
    );

    // A garbage token, and no token: 401 with a reason.
    assert_eq!(try_with("ios_nonsense".into()).await.0, 401);
    let (code, body) = admin
        .raw(Method::GET, &claims, None, Vec::new(), Some(""))
        .await
        .unwrap();
    assert_eq!(code, 401, "{body}");

    // The CLI mints tokens too; its output is the token, which then works.
    let out = server.cli(&["token", "create", "--subject", "eve", "--ttl", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let minted = stdout(&out).trim().to_string();
    assert_eq!(try_with(minted.clone()).await.0, 200);
    let out = server.cli(&["token", "create", "--subject", "system:evil"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("subject"), "{}", stderr(&out));

    // Neither tokens nor their hashes' secrets appear in the audit chain; refusals do.
    let records = admin.get_path(&format!("{V1}/auditrecords")).await.unwrap();
    let text = records.to_string();
    for t in [&short, &long, &minted] {
        assert!(
            !text.contains(t.as_str()),
            "a token leaked into the audit chain"
        );
    }
    let refused_sign_ins = records["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["entry"]["verb"] == "authenticate" && r["entry"]["result"]["code"] == 401)
        .count();
    assert!(
        refused_sign_ins >= 4,
        "refused sign-ins are audited ({refused_sign_ins})"
    );
}

#[tokio::test]
async fn bad_roles_and_bindings_are_refused_with_the_field_at_fault() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, WORLD).await;
    let post = |path: &str, body: serde_json::Value| {
        let c = admin.clone();
        let path = format!("{V1}/{path}");
        async move {
            c.raw(
                Method::POST,
                &path,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
                None,
            )
            .await
            .unwrap()
        }
    };
    let role = |rules: serde_json::Value| json!({"apiVersion": "infraos.io/v1", "kind": "Role", "metadata": {"name": "r1"}, "spec": {"rules": rules}});
    let cases = [
        (
            role(json!([{"verbs": ["get"], "kinds": ["Gadget"]}])),
            "spec.rules[0].kinds[0]",
        ),
        (
            role(json!([{"verbs": ["launch"], "kinds": ["Claim"]}])),
            "spec.rules[0].verbs[0]",
        ),
        (role(json!([])), "spec.rules"),
    ];
    for (body, field) in cases {
        let (code, answer) = post("roles", body).await;
        assert_eq!(code, 422, "{answer}");
        assert!(answer.to_string().contains(field), "{field}: {answer}");
    }
    let (code, answer) = post(
        "roles",
        json!({"apiVersion": "infraos.io/v1", "kind": "Role", "metadata": {"name": "viewer"}, "spec": {"rules": [{"verbs": ["get"], "kinds": ["Claim"]}]}}),
    )
    .await;
    assert_eq!(code, 422, "a built-in role's name is taken: {answer}");
    for (b, field) in [
        (binding("b1", "no-such-role", json!({}), "x"), "spec.role"),
        (
            binding("b2", "viewer", json!({"project": "nowhere"}), "x"),
            "spec.scope.project",
        ),
        (
            binding(
                "b3",
                "viewer",
                json!({"tenant": "t2", "project": "p1"}),
                "x",
            ),
            "spec.scope.tenant",
        ),
    ] {
        let (code, answer) = post("rolebindings", b).await;
        assert_eq!(code, 422, "{answer}");
        assert!(answer.to_string().contains(field), "{field}: {answer}");
    }

    // A custom role, bound, works at once (no waiting for a watch) and only as written.
    let (code, answer) = post(
        "roles",
        json!({"apiVersion": "infraos.io/v1", "kind": "Role", "metadata": {"name": "claim-reader"},
               "spec": {"rules": [{"verbs": ["get"], "kinds": ["claims"], "names": ["c1"]}]}}),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    admin.apply(&claim_in("p1", "c1")).await.unwrap();
    admin.apply(&claim_in("p1", "c2")).await.unwrap();
    let (code, answer) = post(
        "rolebindings",
        binding("r-p1", "claim-reader", json!({"project": "p1"}), "rita"),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    let rita = mint_token(&admin, "rita", None).await;
    let get = |name: &str| {
        let c = admin.clone();
        let path = format!("{V1}/namespaces/p1/claims/{name}");
        let t = rita.clone();
        async move {
            c.raw(Method::GET, &path, None, Vec::new(), Some(&t))
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(get("c1").await, 200);
    assert_eq!(get("c2").await, 403);
    // Deleting the binding takes the right away at once.
    let (code, _) = admin
        .raw(
            Method::DELETE,
            &format!("{V1}/rolebindings/r-p1"),
            None,
            Vec::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(get("c1").await, 403);
}

// ---- scope lifecycle (issue 16, finding 5) ---------------------------------------------------

/// Every audit entry so far, oldest first.
async fn audit_entries(admin: &Client) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = admin.audit_records(from, 1000).await.unwrap();
        out.extend(page.items.into_iter().map(|r| r.entry));
        match page.metadata.next {
            Some(next) => from = next,
            None => return out,
        }
    }
}

/// `GET`, `DELETE` or `POST` as a user; the status code and body.
async fn as_token(
    admin: &Client,
    token: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    admin
        .raw(
            method,
            path,
            bytes.as_ref().map(|_| "application/json"),
            bytes.unwrap_or_default(),
            Some(token),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_deleted_projects_bindings_go_with_it_and_grant_nothing_in_a_new_one_of_its_name() {
    let server = TestServer::start().await;
    let tokens = world(&server).await;
    let admin = server.client();
    let ta = &tokens[1]; // tenant-admin of t1
    // The tenant admin makes a project, binds itself in it, and deletes the project.
    let project = json!({"apiVersion": "infraos.io/v1", "kind": "Project",
                         "metadata": {"name": "reused"}, "spec": {"tenant": "t1"}});
    let (code, created) = as_token(
        &admin,
        ta,
        Method::POST,
        &format!("{V1}/projects"),
        Some(project),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let b = binding(
        "ta-reused",
        "project-admin",
        json!({"project": "reused"}),
        "ta",
    );
    let (code, bound) = as_token(
        &admin,
        ta,
        Method::POST,
        &format!("{V1}/rolebindings"),
        Some(b),
    )
    .await;
    assert_eq!(code, 201, "{bound}");
    assert_eq!(
        bound["spec"]["scope"]["uid"], created["metadata"]["uid"],
        "the binding records the project it was made for"
    );
    // A quota it sets there would limit the next project of the name: it goes too.
    let quota = json!({"apiVersion": "infraos.io/v1", "kind": "Quota",
                       "metadata": {"name": "reused-tiny"},
                       "spec": {"project": "reused", "limits": {"compute": {"cpu": "1m"}}}});
    let (code, body) = as_token(
        &admin,
        ta,
        Method::POST,
        &format!("{V1}/quotas"),
        Some(quota),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = as_token(
        &admin,
        ta,
        Method::DELETE,
        &format!("{V1}/projects/reused"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let gone = admin
        .get_path(&format!("{V1}/rolebindings/ta-reused"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(404), "the binding went with its project");
    let gone = admin
        .get_path(&format!("{V1}/quotas/reused-tiny"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(404), "the quota went with its project");
    let entries = audit_entries(&admin).await;
    assert!(
        entries.iter().any(|e| e["verb"] == "delete"
            && e["object"]["kind"] == "RoleBinding"
            && e["object"]["name"] == "ta-reused"
            && e["result"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("ScopeDeleted"))),
        "the cascade is audited"
    );

    // Another tenant gets a project of the same name, with a claim in it.
    apply_yaml(
        &admin,
        "apiVersion: infraos.io/v1\nkind: Project\nmetadata: {name: reused}\nspec: {tenant: t2}\n",
    )
    .await;
    admin.apply(&claim_in("reused", "secret")).await.unwrap();
    let claims = format!("{V1}/namespaces/reused/claims");
    for (method, path, body) in [
        (Method::GET, claims.clone(), None),
        (Method::GET, format!("{claims}/secret"), None),
        (Method::DELETE, format!("{claims}/secret"), None),
        (
            Method::POST,
            format!("{V1}/rolebindings"),
            Some(binding(
                "ta-again",
                "project-member",
                json!({"project": "reused"}),
                "ta",
            )),
        ),
    ] {
        let (code, body) = as_token(&admin, ta, method.clone(), &path, body).await;
        assert_eq!(code, 403, "{method} {path}: {body}");
    }
    let listed = as_token(&admin, ta, Method::GET, &format!("{V1}/claims"), None).await;
    assert!(!listed.1.to_string().contains("secret"), "{}", listed.1);
}

#[tokio::test]
async fn a_deleted_tenants_bindings_go_with_it() {
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(
        &admin,
        "apiVersion: infraos.io/v1\nkind: Tenant\nmetadata: {name: gone}\n",
    )
    .await;
    admin
        .apply(&binding(
            "ada-gone",
            "tenant-admin",
            json!({"tenant": "gone"}),
            "ada",
        ))
        .await
        .unwrap();
    let ada = mint_token(&admin, "ada", None).await;
    let tenant = format!("{V1}/tenants/gone");
    assert_eq!(
        as_token(&admin, &ada, Method::GET, &tenant, None).await.0,
        200
    );
    admin
        .raw(Method::DELETE, &tenant, None, Vec::new(), None)
        .await
        .unwrap();
    assert_eq!(
        admin
            .get_path(&format!("{V1}/rolebindings/ada-gone"))
            .await
            .unwrap_err()
            .code(),
        Some(404)
    );
    // A new tenant of that name: ada is nobody there.
    apply_yaml(
        &admin,
        "apiVersion: infraos.io/v1\nkind: Tenant\nmetadata: {name: gone}\n---\napiVersion: infraos.io/v1\nkind: Project\nmetadata: {name: gp}\nspec: {tenant: gone}\n",
    )
    .await;
    assert_eq!(
        as_token(&admin, &ada, Method::GET, &tenant, None).await.0,
        403
    );
    let claims = format!("{V1}/namespaces/gp/claims");
    assert_eq!(
        as_token(&admin, &ada, Method::GET, &claims, None).await.0,
        403
    );
}

/// Rewrites one stored object in the embedded store's file (the server is stopped): how a
/// binding stored by an older server, or left behind, looks.
fn rewrite_stored(store: &std::path::Path, key: &str, change: impl Fn(&mut serde_json::Value)) {
    const KV: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
    let db = redb::Database::open(store).expect("open store file");
    let tx = db.begin_write().expect("write");
    {
        use redb::ReadableTable;
        let mut kv = tx.open_table(KV).expect("kv");
        let raw = kv.get(key).expect("get").expect("stored").value().to_vec();
        let (header, body) = raw.split_at(24);
        let mut value: serde_json::Value = serde_json::from_slice(body).expect("json");
        change(&mut value);
        let mut out = header.to_vec();
        out.extend_from_slice(&serde_json::to_vec(&value).expect("encode"));
        kv.insert(key, out.as_slice()).expect("insert");
    }
    tx.commit().expect("commit");
}

/// Bindings stored without a uid (by servers before it was recorded) keep working for the
/// project they were made for, are given the uid when next written, and one older than its
/// project (made for an earlier project of the name) or naming another uid grants nothing.
#[tokio::test]
async fn bindings_without_a_uid_are_migrated_and_stale_ones_grant_nothing() {
    let mut server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, WORLD).await;
    admin.apply(&claim_in("p1", "c1")).await.unwrap();
    for user in ["carol", "dave", "erin"] {
        admin
            .apply(&binding(
                &format!("{user}-p1"),
                "project-member",
                json!({"project": "p1"}),
                user,
            ))
            .await
            .unwrap();
    }
    let tokens: Vec<String> =
        futures::future::join_all(["carol", "dave", "erin"].map(|u| mint_token(&admin, u, None)))
            .await;
    let project = admin.get_path(&format!("{V1}/projects/p1")).await.unwrap();
    let created = project["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    server.stop();
    let store = server.data_dir().join("store.redb");
    rewrite_stored(&store, "/registry/rolebindings/carol-p1", |b| {
        b["spec"]["scope"].as_object_mut().unwrap().remove("uid");
    });
    rewrite_stored(&store, "/registry/rolebindings/dave-p1", |b| {
        b["spec"]["scope"].as_object_mut().unwrap().remove("uid");
        // Made a year before p1 was: for an earlier project named p1.
        let year = created[..4].parse::<i32>().unwrap();
        b["metadata"]["creationTimestamp"] = format!("{}{}", year - 1, &created[4..]).into();
    });
    rewrite_stored(&store, "/registry/rolebindings/erin-p1", |b| {
        b["spec"]["scope"]["uid"] = "7f1c0d3e-0000-4000-8000-000000000000".into();
    });
    server.respawn_same_port().await;
    let admin = server.client();
    let claims = format!("{V1}/namespaces/p1/claims");
    let codes: Vec<u16> = futures::future::join_all(
        tokens
            .iter()
            .map(|t| async { as_token(&admin, t, Method::GET, &claims, None).await.0 }),
    )
    .await;
    assert_eq!(codes, [200, 403, 403], "carol, dave, erin");
    // Written again (a re-apply without the uid), carol's binding records it.
    let put = |name: &str, body: serde_json::Value| {
        let admin = admin.clone();
        let path = format!("{V1}/rolebindings/{name}");
        async move {
            admin
                .raw(
                    Method::PUT,
                    &path,
                    Some("application/json"),
                    serde_json::to_vec(&body).unwrap(),
                    None,
                )
                .await
                .unwrap()
        }
    };
    let again = admin
        .get_path(&format!("{V1}/rolebindings/carol-p1"))
        .await
        .unwrap();
    assert!(again["spec"]["scope"].get("uid").is_none(), "{again}");
    let (code, body) = put("carol-p1", again).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["spec"]["scope"]["uid"], project["metadata"]["uid"]);
    // Erin's names another project: written back as it is, it is refused with the reason.
    let stale = admin
        .get_path(&format!("{V1}/rolebindings/erin-p1"))
        .await
        .unwrap();
    let (code, body) = put("erin-p1", stale).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("spec.scope.uid"), "{body}");
}
