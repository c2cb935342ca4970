//! The scheduler profile: which score plugins run with what weight, and how many feasible
//! candidates to find before choosing (sampling keeps large clusters fast).

use std::collections::BTreeMap;

use infraos_api::Duration;
use serde::{Deserialize, Serialize};

use crate::plugins::{self, ScorePlugin};

/// Every score plugin (in `plugins::NAMES` order) and the profile's weight for each (0 for
/// those it does not enable; a claim may still weight them).
pub(crate) type WeightedPlugins = (Vec<Box<dyn ScorePlugin>>, Vec<f64>);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// Score plugins by name with their weights, e.g. `{binpack: 1}` or `{spread: 2, binpack: 1}`.
    /// `affinity` scores only claims with soft terms (it weighs nothing for the rest).
    #[serde(default = "default_scores")]
    pub scores: BTreeMap<String, f64>,
    /// Share of candidate nodes to find feasible before choosing. 0 (the default) adapts to
    /// the cluster: max(minFeasibleNodes, 2·(⌊log2 n⌋ + 1)), which is 32 up to 65,535
    /// nodes: more than Nomad's log2(n) limit, far fewer than kube-scheduler's 5% (500 of
    /// 10,000), which costs nine times as much per claim for little better placement.
    #[serde(default)]
    pub percentage_of_nodes_to_score: u32,
    /// Never stop looking before this many feasible nodes (or all of them, if fewer).
    #[serde(default = "default_min_feasible")]
    pub min_feasible_nodes: usize,
    #[serde(default)]
    pub preemption: PreemptionConfig,
    #[serde(default)]
    pub fair_sharing: FairSharing,
    /// For the `network` plugin: distances between topology values, keyed `a/b` (either
    /// order), e.g. `{"eu-west/eu-east": 10, "eu-west/us-east": 80}`.
    #[serde(default)]
    pub network_distances: BTreeMap<String, f64>,
    /// Distance between different values the matrix does not list.
    #[serde(default = "default_distance")]
    pub default_network_distance: f64,
    /// Filters this profile does not run, by name: node filters (`tiers`, `nodeState`,
    /// `affinity`, `antiAffinity`, `antiAffinityOfOthers`, `topologySpread`, `taints`) and
    /// resource filters (`selector`, `colocate`); every other one runs. An unknown name is
    /// refused, and so are the filters that keep tenants apart (`tenantIsolation`,
    /// `resourceIsolation`, `tenantPlacement`): those are security promises.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_filters: Vec<String>,
}

