//! Filter `nodeState`: the node is registered, ready and schedulable (not cordoned).

use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check(node: Option<&NodeEntry>) -> Result<(), Reject<'static>> {
    let Some(entry) = node else {
        return Ok(());
    };
    if !entry.registered {
        return Err(Reject::NodeNotRegistered);
    }
    if !entry.ready {
        return Err(Reject::NodeNotReady);
    }
    if entry.unschedulable {
        return Err(Reject::NodeUnschedulable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cpu, decide, one_node};
    use infraos_api::kinds::NodeSpec;

    #[test]
    fn a_cordoned_node_is_skipped() {
        let spec = NodeSpec {
            unschedulable: true,
            ..Default::default()
        };
        let snap = one_node(spec, &[]);
        assert_eq!(
            decide(&snap, cpu(), &[]).unwrap_err(),
            "0/1 nodes are available: 1 node unschedulable."
        );
        decide(&snap, cpu(), &["nodeState"]).unwrap();
    }
}
