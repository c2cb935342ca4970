//! ResourceClasses: how they count (`spec.kind`) never changes, and a class in use by a
//! resource is not deleted.

use async_trait::async_trait;
use infraos_api::kinds::ResourceSpec;
use infraos_api::{Kind as _, TypedObject};
use infraos_store::Store;

use super::Strategy;
use crate::error::ApiError;
use crate::objects::{self, decode_typed};

#[derive(Debug)]
pub struct ResourceClass;

#[async_trait]
impl Strategy for ResourceClass {
    fn admit_update(&self, new: &TypedObject, old: &TypedObject) -> Result<(), ApiError> {
        match (new, old) {
            (TypedObject::ResourceClass(n), TypedObject::ResourceClass(o))
                if n.spec.kind != o.spec.kind =>
            {
                Err(ApiError::invalid_field(
                    "ResourceClass",
                    &n.metadata.name,
                    "spec.kind",
                    "field is immutable",
                ))
            }
            _ => Ok(()),
        }
    }

    async fn admit_delete(&self, store: &dyn Store, name: &str) -> Result<(), ApiError> {
        let resources = store
            .range(&objects::prefix(ResourceSpec::INFO, None), None, 0)
            .await?;
        for kv in &resources.kvs {
            let resource = decode_typed::<ResourceSpec>(kv)?;
            if resource.spec.class == name {
                return Err(ApiError::conflict(
                    "ResourceClass",
                    name,
                    format!(
                        "class {name:?} is in use by resource {:?}",
                        resource.metadata.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
