//! Filter `taints`: the claim tolerates every taint of the node.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    for (key, value) in &entry.taints {
        let tolerated = ctx
            .claim
            .spec
            .tolerations
            .iter()
            .any(|t| t.tolerates(key, value.as_deref()));
        if !tolerated {
            return Err(Reject::Untolerated(key));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cpu, decide, one_node};
    use infraos_api::kinds::{NodeSpec, Taint};

    #[test]
    fn an_untolerated_taint_keeps_the_claim_off() {
        let spec = NodeSpec {
            taints: vec![Taint {
                key: "gpu-only".into(),
                value: None,
            }],
            ..Default::default()
        };
        let snap = one_node(spec, &[]);
        assert_eq!(
            decide(&snap, cpu(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 untolerated taint gpu-only."
        );
        decide(&snap, cpu(), &["taints"]).unwrap();
    }
}
