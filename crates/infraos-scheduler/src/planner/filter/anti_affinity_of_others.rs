//! Filter `antiAffinityOfOthers`: anti-affinity binds both ways, as in Kubernetes: the
//! node is in no domain that a claim already placed in the project keeps this one out of
//! with its own required anti-affinity terms.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    for (key, domains) in &ctx.excluded_by_others {
        if entry
            .topology_value(key)
            .is_some_and(|v| domains.contains(v))
        {
            return Err(Reject::AntiAffinityOfOther);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{decide_after, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_placed_claims_anti_affinity_keeps_a_matching_one_out() {
        let snap = one_node(NodeSpec::default(), &[("zone", "a")]);
        let first = serde_json::json!({
            "requests": [{"class": "compute", "amount": {"cpu": "1"}}],
            "antiAffinity": [{"topologyKey": "zone", "selector": "app=web"}]});
        let spec = serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": "1"}}]});
        let err = decide_after(&snap, first.clone(), spec.clone(), &[]).unwrap_err();
        assert!(
            err.contains("anti-affinity of a claim there excludes this one"),
            "{err}"
        );
        decide_after(&snap, first, spec, &["antiAffinityOfOthers"]).unwrap();
    }
}
