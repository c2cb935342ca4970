//! Unit tests of the authorizer: scopes, visibility, late events, escalation, paths, and
//! bindings that outlive their scope.

use super::*;
use infraos_api::kinds::{ProjectSpec, TenantSpec};

/// When the fixture's tenants and projects were created.
const T0: i64 = 1_700_000_000_000;

fn user(name: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: format!("user:{name}"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token: None,
    }
}

/// A binding made for the fixture's scope objects (uid `uid-<name>`), after they were.
fn binding(name: &str, role: &str, mut scope: BindingScope, user: &str) -> (String, Vec<u8>) {
    scope.uid = scope.object().map(|(_, n)| format!("uid-{n}"));
    let (key, value) = raw_binding(name, role, scope, user);
    let mut b: infraos_api::kinds::RoleBinding = serde_json::from_slice(&value).unwrap();
    b.metadata.creation_timestamp = Some(Time::from_unix_millis(T0 + 1000));
    (key, serde_json::to_vec(&b).unwrap())
}

/// A binding as given: no uid filled in, no creation time.
fn raw_binding(name: &str, role: &str, scope: BindingScope, user: &str) -> (String, Vec<u8>) {
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
    project_as(name, tenant, &format!("uid-{name}"), T0)
}

fn project_as(name: &str, tenant: &str, uid: &str, created: i64) -> (String, Vec<u8>) {
    let mut p = infraos_api::kinds::Project::new(
        name,
        None,
        ProjectSpec {
            tenant: tenant.into(),
            description: None,
        },
    );
    p.metadata.uid = uid.into();
    p.metadata.creation_timestamp = Some(Time::from_unix_millis(created));
    (format!("{PROJECTS}{name}"), serde_json::to_vec(&p).unwrap())
}

fn tenant(name: &str) -> (String, Vec<u8>) {
    let mut t = infraos_api::kinds::Tenant::new(name, None, TenantSpec::default());
    t.metadata.uid = format!("uid-{name}");
    t.metadata.creation_timestamp = Some(Time::from_unix_millis(T0));
    (format!("{TENANTS}{name}"), serde_json::to_vec(&t).unwrap())
}

fn rbac() -> Rbac {
    let rbac = Rbac::default();
    for (rev, (k, v)) in [
        tenant("t1"),
        tenant("t2"),
        project("p1", "t1"),
        project("p2", "t1"),
        project("q1", "t2"),
        binding(
            "alice-t1",
            "tenant-admin",
            BindingScope::tenant("t1"),
            "alice",
        ),
        binding(
            "bob-p1",
            "project-member",
            BindingScope::project("p1"),
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
        BindingScope::project("p1"),
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
        scope: BindingScope::tenant("t1"),
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

/// Finding 5 of issue 16: a project deleted and created again in another tenant is another
/// project; the old binding (left behind, or late) grants nothing there.
#[test]
fn a_binding_grants_nothing_in_a_new_project_of_the_same_name() {
    let rbac = rbac();
    let bob = user("bob", &[]);
    assert!(rbac.allows(&bob, "list", "Claim", None, &rbac.project_scope("p1")));
    rbac.observe(&format!("{PROJECTS}p1"), 100, None);
    assert!(!rbac.allows(&bob, "list", "Claim", None, &rbac.project_scope("p1")));
    let (k, v) = project_as("p1", "t2", "uid-p1-again", T0 + 5000);
    rbac.observe(&k, 101, Some(&v));
    let p1 = rbac.project_scope("p1");
    assert_eq!(p1.tenant.as_deref(), Some("t2"));
    for verb in ["get", "list", "delete", "create"] {
        assert!(!rbac.allows(&bob, verb, "Claim", None, &p1), "{verb}");
    }
    assert!(
        rbac.visibility(&bob, "list", "Claim").is_empty(),
        "nor does it show up in filtered lists"
    );
    // Alice, tenant admin of t1, never reached t2's project either.
    assert!(!rbac.allows(&user("alice", &[]), "get", "Claim", None, &p1));
}

#[test]
fn a_tenant_binding_grants_nothing_in_a_new_tenant_of_the_same_name() {
    let rbac = rbac();
    let alice = user("alice", &[]);
    assert!(rbac.allows(&alice, "get", "Tenant", Some("t1"), &Scope::tenant("t1")));
    let mut t = infraos_api::kinds::Tenant::new("t1", None, TenantSpec::default());
    t.metadata.uid = "uid-t1-again".into();
    t.metadata.creation_timestamp = Some(Time::from_unix_millis(T0 + 5000));
    rbac.observe(
        &format!("{TENANTS}t1"),
        100,
        Some(&serde_json::to_vec(&t).unwrap()),
    );
    assert!(!rbac.allows(&alice, "get", "Tenant", Some("t1"), &Scope::tenant("t1")));
    assert!(!rbac.allows(&alice, "create", "Claim", None, &rbac.project_scope("p1")));
}

/// Bindings stored before they recorded their scope's uid keep working for the project they
/// were made for, and only for it: one older than the project was made for an earlier one.
#[test]
fn bindings_without_a_uid_hold_for_the_scope_they_were_made_for() {
    let rbac = rbac();
    let carol = user("carol", &[]);
    let legacy = |name: &str, created: i64| {
        let (k, v) = raw_binding(name, "project-member", BindingScope::project("p2"), "carol");
        let mut b: infraos_api::kinds::RoleBinding = serde_json::from_slice(&v).unwrap();
        assert_eq!(b.spec.scope.uid, None);
        b.metadata.creation_timestamp = Some(Time::from_unix_millis(created));
        (k, serde_json::to_vec(&b).unwrap())
    };
    let (k, v) = legacy("carol-old", T0 - 1);
    rbac.observe(&k, 100, Some(&v));
    assert!(!rbac.allows(&carol, "get", "Claim", None, &rbac.project_scope("p2")));
    let (k, v) = legacy("carol-new", T0 + 1);
    rbac.observe(&k, 101, Some(&v));
    assert!(rbac.allows(&carol, "get", "Claim", None, &rbac.project_scope("p2")));
    // Without a creation time nothing says which project it was for: it grants nothing.
    let (k, v) = raw_binding(
        "carol-x",
        "project-member",
        BindingScope::project("q1"),
        "carol",
    );
    rbac.observe(&k, 102, Some(&v));
    assert!(!rbac.allows(&carol, "get", "Claim", None, &rbac.project_scope("q1")));
}
