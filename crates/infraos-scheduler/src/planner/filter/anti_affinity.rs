//! Filter `antiAffinity`: the node is in no topology domain where a claim matching one of
//! the claim's required anti-affinity terms runs.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    for term in &ctx.anti_affinity {
        if entry
            .topology_value(term.key)
            .is_some_and(|v| term.domains.contains(v))
        {
            return Err(Reject::AntiAffinity(term.key));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{decide_after, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_matching_claim_in_the_domain_keeps_the_claim_out() {
        let snap = one_node(NodeSpec::default(), &[("zone", "a")]);
        let first = serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": "1"}}]});
        let spec = serde_json::json!({
            "requests": [{"class": "compute", "amount": {"cpu": "1"}}],
            "antiAffinity": [{"topologyKey": "zone", "selector": "app=web"}]});
        let err = decide_after(&snap, first.clone(), spec.clone(), &[]).unwrap_err();
        assert!(
            err.contains("anti-affinity: a matching claim in this zone"),
            "{err}"
        );
        decide_after(&snap, first, spec, &["antiAffinity"]).unwrap();
    }
}
