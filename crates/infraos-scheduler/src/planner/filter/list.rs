//! The lists of filters: node filters (is this node a candidate at all?) and resource
//! filters (may this resource serve a request?), with their names (as a profile's
//! `disabledFilters` names them), the reason each rejects for, their order, whether a
//! profile may turn them off, and the set a profile runs. Kept apart from the checks
//! (`filter.rs` and `resource_filter.rs`, one file each under `filter/` and
//! `resource_filter/`) so that the scheduler's state and the profile depend on the lists,
//! not on what the checks need.
//!
//! The filters that keep tenants apart (`tenantIsolation`, `resourceIsolation`,
//! `tenantPlacement`) are security promises, not placement preferences: no profile may turn
//! them off, and one that names them is refused.

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

    /// Whether a profile may turn it off: not the isolation of tenants.
    pub const fn can_disable(self) -> bool {
        !matches!(self, NodeFilter::TenantIsolation)
    }

    pub fn by_name(name: &str) -> Option<NodeFilter> {
        NODE_FILTERS.into_iter().find(|f| f.name() == name)
    }

    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// One resource filter: a check a resource (on the candidate node, or a pool) must pass
/// before a request is fitted to it. The order of [`RESOURCE_FILTERS`] is the order they
/// run in; a resource rejected for one is counted under the reason closest to fitting.
/// Whether it is of the request's class and has room are not filters: they are what a
/// request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceFilter {
    ResourceIsolation,
    TenantPlacement,
    Selector,
    Colocate,
}

/// Every resource filter, in the order they run.
pub const RESOURCE_FILTERS: [ResourceFilter; 4] = [
    ResourceFilter::ResourceIsolation,
    ResourceFilter::TenantPlacement,
    ResourceFilter::Selector,
    ResourceFilter::Colocate,
];

impl ResourceFilter {
    /// The name a profile's `disabledFilters` uses.
    pub const fn name(self) -> &'static str {
        match self {
            ResourceFilter::ResourceIsolation => "resourceIsolation",
            ResourceFilter::TenantPlacement => "tenantPlacement",
            ResourceFilter::Selector => "selector",
            ResourceFilter::Colocate => "colocate",
        }
    }

    /// What it rejects a resource for, as explanations count it.
    pub const fn reason(self) -> &'static str {
        match self {
            ResourceFilter::ResourceIsolation => "isolated for another tenant",
            ResourceFilter::TenantPlacement => "outside the tenant's placement",
            ResourceFilter::Selector => "selector mismatch",
            ResourceFilter::Colocate => "topology mismatch",
        }
    }

    /// Whether a profile may turn it off: not the isolation of tenants nor their placement.
    pub const fn can_disable(self) -> bool {
        !matches!(
            self,
            ResourceFilter::ResourceIsolation | ResourceFilter::TenantPlacement
        )
    }

    pub fn by_name(name: &str) -> Option<ResourceFilter> {
        RESOURCE_FILTERS.into_iter().find(|f| f.name() == name)
    }

    /// Above the node filters' bits.
    pub(crate) const fn bit(self) -> u32 {
        1 << (16 + self as u32)
    }
}

/// The filters a profile runs, node and resource filters alike: every one but those it
/// turns off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FilterSet(u32);

impl FilterSet {
    pub(crate) const ALL: FilterSet = FilterSet(u32::MAX);

    /// From a profile's `disabledFilters`; an unknown name is an error that lists the known,
    /// and a filter that keeps tenants apart is refused.
    pub(crate) fn without(disabled: &[String]) -> Result<FilterSet, ProfileError> {
        let mut set = FilterSet::ALL;
        for name in disabled {
            let (bit, can_disable) =
                match (NodeFilter::by_name(name), ResourceFilter::by_name(name)) {
                    (Some(f), _) => (f.bit(), f.can_disable()),
                    (None, Some(f)) => (f.bit(), f.can_disable()),
                    (None, None) => {
                        let known: Vec<&str> = NODE_FILTERS
                            .iter()
                            .filter(|f| f.can_disable())
                            .map(|f| f.name())
                            .chain(
                                RESOURCE_FILTERS
                                    .iter()
                                    .filter(|f| f.can_disable())
                                    .map(|f| f.name()),
                            )
                            .collect();
                        return Err(ProfileError::UnknownFilter(name.clone(), known.join(", ")));
                    }
                };
            if !can_disable {
                return Err(ProfileError::SecurityFilter(name.clone()));
            }
            set.0 &= !bit;
        }
        Ok(set)
    }

    pub(crate) fn runs(self, filter: NodeFilter) -> bool {
        self.0 & filter.bit() != 0
    }

    pub(crate) fn runs_on_resources(self, filter: ResourceFilter) -> bool {
        self.0 & filter.bit() != 0
    }
}
