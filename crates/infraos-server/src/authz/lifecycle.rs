//! Bindings live and die with their scope.
//!
//! ```text
//!  create/update RoleBinding ─► bind_to_scope: spec.scope.uid ← uid of the Project/Tenant now
//!  delete Project/Tenant     ─► its RoleBindings and Quotas deleted in the same transaction
//!                               (audited), a project's Events just before it
//!  authorize                 ─► View::holds: a binding whose uid is not the scope's grants
//!                               nothing (the backstop for anything left behind)
//! ```
//! Names are reused; uids are not. Without this, a tenant admin who bound themselves in a
//! project and deleted it would hold whatever project of that name another tenant creates
//! next (issue 16, finding 5); and a quota it left would limit the newcomer.

use infraos_api::Kind as _;
use infraos_api::kinds::{
    EventSpec, ProjectSpec, QuotaSpec, RoleBinding, RoleBindingSpec, TenantSpec,
};
use infraos_store::{Compare, KeyValue, Store, Txn};

use crate::audit::{self, Actor, Record};
use crate::error::ApiError;
use crate::objects::{self, decode_typed};

/// Most events deleted per transaction while a project is emptied.
const EVENT_PAGE: usize = 1000;

/// Records in a binding which Project or Tenant it is for: fills `spec.scope.uid` from the
/// scope object as stored now, and refuses a uid naming an earlier object of that name (a
/// manifest exported before the project was deleted and created again). A missing scope
/// object is left to admission, which names the field.
pub async fn bind_to_scope(store: &dyn Store, binding: &mut RoleBinding) -> Result<(), ApiError> {
    let Some((kind, name)) = binding.spec.scope.object() else {
        return Ok(());
    };
    let info = match kind {
        "Project" => ProjectSpec::INFO,
        _ => TenantSpec::INFO,
    };
    let Some(kv) = store.get(&objects::key(info, None, name)).await? else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored {kind} {name:?} is not JSON: {e}")))?;
    let uid = value
        .pointer("/metadata/uid")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    match &binding.spec.scope.uid {
        Some(given) if *given != uid => Err(ApiError::invalid_field(
            RoleBindingSpec::INFO.kind,
            &binding.metadata.name,
            "spec.scope.uid",
            format!(
                "{kind} {name:?} is now uid {uid}; this binding was made for an earlier \
                 {kind} of that name (uid {given}): leave spec.scope.uid out to bind the \
                 current one"
            ),
        )),
        _ => {
            binding.spec.scope.uid = Some(uid);
            Ok(())
        }
    }
}

/// A stored object that goes with its scope.
#[derive(Clone, Debug)]
pub struct Scoped {
    /// `RoleBinding` or `Quota`.
    pub kind: &'static str,
    pub kv: KeyValue,
}

/// The stored RoleBindings and Quotas scoped to Project or Tenant `name` (for a tenant, those
/// naming it, whatever their project; pool quotas naming no tenant stay).
pub async fn scoped_to(store: &dyn Store, kind: &str, name: &str) -> Result<Vec<Scoped>, ApiError> {
    let ours = |tenant: Option<&str>, project: Option<&str>| match kind {
        "Project" => project == Some(name),
        "Tenant" => tenant == Some(name),
        _ => false,
    };
    let mut found = Vec::new();
    for info in [RoleBindingSpec::INFO, QuotaSpec::INFO] {
        let prefix = objects::prefix(info, None);
        let mut after: Option<String> = None;
        loop {
            let page = store.range(&prefix, after.as_deref(), 5000).await?;
            for kv in &page.kvs {
                // What no longer decodes grants and limits nothing; leave it alone.
                let hit = if info.kind == RoleBindingSpec::INFO.kind {
                    decode_typed::<RoleBindingSpec>(kv).is_ok_and(|b| {
                        ours(
                            b.spec.scope.tenant.as_deref(),
                            b.spec.scope.project.as_deref(),
                        )
                    })
                } else {
                    decode_typed::<QuotaSpec>(kv)
                        .is_ok_and(|q| ours(q.spec.tenant.as_deref(), q.spec.project.as_deref()))
                };
                if hit {
                    found.push(Scoped {
                        kind: info.kind,
                        kv: kv.clone(),
                    });
                }
            }
            after = page.kvs.last().map(|kv| kv.key.clone());
            if !page.more {
                break;
            }
        }
    }
    Ok(found)
}

/// Adds the deletion of `scoped` objects to the transaction that deletes their scope, each
/// guarded by its revision (one changed meanwhile fails the whole delete, which the caller
/// reports as a conflict to retry) and audited as a delete caused by the scope's.
pub fn delete_with_scope(
    mut txn: Txn,
    scoped: &[Scoped],
    actor: &Actor,
    scope: (&str, &str),
    now: infraos_api::Time,
) -> Txn {
    for Scoped { kind, kv } in scoped {
        let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
        let mut object = audit::object_ref(kind, None, &name);
        object.uid = serde_json::from_slice::<serde_json::Value>(&kv.value)
            .ok()
            .and_then(|v| v.pointer("/metadata/uid")?.as_str().map(str::to_string));
        let payload = Record {
            actor,
            verb: "delete",
            object,
            code: 200,
            reason: Some(format!(
                "ScopeDeleted: its {} {:?} was deleted",
                scope.0.to_ascii_lowercase(),
                scope.1
            )),
            before: Some(&kv.value),
            after: None,
            node: None,
        }
        .payload(now);
        txn = txn
            .when(Compare::unchanged(kv.key.clone(), kv.mod_revision))
            .delete(kv.key.clone())
            .append(payload);
    }
    txn
}

