//! Tenants: not deleted while they own projects; their role bindings and quotas go with them.

use async_trait::async_trait;
use infraos_api::Kind as _;
use infraos_api::kinds::ProjectSpec;
use infraos_store::Store;

use super::Strategy;
use crate::authz::lifecycle::{self, Scoped};
use crate::error::ApiError;
use crate::objects::{self, decode_typed};

#[derive(Debug)]
pub struct Tenant;

#[async_trait]
impl Strategy for Tenant {
    fn informs_authorizer(&self) -> bool {
        true
    }

    async fn admit_delete(&self, store: &dyn Store, name: &str) -> Result<(), ApiError> {
        let projects = store
            .range(&objects::prefix(ProjectSpec::INFO, None), None, 0)
            .await?;
        for kv in &projects.kvs {
            let project = decode_typed::<ProjectSpec>(kv)?;
            if project.spec.tenant == name {
                return Err(ApiError::conflict(
                    "Tenant",
                    name,
                    format!(
                        "tenant {name:?} still owns project {:?}",
                        project.metadata.name
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn leftovers(&self, store: &dyn Store, name: &str) -> Result<Vec<Scoped>, ApiError> {
        lifecycle::scoped_to(store, "Tenant", name).await
    }
}
