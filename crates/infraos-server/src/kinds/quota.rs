//! Quotas: their classes and dimensions exist, and so does their tenant or project.

use async_trait::async_trait;
use infraos_api::TypedObject;
use infraos_api::kinds::{ClassKind, ITEMS_DIMENSION, ProjectSpec, TenantSpec};
use infraos_api::validation::Errors;

use super::{Lookups, Strategy};
use crate::admission::get_typed;
use crate::error::ApiError;

#[derive(Debug)]
pub struct Quota;

#[async_trait]
impl Strategy for Quota {
    async fn admit(&self, lookups: Lookups<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let TypedObject::Quota(quota) = object else {
            return Ok(());
        };
        let Lookups { store, classes } = lookups;
        let mut errors = Errors::default();
        if let Some(tenant) = &quota.spec.tenant
            && get_typed::<TenantSpec>(store, tenant).await?.is_none()
        {
            errors.add("spec.tenant", format!("Tenant {tenant:?} not found"));
        }
        if let Some(project) = &quota.spec.project
            && get_typed::<ProjectSpec>(store, project).await?.is_none()
        {
            errors.add("spec.project", format!("Project {project:?} not found"));
        }
        for (field, amounts) in [
            ("spec.limits", &quota.spec.limits),
            ("spec.borrowingLimit", &quota.spec.borrowing_limit),
        ] {
            for (class_name, dims) in amounts {
                let Some(class) = classes.get(store, class_name).await? else {
                    errors.add(
                        format!("{field}.{class_name}"),
                        format!("ResourceClass {class_name:?} not found"),
                    );
                    continue;
                };
                for dim in dims.keys() {
                    let known = match class.kind {
                        ClassKind::Counted => class.has_dimension(dim),
                        ClassKind::Items => dim == ITEMS_DIMENSION,
                    };
                    if !known {
                        let expected = match class.kind {
                            ClassKind::Counted => {
                                format!("class {class_name:?} has no dimension {dim:?}")
                            }
                            ClassKind::Items => format!(
                                "class {class_name:?} has items: limit their number with {ITEMS_DIMENSION:?}"
                            ),
                        };
                        errors.add(format!("{field}.{class_name}.{dim}"), expected);
                    }
                }
            }
        }
        errors
            .into_result()
            .map_err(|e| ApiError::invalid("Quota", &quota.metadata.name, &e))
    }
}
