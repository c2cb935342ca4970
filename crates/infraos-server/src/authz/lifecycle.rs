//! Bindings live and die with their scope.
//!
//! ```text
//!  create/update RoleBinding ─► bind_to_scope: spec.scope.uid ← uid of the Project/Tenant now
//!  delete Project/Tenant     ─► its RoleBindings deleted in the same transaction (audited),
//!                               a project's Events just before it
//!  authorize                 ─► View::holds: a binding whose uid is not the scope's grants
//!                               nothing (the backstop for anything left behind)
//! ```
//! Names are reused; uids are not. Without this, a tenant admin who bound themselves in a
//! project and deleted it would hold whatever project of that name another tenant creates
//! next (issue 16, finding 5).

use infraos_api::Kind as _;
use infraos_api::kinds::{EventSpec, ProjectSpec, RoleBinding, RoleBindingSpec, TenantSpec};
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
    let value: serde_json::Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored {kind} {name:?} is not JSON: {e}"))
    })?;
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

/// The stored RoleBindings scoped to Project or Tenant `name` (for a tenant, those naming it,
/// whatever their project).
pub async fn bindings_scoped_to(
    store: &dyn Store,
    kind: &str,
    name: &str,
) -> Result<Vec<KeyValue>, ApiError> {
    let prefix = objects::prefix(RoleBindingSpec::INFO, None);
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.range(&prefix, after.as_deref(), 5000).await?;
        for kv in &page.kvs {
            // A binding that no longer decodes cannot grant anything; leave it alone.
            let Ok(binding) = decode_typed::<RoleBindingSpec>(kv) else {
                continue;
            };
            let scope = &binding.spec.scope;
            let ours = match kind {
                "Project" => scope.project.as_deref() == Some(name),
                "Tenant" => scope.tenant.as_deref() == Some(name),
                _ => false,
            };
            if ours {
                found.push(kv.clone());
            }
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            return Ok(found);
        }
    }
}

/// Adds the deletion of `bindings` to the transaction that deletes their scope, each guarded
/// by its revision (a binding changed meanwhile fails the whole delete, which the caller
/// reports as a conflict to retry) and audited as a delete caused by the scope's.
pub fn delete_with_scope(
    mut txn: Txn,
    bindings: &[KeyValue],
    actor: &Actor,
    scope: (&str, &str),
    now: infraos_api::Time,
) -> Txn {
    for kv in bindings {
        let name = kv
            .key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut object = audit::object_ref(RoleBindingSpec::INFO.kind, None, &name);
        object.uid = decode_typed::<RoleBindingSpec>(kv)
            .ok()
            .map(|b| b.metadata.uid);
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
        let store = EmbeddedStore::open(&dir.path().join("s.redb"), EmbeddedOptions::default())
            .unwrap();
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
    async fn the_bindings_of_a_scope_are_found_by_scope_not_by_name() {
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
        store.txn(txn).await.unwrap();
        let names = |kvs: Vec<KeyValue>| -> Vec<String> {
            kvs.into_iter()
                .map(|kv| kv.key.rsplit('/').next().unwrap().to_string())
                .collect()
        };
        let p = bindings_scoped_to(&store, "Project", "p").await.unwrap();
        assert_eq!(names(p), ["in-p"]);
        let t = bindings_scoped_to(&store, "Tenant", "t").await.unwrap();
        assert_eq!(names(t), ["in-t"]);
    }
}
