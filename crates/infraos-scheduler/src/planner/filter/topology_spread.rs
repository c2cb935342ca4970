//! Filter `topologySpread`: with a `DoNotSchedule` spread term, placing the claim in the
//! node's domain would not take the domain more than `maxSkew` above the least loaded one.

use crate::planner::claim_ctx::ClaimCtx;
use crate::planner::explanation::Reject;
use crate::snapshot::NodeEntry;

#[inline]
pub(crate) fn check<'c>(node: Option<&'c NodeEntry>, ctx: &ClaimCtx<'c>) -> Result<(), Reject<'c>> {
    let Some(entry) = node else {
        return Ok(());
    };
    for spread in &ctx.spread {
        if !spread.allows(entry.topology_value(spread.key)) {
            return Err(Reject::Spread(spread.key));
        }
    }
    Ok(())
}
