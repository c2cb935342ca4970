//! RoleBindings: bound to the uid of the Project or Tenant they are scoped to; name an
//! existing role and scope.

use async_trait::async_trait;
use infraos_api::TypedObject;
use infraos_api::kinds::{ProjectSpec, RoleSpec, TenantSpec};
use infraos_api::validation::Errors;

use super::{Lookups, Strategy};
use crate::admission::get_typed;
use crate::error::ApiError;

#[derive(Debug)]
pub struct RoleBinding;

#[async_trait]
impl Strategy for RoleBinding {
    fn informs_authorizer(&self) -> bool {
        true
    }

    async fn default(
        &self,
        lookups: Lookups<'_>,
        object: &mut TypedObject,
        _old: Option<&TypedObject>,
    ) -> Result<(), ApiError> {
        match object {
            TypedObject::RoleBinding(binding) => {
                crate::authz::lifecycle::bind_to_scope(lookups.store, binding).await
            }
            _ => Ok(()),
        }
    }

    async fn admit(&self, lookups: Lookups<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let TypedObject::RoleBinding(binding) = object else {
            return Ok(());
        };
        let store = lookups.store;
        let mut errors = Errors::default();
        let spec = &binding.spec;
        if infraos_api::kinds::builtin_role(&spec.role).is_none()
            && get_typed::<RoleSpec>(store, &spec.role).await?.is_none()
        {
            errors.add(
                "spec.role",
                format!(
                    "no role {:?}: name a built-in role ({}) or a Role object",
                    spec.role,
                    infraos_api::kinds::BUILTIN_ROLES
                        .iter()
                        .map(|r| r.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if let Some(project) = &spec.scope.project {
            match get_typed::<ProjectSpec>(store, project).await? {
                None => errors.add(
                    "spec.scope.project",
                    format!("Project {project:?} not found"),
                ),
                Some(p) => {
                    if let Some(tenant) = &spec.scope.tenant
                        && &p.spec.tenant != tenant
                    {
                        errors.add(
                            "spec.scope.tenant",
                            format!(
                                "project {project:?} belongs to tenant {:?}, not {tenant:?}",
                                p.spec.tenant
                            ),
                        );
                    }
                }
            }
        } else if let Some(tenant) = &spec.scope.tenant
            && get_typed::<TenantSpec>(store, tenant).await?.is_none()
        {
            errors.add("spec.scope.tenant", format!("Tenant {tenant:?} not found"));
        }
        errors
            .into_result()
            .map_err(|e| ApiError::invalid("RoleBinding", &binding.metadata.name, &e))
    }
}
