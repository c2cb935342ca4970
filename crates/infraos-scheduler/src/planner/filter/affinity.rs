//! Filter `affinity`: the node is in a topology domain (a value of the term's key) where a
//! matching claim of the project runs, for each required affinity term; a term no claim
//! matches yet lets the first one land anywhere with the key.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    for term in &ctx.affinity {
        let ok = match entry.topology_value(term.key) {
            Some(v) => term.domains.contains(v) || (term.domains.is_empty() && term.first),
            None => false,
        };
        if !ok {
            return Err(Reject::Affinity(term.key));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{decide, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_node_without_the_topology_key_fails_a_required_term() {
        let snap = one_node(NodeSpec::default(), &[]);
        let spec = serde_json::json!({
            "requests": [{"class": "compute", "amount": {"cpu": "1"}}],
            "affinity": [{"topologyKey": "zone", "selector": "app=db"}]});
        let err = decide(&snap, spec.clone(), &[]).unwrap_err();
        assert!(
            err.contains("affinity: no matching claim in this zone"),
            "{err}"
        );
        decide(&snap, spec, &["affinity"]).unwrap();
    }
}
