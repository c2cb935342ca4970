//! Filter `tenantPlacement`: a tenant with a placement selector (its compliance domain) is
//! served only by resources whose labels (their own, then their node's) match it; a
//! claim's own selector cannot widen it. A security promise: no profile may turn it off.

use crate::planner::explanation::Reject;
use crate::planner::resource_filter::ResourceCheck;
use crate::snapshot::ResourceEntry;

#[inline]
pub(crate) fn check<'c>(
    check: &ResourceCheck<'c, '_>,
    resource: &'c ResourceEntry,
) -> Result<(), Reject<'c>> {
    match check.ctx.tenant_placement {
        Some(sel) if !sel.matches_with(|k| check.snapshot.label(resource, k)) => {
            Err(Reject::TenantPlacement)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::filter::tests::{cpu, decide, one_node};
    use crate::planner::resource_filter::tests::refused;
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_resource_outside_the_tenants_placement_is_skipped_and_the_filter_stays_on() {
        let mut snap = one_node(NodeSpec::default(), &[]);
        snap.upsert_project("p", "fin");
        let sel: infraos_api::LabelSelector = "compliance=pci".parse().unwrap();
        snap.upsert_tenant("fin", Some(&sel));
        assert_eq!(
            decide(&snap, cpu(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 outside the tenant's placement."
        );
        let err = refused("tenantPlacement");
        assert!(
            err.contains("cannot be turned off") && err.contains("security promise"),
            "{err}"
        );
        // In its domain it lands.
        let snap = one_node(NodeSpec::default(), &[("compliance", "pci")]);
        let mut snap = snap;
        snap.upsert_project("p", "fin");
        snap.upsert_tenant("fin", Some(&sel));
        decide(&snap, cpu(), &[]).unwrap();
    }
}
