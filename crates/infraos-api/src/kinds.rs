//! The kinds of `infraos.io/v1`, one module each, and their one registry (the table below,
//! expanded by [`crate::registry`]).

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

crate::registry::registry! {
    ResourceClass => ResourceClassSpec,
    Resource => ResourceSpec,
    Claim => ClaimSpec,
    Allocation => AllocationSpec,
    Node => NodeSpec,
    Tenant => TenantSpec,
    Project => ProjectSpec,
    Event => EventSpec,
    PriorityClass => PriorityClassSpec,
    Queue => QueueSpec,
    Quota => QuotaSpec,
    Role => RoleSpec,
    RoleBinding => RoleBindingSpec,
    Policy => PolicySpec,
}

/// Status with no fields yet, for kinds whose status is reserved for later use.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct EmptyStatus {}

#[cfg(test)]
#[path = "kinds/registry_tests.rs"]
mod registry_tests;
