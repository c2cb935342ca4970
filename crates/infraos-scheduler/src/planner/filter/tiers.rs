//! Filter `tiers`: a claim with a workload needs a node with the tiers it runs on (the
//! execute tier); a placement on pools only cannot run a workload at all.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    if ctx.needs_tiers.is_empty() {
        return Ok(());
    }
    let Some(entry) = node else {
        return Err(Reject::WorkloadNeedsNode);
    };
    let held = entry.tiers;
    match ctx.needs_tiers.iter().find(|t| held & t.bit() == 0) {
        Some(tier) => Err(Reject::MissingTier(tier.as_str())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{decide, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_workload_needs_the_execute_tier() {
        let snap = one_node(NodeSpec::default(), &[]);
        let spec = serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": "1"}}],
                                      "workload": {"command": "/bin/true"}});
        assert_eq!(
            decide(&snap, spec.clone(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 node lacks the execute tier."
        );
        decide(&snap, spec, &["tiers"]).unwrap();
    }
}
