//! The kinds of `infraos.io/v1`, one module each.

mod allocation;
mod claim;
mod event;
mod governance;
mod inventory;
mod node;
mod policy;
mod rbac;
mod resource;
mod resource_class;
mod tenancy;
mod workload;

pub use allocation::*;
pub use claim::*;
pub use event::*;
pub use governance::*;
pub use inventory::*;
pub use node::*;
pub use policy::*;
pub use rbac::*;
pub use resource::*;
pub use resource_class::*;
pub use tenancy::*;
pub use workload::*;

use crate::object::Object;

pub type ResourceClass = Object<ResourceClassSpec>;
pub type Resource = Object<ResourceSpec>;
pub type Claim = Object<ClaimSpec>;
pub type Allocation = Object<AllocationSpec>;
pub type Node = Object<NodeSpec>;
pub type Tenant = Object<TenantSpec>;
pub type Project = Object<ProjectSpec>;
pub type Event = Object<EventSpec>;
pub type PriorityClass = Object<PriorityClassSpec>;
pub type Queue = Object<QueueSpec>;
pub type Quota = Object<QuotaSpec>;
pub type Role = Object<RoleSpec>;
pub type RoleBinding = Object<RoleBindingSpec>;
pub type Policy = Object<PolicySpec>;

/// Status with no fields yet, for kinds whose status is reserved for later use.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct EmptyStatus {}
