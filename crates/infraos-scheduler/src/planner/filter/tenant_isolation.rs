//! Filter `tenantIsolation`: a node labelled for a tenant takes only that tenant's claims.
//! A security promise: no profile may turn it off.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    match &entry.tenant {
        Some(owner) if ctx.tenant != Some(owner.as_str()) => Err(Reject::Isolated),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cpu, decide, one_node};
    use infraos_api::kinds::{NodeSpec, TENANT_LABEL};

    #[test]
    fn another_tenants_node_is_skipped() {
        let snap = one_node(NodeSpec::default(), &[(TENANT_LABEL, "other")]);
        assert_eq!(
            decide(&snap, cpu(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 isolated for another tenant."
        );
        // A security promise: no profile turns it off (see `resource_filter::tests::refused`).
        let err = crate::planner::resource_filter::tests::refused("tenantIsolation");
        assert!(
            err.contains("cannot be turned off") && err.contains("security promise"),
            "{err}"
        );
    }
}
