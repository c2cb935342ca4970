//! Tests of request path parsing: the shapes, the RBAC mapping, decoding once.

use super::*;

fn api(method: &str, path: &str, watch: bool) -> ApiRequest {
    match ApiRequest::parse(method, path, watch) {
        Ok(Target::Api(r)) => r,
        other => panic!("{method} {path}: {other:?}"),
    }
}

fn rbac(method: &str, path: &str) -> Option<(&'static str, String, Option<String>)> {
    let r = match ApiRequest::parse(method, path, false) {
        Ok(Target::Api(r)) => r,
        _ => return None,
    };
    Some((r.verb.as_str(), r.rule_kind?, r.path.name))
}

#[test]
fn paths_map_to_rbac_terms() {
    let p = |s: &str| format!("{PREFIX}{s}");
    assert_eq!(
        rbac("GET", &p("/namespaces/a/claims")),
        Some(("list", "Claim".into(), None))
    );
    assert_eq!(
        rbac("POST", &p("/namespaces/a/claims/c/renew")),
        Some(("renew", "Claim".into(), Some("c".into())))
    );
    assert_eq!(
        rbac("POST", &p("/namespaces/a/claims/c/refuse")),
        Some(("approve", "Claim".into(), Some("c".into())))
    );
    assert_eq!(
        rbac("GET", &p("/namespaces/a/claims/c/log")),
        Some(("get", "Claim/log".into(), Some("c".into())))
    );
    assert_eq!(
        rbac("PUT", &p("/nodes/n/status")),
        Some(("update", "Node/status".into(), Some("n".into())))
    );
    assert_eq!(
        rbac("DELETE", &p("/nodes/n/revocation")),
        Some(("update", "Node".into(), Some("n".into())))
    );
    assert_eq!(
        rbac("GET", &p("/auditrecords/head")),
        Some(("get", "AuditRecord".into(), Some("head".into())))
    );
    assert_eq!(
        rbac("DELETE", &p("/jointokens/abc")),
        Some(("delete", "JoinToken".into(), Some("abc".into())))
    );
    assert_eq!(
        rbac("POST", &p("/namespaces/a/claims:batchCreate")),
        Some(("create", "Claim".into(), None))
    );
    // Unmapped: closed.
    assert_eq!(rbac("GET", &p("/namespaces/a/claims/c/renew")), None);
    assert_eq!(rbac("GET", &p("/nodes/n/log")), None);
    assert_eq!(rbac("GET", &p("/widgets")), None);
    assert_eq!(rbac("GET", &p("/namespaces/a/claims:batchCreate")), None);
    assert_eq!(rbac("POST", &p("/claims:batchCreate/x")), None);
    assert_eq!(rbac("GET", &p("/a/b/c/d")), None);
    assert_eq!(
        ApiRequest::parse("GET", &p("/signingkey"), false)
            .map(|t| matches!(t, Target::Api(r) if r.path.resource == Resource::SigningKey)),
        Ok(true)
    );
    assert_eq!(
        ApiRequest::parse("POST", "/agent/v1/heartbeat", false),
        Ok(Target::Agent)
    );
    assert_eq!(
        ApiRequest::parse("GET", "/openapi/v3", false),
        Ok(Target::OpenApi)
    );
}

#[test]
fn a_watch_is_a_watch_only_on_collections() {
    let p = format!("{PREFIX}/namespaces/a/claims");
    assert_eq!(api("GET", &p, true).verb, Verb::Watch);
    assert_eq!(api("GET", &p, false).verb, Verb::List);
    assert_eq!(api("GET", &format!("{p}/c"), true).verb, Verb::Get);
}

#[test]
fn unknown_plurals_keep_what_the_handler_names() {
    let err = ApiRequest::parse("GET", &format!("{PREFIX}/widgets/w/status"), false);
    assert_eq!(
        err,
        Err(PathError::UnknownResource {
            plural: "widgets".into(),
            subresource: Some("status".into()),
        })
    );
    // A batch suffix where no batch can be: the whole plural is unknown.
    let err = ApiRequest::parse("GET", &format!("{PREFIX}/claims:batchCreate"), false);
    assert_eq!(
        err,
        Err(PathError::UnknownResource {
            plural: "claims:batchCreate".into(),
            subresource: None,
        })
    );
}

/// Regression (45677b8): every consumer must see one decoding of the request. Path segments
/// are decoded here once, as the router's extractors decode them, so RBAC decides on the
/// name the handler serves.
#[test]
fn segments_are_decoded_once() {
    let r = api(
        "GET",
        &format!("{PREFIX}/namespaces/p%61/claims/c%2541"),
        false,
    );
    assert_eq!(r.path.namespace(), Some("pa"));
    // `%2541` is `%41` once decoded, never `A`.
    assert_eq!(r.path.name.as_deref(), Some("c%41"));
    let r = api("GET", &format!("{PREFIX}/nodes/a+b%zz"), false);
    assert_eq!(r.path.name.as_deref(), Some("a+b%zz"));
    assert_eq!(
        ApiRequest::parse("GET", &format!("{PREFIX}/nodes/%ff"), false),
        Err(PathError::NotUtf8)
    );
}

#[test]
fn urls_round_trip() {
    let claims = kind_by_plural("claims").unwrap();
    let nodes = kind_by_plural("nodes").unwrap();
    let cases = [
        ApiPath::object(claims, Some("p"), None),
        ApiPath::object(claims, None, None),
        ApiPath::object(claims, Some("p"), Some("c")).subresource("renew"),
        ApiPath::object(claims, Some("p"), None).batch(),
        ApiPath::object(nodes, Some("ignored"), Some("n/1 x")),
    ];
    for path in cases {
        let url = path.to_url();
        assert_eq!(ApiPath::parse("POST", &url), Ok(path.clone()), "{url}");
    }
    assert_eq!(
        ApiPath::object(claims, Some("p"), Some("c")).to_url(),
        "/apis/infraos.io/v1/namespaces/p/claims/c"
    );
    assert_eq!(
        ApiPath::object(nodes, Some("p"), None).to_url(),
        "/apis/infraos.io/v1/nodes"
    );
}
