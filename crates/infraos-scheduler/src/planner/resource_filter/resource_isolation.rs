//! Filter `resourceIsolation`: a resource labelled for a tenant serves only that tenant's
//! claims. A security promise: no profile may turn it off.

use crate::planner::explanation::Reject;
use crate::planner::resource_filter::ResourceCheck;
use crate::snapshot::ResourceEntry;

#[inline]
pub(crate) fn check<'c>(
    check: &ResourceCheck<'c, '_>,
    resource: &'c ResourceEntry,
) -> Result<(), Reject<'c>> {
    match &resource.tenant {
        Some(owner) if check.ctx.tenant != Some(owner.as_str()) => Err(Reject::Isolated),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::filter::tests::{cpu, decide, one_node};
    use crate::planner::resource_filter::tests::refused;
    use infraos_api::kinds::{NodeSpec, ResourceSpec, TENANT_LABEL};
    use infraos_api::{Labels, Quantity};

    #[test]
    fn another_tenants_resource_is_skipped_and_the_filter_stays_on() {
        let mut snap = one_node(NodeSpec::default(), &[]);
        let labels: Labels = [(TENANT_LABEL.to_string(), "other".to_string())]
            .into_iter()
            .collect();
        snap.upsert_resource(
            "n0-compute",
            &labels,
            &ResourceSpec {
                class: "compute".into(),
                node: Some("n0".into()),
                capacity: [("cpu".to_string(), Quantity::from_units(8))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        );
        assert_eq!(
            decide(&snap, cpu(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 isolated for another tenant."
        );
        let err = refused("resourceIsolation");
        assert!(
            err.contains("cannot be turned off") && err.contains("security promise"),
            "{err}"
        );
    }
}
