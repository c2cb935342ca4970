//! Projects: name an existing tenant, which never changes; not deleted while they hold claims
//! or allocations; their events, role bindings and quotas go with them.

use async_trait::async_trait;
use infraos_api::kinds::{AllocationSpec, ClaimSpec, TenantSpec};
use infraos_api::validation::Errors;
use infraos_api::{Kind as _, TypedObject};
use infraos_store::Store;

use super::{Lookups, Strategy};
use crate::admission::get_typed;
use crate::authz::lifecycle::{self, Scoped};
use crate::error::ApiError;
use crate::objects;

#[derive(Debug)]
pub struct Project;

#[async_trait]
impl Strategy for Project {
    fn informs_authorizer(&self) -> bool {
        true
    }

    fn admit_update(&self, new: &TypedObject, old: &TypedObject) -> Result<(), ApiError> {
        match (new, old) {
            (TypedObject::Project(n), TypedObject::Project(o))
                if n.spec.tenant != o.spec.tenant =>
            {
                Err(ApiError::invalid_field(
                    "Project",
                    &n.metadata.name,
                    "spec.tenant",
                    "field is immutable",
                ))
            }
            _ => Ok(()),
        }
    }

    async fn admit(&self, lookups: Lookups<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let TypedObject::Project(project) = object else {
            return Ok(());
        };
        let tenant = &project.spec.tenant;
        if get_typed::<TenantSpec>(lookups.store, tenant)
            .await?
            .is_none()
        {
            let mut errors = Errors::default();
            errors.add("spec.tenant", format!("Tenant {tenant:?} not found"));
            return errors
                .into_result()
                .map_err(|e| ApiError::invalid("Project", &project.metadata.name, &e));
        }
        Ok(())
    }

    async fn admit_delete(&self, store: &dyn Store, name: &str) -> Result<(), ApiError> {
        for kind in [ClaimSpec::INFO, AllocationSpec::INFO] {
            let inside = store
                .range(&objects::prefix(kind, Some(name)), None, 1)
                .await?;
            if let Some(kv) = inside.kvs.first() {
                return Err(ApiError::conflict(
                    "Project",
                    name,
                    format!("project {name:?} is not empty: it still holds {}", kv.key),
                ));
            }
        }
        Ok(())
    }

    async fn leftovers(&self, store: &dyn Store, name: &str) -> Result<Vec<Scoped>, ApiError> {
        lifecycle::delete_project_events(store, name).await?;
        lifecycle::scoped_to(store, "Project", name).await
    }
}
