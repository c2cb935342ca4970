//! Unit tests of the authorizer: scopes, visibility, late events, escalation, paths.

use super::*;
use infraos_api::kinds::ProjectSpec;

fn user(name: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: format!("user:{name}"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token: None,
    }
}

fn binding(name: &str, role: &str, scope: BindingScope, user: &str) -> (String, Vec<u8>) {
    let b = infraos_api::kinds::RoleBinding::new(
        name,
        None,
        RoleBindingSpec {
            role: role.into(),
            scope,
            subjects: vec![infraos_api::kinds::Subject {
                kind: SubjectKind::User,
                name: user.into(),
            }],
        },
    );
    (format!("{BINDINGS}{name}"), serde_json::to_vec(&b).unwrap())
}

fn project(name: &str, tenant: &str) -> (String, Vec<u8>) {
    let p = infraos_api::kinds::Project::new(
        name,
        None,
        ProjectSpec {
            tenant: tenant.into(),
            description: None,
        },
    );
    (format!("{PROJECTS}{name}"), serde_json::to_vec(&p).unwrap())
}

fn rbac() -> Rbac {
    let rbac = Rbac::default();
    for (rev, (k, v)) in [
        project("p1", "t1"),
        project("p2", "t1"),
        project("q1", "t2"),
        binding(
            "alice-t1",
            "tenant-admin",
            BindingScope {
                tenant: Some("t1".into()),
                project: None,
            },
            "alice",
        ),
        binding(
            "bob-p1",
            "project-member",
            BindingScope {
                tenant: None,
                project: Some("p1".into()),
            },
            "bob",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        rbac.observe(&k, rev as u64 + 1, Some(&v));
    }
    rbac
}

#[test]
fn bindings_reach_their_scope_only() {
    let rbac = rbac();
    let alice = user("alice", &[]);
    let bob = user("bob", &[]);
    let p1 = rbac.project_scope("p1");
    let q1 = rbac.project_scope("q1");
    assert!(rbac.allows(&alice, "create", "Claim", None, &p1));
    assert!(rbac.allows(&alice, "create", "Claim", None, &rbac.project_scope("p2")));
    assert!(!rbac.allows(&alice, "create", "Claim", None, &q1));
    assert!(rbac.allows(&bob, "create", "Claim", None, &p1));
    assert!(!rbac.allows(&bob, "create", "Claim", None, &rbac.project_scope("p2")));
    assert!(!rbac.allows(&bob, "delete", "Project", Some("p1"), &p1));
    assert!(rbac.allows(&bob, "get", "ResourceClass", Some("gpu"), &Scope::cluster()));
    assert!(!rbac.allows(&bob, "get", "Node", Some("n"), &Scope::cluster()));
    let admin = user("admin", &[ADMINS_GROUP]);
    assert!(rbac.allows(&admin, "delete", "Node", Some("n"), &Scope::cluster()));
}

#[test]
fn visibility_collects_tenants_and_projects() {
    let rbac = rbac();
    match rbac.visibility(&user("alice", &[]), "list", "Claim") {
        Visibility::Only { tenants, projects } => {
            assert!(tenants.contains("t1") && projects.is_empty());
        }
        Visibility::All => panic!("alice sees one tenant"),
    }
    assert!(
        rbac.visibility(&user("eve", &[]), "list", "Claim")
            .is_empty()
    );
}

#[test]
fn late_watch_events_do_not_undo_newer_writes() {
    let rbac = rbac();
    let (k, _) = binding("bob-p1", "project-member", BindingScope::default(), "bob");
    rbac.observe(&k, 100, None);
    let (k2, v2) = binding(
        "bob-p1",
        "project-member",
        BindingScope {
            tenant: None,
            project: Some("p1".into()),
        },
        "bob",
    );
    rbac.observe(&k2, 50, Some(&v2));
    assert!(!rbac.allows(
        &user("bob", &[]),
        "get",
        "Claim",
        Some("c"),
        &rbac.project_scope("p1")
    ));
}

#[test]
fn escalation_is_refused() {
    let rbac = rbac();
    let alice = user("alice", &[]);
    let t1 = Scope::tenant("t1");
    let grant = |role: &str| RoleBindingSpec {
        role: role.into(),
        scope: BindingScope {
            tenant: Some("t1".into()),
            project: None,
        },
        subjects: vec![],
    };
    assert!(check_escalation(&rbac, &alice, &grant("project-member"), &t1).is_ok());
    assert!(check_escalation(&rbac, &alice, &grant("cluster-admin"), &t1).is_err());
    assert!(check_escalation(&rbac, &alice, &grant("auditor"), &t1).is_err());
    assert!(check_escalation(&rbac, &alice, &grant("no-such"), &t1).is_err());
}

#[test]
fn paths_map_to_attributes() {
    let get = http::Method::GET;
    let t = |m: &http::Method, p: &str, q: Option<&str>| {
        let params: crate::api::ListParams = crate::api::decode_query(q).unwrap();
        match target(m, p, params.is_watch()) {
            Some(Target::Request(a)) => Some((a.verb, a.kind, a.namespace, a.name)),
            _ => None,
        }
    };
    // However the query spells it, a watch is a watch (issue 16: `%74rue` passed as a list).
    for q in [
        "watch=%74rue",
        "watch=%31",
        "watch",
        "watch=",
        "labelSelector=a%3Db&watch=true",
    ] {
        assert_eq!(
            t(&get, "/apis/infraos.io/v1/namespaces/p/claims", Some(q)).map(|a| a.0),
            Some("watch".to_string()),
            "{q}"
        );
    }
    for q in [
        "watch=false",
        "watch=0",
        "watchx=true",
        "labelSelector=watch%3Dtrue",
    ] {
        assert_eq!(
            t(&get, "/apis/infraos.io/v1/namespaces/p/claims", Some(q)).map(|a| a.0),
            Some("list".to_string()),
            "{q}"
        );
    }
    assert_eq!(
        t(
            &get,
            "/apis/infraos.io/v1/namespaces/p/claims",
            Some("watch=true")
        ),
        Some(("watch".into(), "Claim".into(), Some("p".into()), None))
    );
    assert_eq!(
        t(
            &http::Method::POST,
            "/apis/infraos.io/v1/namespaces/p/claims/c/renew",
            None
        ),
        Some((
            "renew".into(),
            "Claim".into(),
            Some("p".into()),
            Some("c".into())
        ))
    );
    assert_eq!(
        t(&get, "/apis/infraos.io/v1/namespaces/p/claims/c/log", None),
        Some((
            "get".into(),
            "Claim/log".into(),
            Some("p".into()),
            Some("c".into())
        ))
    );
    assert_eq!(
        t(
            &http::Method::PUT,
            "/apis/infraos.io/v1/nodes/n/status",
            None
        ),
        Some((
            "update".into(),
            "Node/status".into(),
            None,
            Some("n".into())
        ))
    );
    assert_eq!(
        t(
            &http::Method::DELETE,
            "/apis/infraos.io/v1/tokens/abc",
            None
        ),
        Some(("delete".into(), "Token".into(), None, Some("abc".into())))
    );
    assert_eq!(t(&get, "/apis/infraos.io/v1/gadgets", None), None);
    assert_eq!(
        target(&get, "/agent/v1/heartbeat", false),
        Some(Target::AgentOnly)
    );
}
