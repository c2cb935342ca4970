//! Kind-specific server logic, one file per kind that has any (`kinds/<kind>.rs`), behind one
//! [`Strategy`] trait. The generic handlers (`api/objects.rs`) and the admission chain
//! (`admission.rs`) ask a kind's strategy; they never match on a kind's name.
//!
//! A kind without logic of its own gets [`Plain`]; adding one is a row in the registry of
//! `infraos-api` and, only if it needs it, a file here and an arm in [`strategy`].

use async_trait::async_trait;
use infraos_api::{KindInfo, Time, TypedObject};
use infraos_store::Store;

use crate::admission::ClassCache;
use crate::authz::lifecycle::Scoped;
use crate::error::ApiError;

mod allocation;
mod claim;
mod project;
mod quota;
mod resource;
mod resource_class;
mod role_binding;
mod tenant;

/// What admission reads other objects through: the store (or a batch's memo over it) and the
/// decoded catalog classes.
#[derive(Clone, Copy)]
pub struct Lookups<'a> {
    pub store: &'a dyn Store,
    pub classes: &'a ClassCache,
}

impl std::fmt::Debug for Lookups<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").finish_non_exhaustive()
    }
}

/// A kind's own rules on the write path. Every method has the neutral default.
#[async_trait]
pub trait Strategy: Send + Sync {
    /// Refuses users' writes of the status subresource (a claim's is the control plane's).
    fn check_status_write(&self) -> Result<(), ApiError> {
        Ok(())
    }

    /// Refuses DELETE for kinds whose objects end some other way (allocations).
    fn check_delete(&self) -> Result<(), ApiError> {
        Ok(())
    }

    /// Whether the authorizer decides on objects of this kind, so it is told of each write
    /// at once instead of waiting for its watch.
    fn informs_authorizer(&self) -> bool {
        false
    }

    /// What the server sets on a new object before admission (a claim's finalizer and first
    /// status).
    fn initialize(&self, _object: &mut TypedObject, _now: Time) {}

    /// Fills in what is derived from other objects; `old` on updates.
    async fn default(
        &self,
        _lookups: Lookups<'_>,
        _object: &mut TypedObject,
        _old: Option<&TypedObject>,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Checks an update against the stored object: immutable fields stay.
    fn admit_update(&self, _new: &TypedObject, _old: &TypedObject) -> Result<(), ApiError> {
        Ok(())
    }

    /// Checks an object against the objects it refers to.
    async fn admit(&self, _lookups: Lookups<'_>, _object: &TypedObject) -> Result<(), ApiError> {
        Ok(())
    }

    /// Refuses to delete what others still use.
    async fn admit_delete(&self, _store: &dyn Store, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// What goes with the object when it is deleted, in the same transaction.
    async fn leftovers(&self, _store: &dyn Store, _name: &str) -> Result<Vec<Scoped>, ApiError> {
        Ok(Vec::new())
    }
}

/// A kind with no logic of its own.
#[derive(Debug)]
pub struct Plain;

impl Strategy for Plain {}

/// A kind the authorizer decides on (Roles, Policies), with no other logic of its own.
#[derive(Debug)]
pub struct InformsAuthorizer;

impl Strategy for InformsAuthorizer {
    fn informs_authorizer(&self) -> bool {
        true
    }
}

/// The strategy of a kind.
pub fn strategy(info: &KindInfo) -> &'static dyn Strategy {
    match info.kind {
        "Allocation" => &allocation::Allocation,
        "Claim" => &claim::Claim,
        "Project" => &project::Project,
        "Quota" => &quota::Quota,
        "Resource" => &resource::Resource,
        "ResourceClass" => &resource_class::ResourceClass,
        "RoleBinding" => &role_binding::RoleBinding,
        "Tenant" => &tenant::Tenant,
        "Role" | "Policy" => &InformsAuthorizer,
        _ => &Plain,
    }
}

/// The strategy of a decoded object's kind.
pub fn of(object: &TypedObject) -> &'static dyn Strategy {
    strategy(object.info())
}
