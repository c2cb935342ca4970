//! The list of node filters: their names (as a profile's `disabledFilters` names them),
//! the reason each rejects a node for, their order, and the set a profile runs. Kept apart
//! from the checks (`filter.rs`, one file each under `filter/`) so that the scheduler's
//! state and the profile depend on the list, not on what the checks need.

use crate::profile::ProfileError;

/// One node filter. The order of [`NODE_FILTERS`] is the order they run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFilter {
    Tiers,
    NodeState,
    Affinity,
    AntiAffinity,
    AntiAffinityOfOthers,
    TopologySpread,
    TenantIsolation,
    Taints,
}

/// Every node filter, in the order they run.
pub const NODE_FILTERS: [NodeFilter; 8] = [
    NodeFilter::Tiers,
    NodeFilter::NodeState,
    NodeFilter::Affinity,
    NodeFilter::AntiAffinity,
    NodeFilter::AntiAffinityOfOthers,
    NodeFilter::TopologySpread,
    NodeFilter::TenantIsolation,
    NodeFilter::Taints,
];

impl NodeFilter {
    /// The name a profile's `disabledFilters` uses.
    pub const fn name(self) -> &'static str {
        match self {
            NodeFilter::Tiers => "tiers",
            NodeFilter::NodeState => "nodeState",
            NodeFilter::Affinity => "affinity",
            NodeFilter::AntiAffinity => "antiAffinity",
            NodeFilter::AntiAffinityOfOthers => "antiAffinityOfOthers",
            NodeFilter::TopologySpread => "topologySpread",
            NodeFilter::TenantIsolation => "tenantIsolation",
            NodeFilter::Taints => "taints",
        }
    }

    /// What it rejects a node for, as explanations count it.
    pub const fn reason(self) -> &'static str {
        match self {
            NodeFilter::Tiers => "node lacks the … tier",
            NodeFilter::NodeState => "node not registered / not ready / unschedulable",
            NodeFilter::Affinity => "affinity: no matching claim in this …",
            NodeFilter::AntiAffinity => "anti-affinity: a matching claim in this …",
            NodeFilter::AntiAffinityOfOthers => "anti-affinity of a claim there excludes this one",
            NodeFilter::TopologySpread => "topology spread: this … would exceed maxSkew",
            NodeFilter::TenantIsolation => "isolated for another tenant",
            NodeFilter::Taints => "untolerated taint …",
        }
    }

    pub fn by_name(name: &str) -> Option<NodeFilter> {
        NODE_FILTERS.into_iter().find(|f| f.name() == name)
    }

    pub(crate) const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The filters a profile runs: every one but those it turns off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FilterSet(u16);

impl FilterSet {
    pub(crate) const ALL: FilterSet = FilterSet(u16::MAX);

    /// From a profile's `disabledFilters`; an unknown name is an error that lists the known.
    pub(crate) fn without(disabled: &[String]) -> Result<FilterSet, ProfileError> {
        let mut set = FilterSet::ALL;
        for name in disabled {
            let filter = NodeFilter::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = NODE_FILTERS.iter().map(|f| f.name()).collect();
                ProfileError::UnknownFilter(name.clone(), known.join(", "))
            })?;
            set.0 &= !filter.bit();
        }
        Ok(set)
    }

    pub(crate) fn runs(self, filter: NodeFilter) -> bool {
        self.0 & filter.bit() != 0
    }
}
