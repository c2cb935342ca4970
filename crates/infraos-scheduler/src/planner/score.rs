//! Scoring: the weighted total of the plugins' scores, the normalization of relative
//! plugins over the candidates, and the figures plugins score (cost, watts, distance).

use super::claim_ctx::{ClaimCtx, Need};
use super::engine::{Candidate, MAX_PLUGINS, Scheduler};
use crate::plugins::ScorePlugin;
use crate::snapshot::{NodeId, ResourceId, Snapshot};
use infraos_api::quantity::NANOS_PER_UNIT;

/// Σ(wᵢ·sᵢ)/Σwᵢ over the plugins with a weight, 0 when none has one.
pub(crate) fn weighted_total(weights: &[f64; MAX_PLUGINS], scores: &[f64; MAX_PLUGINS]) -> f64 {
    let (sum, total) = weights
        .iter()
        .zip(scores)
        .filter(|(w, _)| **w > 0.0)
        .fold((0.0, 0.0), |(sum, total), (w, s)| (sum + w * s, total + w));
    if total > 0.0 { sum / total } else { 0.0 }
}

/// Turns relative plugins' raw figures (lower is better) into 0–100 over the candidates,
/// then sets each candidate's weighted total.
pub(crate) fn normalize(
    candidates: &mut [Candidate],
    plugins: &[Box<dyn ScorePlugin>],
    weights: &[f64; MAX_PLUGINS],
) {
    for (i, plugin) in plugins.iter().enumerate() {
        if weights[i] <= 0.0 || !plugin.relative() {
            continue;
        }
        let (lo, hi) = candidates.iter().fold((f64::MAX, f64::MIN), |(lo, hi), c| {
            (lo.min(c.plugin_scores[i]), hi.max(c.plugin_scores[i]))
        });
        for c in candidates.iter_mut() {
            c.plugin_scores[i] = if hi > lo {
                100.0 * (hi - c.plugin_scores[i]) / (hi - lo)
            } else {
                100.0
            };
        }
    }
    for c in candidates.iter_mut() {
        c.score = weighted_total(weights, &c.plugin_scores);
    }
}

impl Scheduler {
    /// Price per hour of the candidate's picks.
    pub(crate) fn picks_cost(&self, snapshot: &Snapshot, ctx: &ClaimCtx<'_>) -> f64 {
        let mut cost = 0.0;
        for pick in &self.scratch.picks {
            let Some(entry) = snapshot.resource(pick.resource) else {
                continue;
            };
            match &ctx.requests[pick.request].need {
                Need::Counted { dims, .. } => {
                    for &(i, nanos) in dims {
                        let price = entry.prices.get(i).copied().unwrap_or(0.0);
                        cost += price * nanos as f64 / NANOS_PER_UNIT as f64;
                    }
                }
                Need::Items { count, .. } => cost += entry.item_price * *count as f64,
            }
        }
        cost
    }

    /// Watts the candidate's share of each resource draws.
    pub(crate) fn picks_watts(&self, snapshot: &Snapshot, ctx: &ClaimCtx<'_>) -> f64 {
        let mut watts = 0.0;
        for pick in &self.scratch.picks {
            let Some(entry) = snapshot.resource(pick.resource) else {
                continue;
            };
            if entry.watts <= 0.0 {
                continue;
            }
            let share = match &ctx.requests[pick.request].need {
                Need::Counted { dims, .. } => dims
                    .iter()
                    .map(|&(i, nanos)| {
                        let cap = entry.cap.get(i).copied().unwrap_or(0);
                        if cap > 0 {
                            nanos as f64 / cap as f64
                        } else {
                            0.0
                        }
                    })
                    .fold(0.0, f64::max),
                Need::Items { count, .. } => *count as f64 / entry.items.len().max(1) as f64,
            };
            watts += entry.watts * share;
        }
        watts
    }

    /// Distance from the claim's preferred location (`spec.scoring.near`).
    pub(crate) fn distance(
        &self,
        snapshot: &Snapshot,
        node: Option<NodeId>,
        anchor_pool: Option<ResourceId>,
        ctx: &ClaimCtx<'_>,
    ) -> f64 {
        ctx.near
            .iter()
            .map(|(key, want)| {
                let have = match (node, anchor_pool) {
                    (Some(n), _) => snapshot.node(n).topology_value(key),
                    (None, Some(p)) => snapshot.resource(p).and_then(|r| snapshot.label(r, key)),
                    (None, None) => None,
                };
                match have {
                    Some(have) => self.profile.distance(want, have),
                    None => self.profile.default_network_distance,
                }
            })
            .sum()
    }
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
