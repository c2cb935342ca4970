//! Why a candidate is rejected: the reasons users read in explanations, and which one to
//! report when several resources were rejected for different ones.

/// Rejection reasons; their text is what users read in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject<'a> {
    NodeNotRegistered,
    NodeNotReady,
    NodeUnschedulable,
    SelectorMismatch,
    TopologyMismatch,
    Insufficient(&'a str),
    NoResource(&'a str),
    PoolQuota(&'a str),
    Untolerated(&'a str),
    Affinity(&'a str),
    AntiAffinity(&'a str),
    /// Another claim's required anti-affinity keeps this one out.
    AntiAffinityOfOther,
    Spread(&'a str),
    TenantPlacement,
    Isolated,
    MissingTier(&'static str),
    WorkloadNeedsNode,
}

impl Reject<'_> {
    /// Which reason to report when several resources were rejected for different ones: the
    /// one closest to fitting.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Reject::Isolated => 1,
            Reject::TenantPlacement => 2,
            Reject::SelectorMismatch => 3,
            Reject::TopologyMismatch => 4,
            Reject::Insufficient(_) => 5,
            _ => 0,
        }
    }
}

pub(crate) fn closer<'a>(current: Option<Reject<'a>>, new: Reject<'a>) -> Option<Reject<'a>> {
    match current {
        Some(c) if c.rank() >= new.rank() => Some(c),
        _ => Some(new),
    }
}

impl std::fmt::Display for Reject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::NodeNotRegistered => f.write_str("node not registered"),
            Reject::NodeNotReady => f.write_str("node not ready"),
            Reject::NodeUnschedulable => f.write_str("node unschedulable"),
            Reject::SelectorMismatch => f.write_str("selector mismatch"),
            Reject::TopologyMismatch => f.write_str("topology mismatch"),
            Reject::Insufficient(class) => write!(f, "insufficient {class}"),
            Reject::NoResource(class) => write!(f, "no {class}"),
            Reject::PoolQuota(quota) => write!(f, "pool quota {quota} exceeded"),
            Reject::Untolerated(key) => write!(f, "untolerated taint {key}"),
            Reject::Affinity(key) => write!(f, "affinity: no matching claim in this {key}"),
            Reject::AntiAffinity(key) => write!(f, "anti-affinity: a matching claim in this {key}"),
            Reject::AntiAffinityOfOther => {
                f.write_str("anti-affinity of a claim there excludes this one")
            }
            Reject::Spread(key) => write!(f, "topology spread: this {key} would exceed maxSkew"),
            Reject::TenantPlacement => f.write_str("outside the tenant's placement"),
            Reject::Isolated => f.write_str("isolated for another tenant"),
            Reject::MissingTier(tier) => write!(f, "node lacks the {tier} tier"),
            Reject::WorkloadNeedsNode => f.write_str("a workload needs a node-bound request"),
        }
    }
}
