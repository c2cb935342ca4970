//! Score plugins. Each scores a feasible placement; the profile (and a claim's own weights)
//! weight them.
//!
//! Absolute plugins (`binpack`, `spread`) score 0–100 on their own. Relative plugins (`cost`,
//! `energy`, `network`) report a raw figure where lower is better; the planner normalizes it
//! over the claim's feasible candidates (best 100, worst 0), as kube-scheduler's
//! NormalizeScore does, since a price or a wattage means nothing on a 0–100 scale by itself.

/// What a score plugin sees of a placement.
pub struct ScoreInput<'a> {
    /// Utilization (0..=1) of each resource the placement uses after the claim is placed (for
    /// counted resources, of its fullest dimension).
    pub utilizations: &'a [f64],
    /// Price per hour of what the claim takes: amounts × unit prices of the resources.
    pub cost: f64,
    /// Watts the claim's share of the resources draws (resource watts × share taken).
    pub watts: f64,
    /// Network distance from the claim's preferred location (`spec.scoring.near`).
    pub distance: f64,
    /// How well the placement honours the claim's soft terms (preferred affinity and
    /// anti-affinity, `ScheduleAnyway` spread), 0–100.
    pub affinity: f64,
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Absolute plugins: 0 (worst) to 100 (best). Relative plugins: a raw figure, lower better.
    fn score(&self, input: &ScoreInput<'_>) -> f64;
    /// Whether the score is a raw figure the planner normalizes over the candidates.
    fn relative(&self) -> bool {
        false
    }
}

pub const NAMES: &[&str] = &["binpack", "spread", "cost", "energy", "network", "affinity"];
/// Positions in [`NAMES`] of the plugins whose inputs cost something to compute.
pub const COST: usize = 2;
pub const ENERGY: usize = 3;
pub const NETWORK: usize = 4;
pub const AFFINITY: usize = 5;

pub fn by_name(name: &str) -> Option<Box<dyn ScorePlugin>> {
    match name {
        "binpack" => Some(Box::new(BinPack)),
        "spread" => Some(Box::new(Spread)),
        "cost" => Some(Box::new(Cost)),
        "energy" => Some(Box::new(Energy)),
        "network" => Some(Box::new(Network)),
        "affinity" => Some(Box::new(Affinity)),
        _ => None,
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Prefers the fullest resources, leaving whole machines free for large claims (Nomad's
/// default).
pub struct BinPack;

impl ScorePlugin for BinPack {
    fn name(&self) -> &'static str {
        "binpack"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        100.0 * mean(input.utilizations)
    }
}

/// Prefers the emptiest resources, spreading load and failure domains (kube-scheduler's
/// LeastAllocated).
pub struct Spread;

impl ScorePlugin for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        100.0 * (1.0 - mean(input.utilizations))
    }
}

/// Prefers the cheapest placement (unit prices from ResourceClass, overridden per Resource).
pub struct Cost;

impl ScorePlugin for Cost {
    fn name(&self) -> &'static str {
        "cost"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        input.cost
    }
    fn relative(&self) -> bool {
        true
    }
}

/// Prefers the placement drawing the fewest watts (Resource `watts`).
pub struct Energy;

impl ScorePlugin for Energy {
    fn name(&self) -> &'static str {
        "energy"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        input.watts
    }
    fn relative(&self) -> bool {
        true
    }
}

/// Prefers placements near the claim's preferred location, by the profile's distance matrix.
pub struct Network;

impl ScorePlugin for Network {
    fn name(&self) -> &'static str {
        "network"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        input.distance
    }
    fn relative(&self) -> bool {
        true
    }
}

/// Prefers nodes that honour the claim's soft terms: in the domains of preferred affinity,
/// out of those of preferred anti-affinity, in the emptiest domains of `ScheduleAnyway`
/// spread terms (kube-scheduler's InterPodAffinity and PodTopologySpread scoring).
pub struct Affinity;

impl ScorePlugin for Affinity {
    fn name(&self) -> &'static str {
        "affinity"
    }
    fn score(&self, input: &ScoreInput<'_>) -> f64 {
        input.affinity
    }
}
