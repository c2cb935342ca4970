//! Resources: follow their class (dimensions, item attribute schema); class and node never
//! change.

use async_trait::async_trait;
use infraos_api::TypedObject;
use infraos_api::validation::Errors;

use super::{Lookups, Strategy};
use crate::error::ApiError;

#[derive(Debug)]
pub struct Resource;

#[async_trait]
impl Strategy for Resource {
    fn admit_update(&self, new: &TypedObject, old: &TypedObject) -> Result<(), ApiError> {
        let (TypedObject::Resource(n), TypedObject::Resource(o)) = (new, old) else {
            return Ok(());
        };
        let immutable = |field: &str| {
            ApiError::invalid_field("Resource", &n.metadata.name, field, "field is immutable")
        };
        if n.spec.class != o.spec.class {
            return Err(immutable("spec.class"));
        }
        if n.spec.node != o.spec.node {
            return Err(immutable("spec.node"));
        }
        Ok(())
    }

    async fn admit(&self, lookups: Lookups<'_>, object: &TypedObject) -> Result<(), ApiError> {
        let TypedObject::Resource(resource) = object else {
            return Ok(());
        };
        let name = &resource.metadata.name;
        let class_name = &resource.spec.class;
        let Some(class) = lookups.classes.get(lookups.store, class_name).await? else {
            let mut errors = Errors::default();
            errors.add(
                "spec.class",
                format!("ResourceClass {class_name:?} not found"),
            );
            return errors
                .into_result()
                .map_err(|e| ApiError::invalid("Resource", name, &e));
        };
        resource
            .spec
            .validate_against_class(&class)
            .map_err(|e| ApiError::invalid("Resource", name, &e))
    }
}
