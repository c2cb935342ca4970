//! Filter `topologySpread`: with a `DoNotSchedule` spread term, placing the claim in the
//! node's domain would not take the domain more than `maxSkew` above the least loaded one.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::{NodeId, Snapshot};

pub(crate) fn check<'c>(
    snapshot: &'c Snapshot,
    node: Option<NodeId>,
    ctx: &ClaimCtx<'c>,
) -> Result<(), Reject<'c>> {
    let Some(n) = node else {
        return Ok(());
    };
    let entry = snapshot.node(n);
    for spread in &ctx.spread {
        if !spread.allows(entry.topology_value(spread.key)) {
            return Err(Reject::Spread(spread.key));
        }
    }
    Ok(())
}