fn default_distance() -> f64 {
    100.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PreemptionConfig {
    /// Off: claims wait however high their priority.
    pub enabled: bool,
    /// A claim preempts only allocations at least this much lower in priority (≥ 1, so equal
    /// priorities never preempt each other).
    pub min_priority_gap: u32,
}

impl Default for PreemptionConfig {
    fn default() -> Self {
        PreemptionConfig {
            enabled: true,
            min_priority_gap: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FairSharing {
    /// A waiting claim's queue share counts half for every half-life it has waited, so no
    /// queue starves behind a heavier one.
    pub aging_half_life: Duration,
}

impl Default for FairSharing {
    fn default() -> Self {
        FairSharing {
            aging_half_life: Duration::from_secs(300),
        }
    }
}

fn default_scores() -> BTreeMap<String, f64> {
    [("binpack".to_string(), 1.0), ("affinity".to_string(), 1.0)]
        .into_iter()
        .collect()
}

fn default_min_feasible() -> usize {
    32
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            scores: default_scores(),
            percentage_of_nodes_to_score: 0,
            min_feasible_nodes: default_min_feasible(),
            preemption: PreemptionConfig::default(),
            fair_sharing: FairSharing::default(),
            network_distances: BTreeMap::new(),
            default_network_distance: default_distance(),
            disabled_filters: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("scheduler profile: unknown score plugin {0:?} (known: {known})", known = plugins::NAMES.join(", "))]
    UnknownPlugin(String),
    #[error("scheduler profile: weight of {0:?} must be a finite number >= 0")]
    BadWeight(String),
    #[error("scheduler profile: percentageOfNodesToScore must be at most 100")]
    BadPercentage,
    #[error("scheduler profile: at most {0} score plugins")]
    TooManyPlugins(usize),
    #[error("scheduler profile: preemption.minPriorityGap must be at least 1")]
    BadPriorityGap,
    #[error("scheduler profile: networkDistances: {0}")]
    BadDistance(String),
    /// The unknown name, and the known ones a profile may turn off.
    #[error("scheduler profile: disabledFilters: unknown filter {0:?} (known: {1})")]
    UnknownFilter(String, String),
    /// A filter that keeps tenants apart: a security promise no profile may drop.
    #[error(
        "scheduler profile: disabledFilters: {0:?} cannot be turned off: it keeps tenants \
         apart (isolation, placement), a security promise rather than a placement preference"
    )]
    SecurityFilter(String),
}

impl Profile {
    pub(crate) fn build_plugins(&self) -> Result<WeightedPlugins, ProfileError> {
        if self.percentage_of_nodes_to_score > 100 {
            return Err(ProfileError::BadPercentage);
        }
        if self.preemption.min_priority_gap == 0 {
            return Err(ProfileError::BadPriorityGap);
        }
        for (pair, d) in &self.network_distances {
            if pair
                .split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
            {
                return Err(ProfileError::BadDistance(format!(
                    "{pair:?} must name two values as a/b"
                )));
            }
            if !d.is_finite() || *d < 0.0 {
                return Err(ProfileError::BadDistance(format!(
                    "{pair:?} must be a finite number >= 0"
                )));
            }
        }
        if !self.default_network_distance.is_finite() || self.default_network_distance < 0.0 {
            return Err(ProfileError::BadDistance(
                "defaultNetworkDistance must be a finite number >= 0".into(),
            ));
        }
        let mut weights = vec![0.0; plugins::NAMES.len()];
        for (name, weight) in &self.scores {
            if !weight.is_finite() || *weight < 0.0 {
                return Err(ProfileError::BadWeight(name.clone()));
            }
            let i = plugins::NAMES
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| ProfileError::UnknownPlugin(name.clone()))?;
            weights[i] = *weight;
        }
        let registry = plugins::NAMES
            .iter()
            .filter_map(|n| plugins::by_name(n))
            .collect();
        Ok((registry, weights))
    }

    /// The network distance between two values of a topology key.
    pub fn distance(&self, a: &str, b: &str) -> f64 {
        if a == b {
            return 0.0;
        }
        self.network_distances
            .get(&format!("{a}/{b}"))
            .or_else(|| self.network_distances.get(&format!("{b}/{a}")))
            .copied()
            .unwrap_or(self.default_network_distance)
    }

    /// How many feasible candidates to find among `total` before choosing.
    pub fn feasible_to_find(&self, total: usize) -> usize {
        if total <= self.min_feasible_nodes {
            return total.max(1);
        }
        let wanted = if self.percentage_of_nodes_to_score == 0 {
            2 * (usize::BITS - total.leading_zeros()) as usize
        } else {
            total * self.percentage_of_nodes_to_score as usize / 100
        };
        wanted.max(self.min_feasible_nodes).min(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_adapts_to_size() {
        let p = Profile::default();
        assert_eq!(p.feasible_to_find(20), 20);
        assert_eq!(p.feasible_to_find(1000), 32);
        assert_eq!(p.feasible_to_find(10_000), 32);
        assert_eq!(p.feasible_to_find(1 << 20), 42);
        assert_eq!(p.feasible_to_find(100), 32);
        let all = Profile {
            percentage_of_nodes_to_score: 100,
            ..Profile::default()
        };
        assert_eq!(all.feasible_to_find(10_000), 10_000);
    }

    #[test]
    fn filters_are_turned_off_by_name_and_unknown_names_refused() {
        let p: Profile =
            serde_json::from_value(serde_json::json!({"disabledFilters": ["taints"]})).unwrap();
        assert_eq!(p.disabled_filters, vec!["taints".to_string()]);
        assert!(crate::Scheduler::new(p).is_ok());
        let p: Profile =
            serde_json::from_value(serde_json::json!({"disabledFilters": ["magic"]})).unwrap();
        let err = crate::Scheduler::new(p).err().unwrap();
        assert!(matches!(&err, ProfileError::UnknownFilter(name, _) if name == "magic"));
        assert!(err.to_string().contains("known: tiers, nodeState"), "{err}");
        // The filters that keep tenants apart are not for a profile to drop.
        for name in ["tenantIsolation", "resourceIsolation", "tenantPlacement"] {
            let p = Profile {
                disabled_filters: vec![name.to_string()],
                ..Profile::default()
            };
            let err = crate::Scheduler::new(p).err().unwrap();
            assert!(matches!(&err, ProfileError::SecurityFilter(n) if n == name));
            assert!(err.to_string().contains("security promise"), "{err}");
        }
        let p: Profile = serde_json::from_value(
            serde_json::json!({"disabledFilters": ["selector", "colocate"]}),
        )
        .unwrap();
        assert!(crate::Scheduler::new(p).is_ok());
        // Not written out when empty: a default profile reads back as before.
        let text = serde_json::to_string(&Profile::default()).unwrap();
        assert!(!text.contains("disabledFilters"), "{text}");
    }

    #[test]
    fn rejects_unknown_plugins_and_bad_weights() {
        let mut p = Profile::default();
        p.scores.insert("magic".into(), 1.0);
        assert!(matches!(
            p.build_plugins(),
            Err(ProfileError::UnknownPlugin(_))
        ));
        let mut p = Profile::default();
        p.scores.insert("spread".into(), f64::NAN);
        assert!(matches!(p.build_plugins(), Err(ProfileError::BadWeight(_))));
    }
}