/// Deletes the Events left in a project about to be deleted, page by page, so that a project
/// created later under the same name (in any tenant) does not show them. Events are the
/// control plane's notes, collected after `eventTtl` without audit records; these go early.
pub async fn delete_project_events(store: &dyn Store, project: &str) -> Result<(), ApiError> {
    let prefix = objects::prefix(EventSpec::INFO, Some(project));
    loop {
        let page = store.range(&prefix, None, EVENT_PAGE).await?;
        if page.kvs.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new();
        for kv in &page.kvs {
            txn = txn.delete(kv.key.clone());
        }
        store.txn(txn).await?;
        if !page.more {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infraos_api::kinds::{BindingScope, Project, Subject, SubjectKind};
    use infraos_store::embedded::{EmbeddedOptions, EmbeddedStore};

    fn binding(scope: BindingScope) -> RoleBinding {
        RoleBinding::new(
            "b",
            None,
            RoleBindingSpec {
                role: "project-member".into(),
                scope,
                subjects: vec![Subject {
                    kind: SubjectKind::User,
                    name: "alice".into(),
                }],
            },
        )
    }

    async fn store_with_project(uid: &str) -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default()).unwrap();
        let mut p = Project::new(
            "p",
            None,
            ProjectSpec {
                tenant: "t".into(),
                description: None,
            },
        );
        p.metadata.uid = uid.into();
        store
            .txn(Txn::new().put(
                objects::key(ProjectSpec::INFO, None, "p"),
                serde_json::to_vec(&p).unwrap(),
            ))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn bindings_record_the_uid_of_their_scope_and_refuse_an_earlier_one() {
        let (_dir, store) = store_with_project("uid-2").await;
        let mut b = binding(BindingScope::project("p"));
        bind_to_scope(&store, &mut b).await.unwrap();
        assert_eq!(b.spec.scope.uid.as_deref(), Some("uid-2"));
        // Given again (a round trip through `get -o yaml`): accepted.
        bind_to_scope(&store, &mut b).await.unwrap();
        let mut stale = binding(BindingScope {
            uid: Some("uid-1".into()),
            ..BindingScope::project("p")
        });
        let err = bind_to_scope(&store, &mut stale).await.unwrap_err();
        assert!(err.message.contains("spec.scope.uid"), "{}", err.message);
        // Cluster bindings and missing scopes are left alone (admission names the latter).
        let mut cluster = binding(BindingScope::default());
        bind_to_scope(&store, &mut cluster).await.unwrap();
        assert_eq!(cluster.spec.scope.uid, None);
        let mut missing = binding(BindingScope::tenant("nobody"));
        bind_to_scope(&store, &mut missing).await.unwrap();
        assert_eq!(missing.spec.scope.uid, None);
    }

    #[tokio::test]
    async fn the_bindings_and_quotas_of_a_scope_are_found_by_scope_not_by_name() {
        let (_dir, store) = store_with_project("u").await;
        let mut txn = Txn::new();
        for (name, scope) in [
            ("in-p", BindingScope::project("p")),
            ("in-p2", BindingScope::project("p2")),
            ("in-t", BindingScope::tenant("t")),
            ("cluster", BindingScope::default()),
        ] {
            let mut b = binding(scope);
            b.metadata.name = name.into();
            txn = txn.put(
                objects::key(RoleBindingSpec::INFO, None, name),
                serde_json::to_vec(&b).unwrap(),
            );
        }
        for (name, tenant, project) in [
            ("q-p", None, Some("p")),
            ("q-t", Some("t"), None),
            ("q-pool", None, None),
        ] {
            let q = infraos_api::kinds::Quota::new(
                name,
                None,
                QuotaSpec {
                    tenant: tenant.map(str::to_string),
                    project: project.map(str::to_string),
                    ..QuotaSpec::default()
                },
            );
            txn = txn.put(
                objects::key(QuotaSpec::INFO, None, name),
                serde_json::to_vec(&q).unwrap(),
            );
        }
        store.txn(txn).await.unwrap();
        let names = |found: Vec<Scoped>| -> Vec<String> {
            found
                .into_iter()
                .map(|s| format!("{}/{}", s.kind, s.kv.key.rsplit('/').next().unwrap()))
                .collect()
        };
        let p = scoped_to(&store, "Project", "p").await.unwrap();
        assert_eq!(names(p), ["RoleBinding/in-p", "Quota/q-p"]);
        let t = scoped_to(&store, "Tenant", "t").await.unwrap();
        assert_eq!(names(t), ["RoleBinding/in-t", "Quota/q-t"]);
    }
}
