//! The resource filters: the checks a resource (on the candidate node, or a pool) must pass
//! before a request is fitted to it, in the order they run. A resource that fails one is
//! skipped and the next one tried; when no resource serves the request, the candidate is
//! rejected for the reason closest to fitting (see [`Reject::rank`]).
//!
//! Statically dispatched like the node filters (`filter.rs`), for the same reason: they run
//! for every resource of every candidate of every claim. The list, the names and which of
//! them a profile may turn off live with the node filters' in `filter/list.rs`; the ones
//! that keep tenants apart run whatever the profile says.

pub(crate) mod colocate;
pub(crate) mod label_selector;
pub(crate) mod resource_isolation;
pub(crate) mod tenant_placement;

use super::claim_ctx::ClaimCtx;
use super::explanation::Reject;
use super::filter::list::{FilterSet, ResourceFilter};
use crate::snapshot::{ResourceEntry, Snapshot};

/// What a resource filter sees of the candidate besides the resource itself.
pub(crate) struct ResourceCheck<'c, 'r> {
    pub(crate) snapshot: &'c Snapshot,
    pub(crate) ctx: &'r ClaimCtx<'c>,
    /// The topology values every pool must share (`topology.colocate`, in its key order):
    /// the candidate node's, or the anchor pool's.
    pub(crate) reference: &'r [Option<&'c str>],
}

impl ResourceFilter {
    /// Checks `resource` for a request of the claim of `check.ctx`.
    #[inline(always)]
    pub(crate) fn check<'c>(
        self,
        check: &ResourceCheck<'c, '_>,
        resource: &'c ResourceEntry,
    ) -> Result<(), Reject<'c>> {
        match self {
            ResourceFilter::ResourceIsolation => resource_isolation::check(check, resource),
            ResourceFilter::TenantPlacement => tenant_placement::check(check, resource),
            ResourceFilter::Selector => label_selector::check(check, resource),
            ResourceFilter::Colocate => colocate::check(check, resource),
        }
    }
}

/// Expands `$step!(filter)` for each filter of `RESOURCE_FILTERS`, in that order: written
/// out for the reason given at `node_filters_in_order` (`filter.rs`). A test checks that
/// this order is the array's.
macro_rules! resource_filters_in_order {
    ($step:ident) => {
        $step!(ResourceFilter::ResourceIsolation);
        $step!(ResourceFilter::TenantPlacement);
        $step!(ResourceFilter::Selector);
        $step!(ResourceFilter::Colocate);
    };
}

/// Runs the resource filters of `set` on `resource`, in order; the first rejection wins.
/// The filters that keep tenants apart run even where `set` leaves them out.
#[inline(always)]
pub(crate) fn run<'c>(
    set: FilterSet,
    check: &ResourceCheck<'c, '_>,
    resource: &'c ResourceEntry,
) -> Result<(), Reject<'c>> {
    macro_rules! step {
        ($filter:expr) => {
            if !$filter.can_disable() || set.runs_on_resources($filter) {
                $filter.check(check, resource)?;
            }
        };
    }
    resource_filters_in_order!(step);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::filter::list::{RESOURCE_FILTERS, ResourceFilter};
    use crate::{Profile, Scheduler};

    /// Why a profile turning off `name` is refused.
    pub(crate) fn refused(name: &str) -> String {
        let profile = Profile {
            disabled_filters: vec![name.to_string()],
            ..Profile::default()
        };
        match Scheduler::new(profile) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn filters_run_in_the_order_of_the_list() {
        let mut seen = Vec::new();
        macro_rules! push {
            ($filter:expr) => {
                seen.push($filter)
            };
        }
        resource_filters_in_order!(push);
        assert_eq!(seen, RESOURCE_FILTERS);
    }

    #[test]
    fn names_are_unique_and_resolve() {
        for f in RESOURCE_FILTERS {
            assert_eq!(ResourceFilter::by_name(f.name()), Some(f));
            assert!(!f.reason().is_empty());
            assert_eq!(crate::NodeFilter::by_name(f.name()), None, "{}", f.name());
        }
        assert_eq!(ResourceFilter::by_name("nope"), None);
    }
}
