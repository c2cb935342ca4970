//! Filter `selector`: the resource's labels (its own, then its node's) match the claim's
//! label selector.

use crate::planner::explanation::Reject;
use crate::planner::resource_filter::ResourceCheck;
use crate::snapshot::ResourceEntry;

#[inline]
pub(crate) fn check<'c>(
    check: &ResourceCheck<'c, '_>,
    resource: &'c ResourceEntry,
) -> Result<(), Reject<'c>> {
    match check.ctx.selector {
        Some(sel) if !sel.matches_with(|k| check.snapshot.label(resource, k)) => {
            Err(Reject::SelectorMismatch)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::filter::tests::{decide, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_resource_the_selector_does_not_match_is_skipped() {
        let snap = one_node(NodeSpec::default(), &[("zone", "b")]);
        let spec = serde_json::json!({
            "requests": [{"class": "compute", "amount": {"cpu": "1"}}],
            "selector": "zone=a"});
        assert_eq!(
            decide(&snap, spec.clone(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 selector mismatch."
        );
        decide(&snap, spec, &["selector"]).unwrap();
    }
}
