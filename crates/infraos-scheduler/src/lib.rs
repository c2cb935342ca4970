//! The InfraOS scheduler: a pure library. A [`Snapshot`] of the cluster and a batch of claims
//! go in, a [`Plan`] comes out; no I/O, no async runtime, no clock, so it can be benchmarked
//! and property-tested on its own (DESIGN §3). The server feeds the snapshot from watches and
//! commits plans through its plan applier, which re-checks each placement with
//! [`Snapshot::fits`].
#![forbid(unsafe_code)]

pub mod governance;
mod order;
pub mod planner;
pub mod plugins;
mod preemption;
pub mod profile;
pub mod snapshot;

pub use governance::{AllocationMeta, QuotaEntry};
pub use planner::{
    Decision, Explanation, NODE_FILTERS, NodeFilter, Outcome, Placement, Plan, PreemptionPlan,
    RESOURCE_FILTERS, ResourceFilter, Scheduler, Victim, claim_priority,
};
pub use profile::{Profile, ProfileError};
pub use snapshot::{FitError, Snapshot};

#[cfg(test)]
mod constraint_tests;
#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod governance_tests;
#[cfg(test)]
mod preemption_tests;
#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod test_fixtures;
#[cfg(test)]
mod tests;
