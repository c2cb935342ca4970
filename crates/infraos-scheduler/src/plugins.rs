//! Score plugins. Each scores a feasible placement from 0 to 100; the profile weights them.

/// What a score plugin sees of a placement: the utilization (0..=1) of each resource it
/// uses after the claim is placed (for counted resources, of its fullest dimension).
pub struct ScoreInput<'a> {
    pub utilizations: &'a [f64],
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// 0 (worst) to 100 (best).
    fn score(&self, input: &ScoreInput<'_>) -> f64;
}

pub const NAMES: &[&str] = &["binpack", "spread"];

pub fn by_name(name: &str) -> Option<Box<dyn ScorePlugin>> {
    match name {
        "binpack" => Some(Box::new(BinPack)),
        "spread" => Some(Box::new(Spread)),
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
