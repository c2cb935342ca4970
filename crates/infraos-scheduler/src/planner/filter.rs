//! The node filters: the checks a candidate node must pass before the claim's requests are
//! fitted to its resources, in the order they run (the first to reject names the reason).
//!
//! The list is statically dispatched: [`NodeFilter`] is an enum, [`NODE_FILTERS`] a const
//! array, and [`NodeFilter::check`] a `match` over one function per filter (one file each,
//! under `filter/`). Filtering runs for every candidate of every claim, the planner's hot
//! path: a `match` the compiler inlines costs nothing over the checks written in a row,
//! where `&dyn Filter` would cost an indirect call per filter per candidate and keep the
//! checks from being inlined into the loop. Turning filters off is a bit set
//! ([`FilterSet`]) built once from the profile.
//!
//! Adding a filter from outside (the extension-plane issue) keeps this shape: a variant
//! `Plugin(u8)` indexing a registry of boxed filters, as score plugins are kept
//! (`plugins.rs`), with its name resolved by [`NodeFilter::by_name`] like the built-ins, so
//! a profile turns it off and validation names it the same way. Only that variant pays for
//! dynamic dispatch.

pub(crate) mod affinity;
pub(crate) mod anti_affinity;
pub(crate) mod anti_affinity_of_others;
pub(crate) mod list;
pub(crate) mod node_state;
pub(crate) mod taints;
pub(crate) mod tenant_isolation;
pub(crate) mod tiers;
pub(crate) mod topology_spread;

use super::claim_ctx::ClaimCtx;
use super::explanation::Reject;
use crate::snapshot::NodeEntry;

pub(crate) use list::FilterSet;
pub use list::{NODE_FILTERS, NodeFilter, RESOURCE_FILTERS, ResourceFilter};

impl NodeFilter {
    /// Checks candidate `node` (`None`: a placement on pools only) for the claim of `ctx`.
    /// The caller looks the node's entry up once per candidate, not once per filter.
    #[inline(always)]
    pub(crate) fn check<'c>(
        self,
        node: Option<&'c NodeEntry>,
        ctx: &ClaimCtx<'c>,
    ) -> Result<(), Reject<'c>> {
        match self {
            NodeFilter::Tiers => tiers::check(node, ctx),
            NodeFilter::NodeState => node_state::check(node),
            NodeFilter::Affinity => affinity::check(node, ctx),
            NodeFilter::AntiAffinity => anti_affinity::check(node, ctx),
            NodeFilter::AntiAffinityOfOthers => anti_affinity_of_others::check(node, ctx),
            NodeFilter::TopologySpread => topology_spread::check(node, ctx),
            NodeFilter::TenantIsolation => tenant_isolation::check(node, ctx),
            NodeFilter::Taints => taints::check(node, ctx),
        }
    }
}

/// Expands `$step!(filter)` for each filter of [`NODE_FILTERS`], in that order.
///
/// Written out rather than a loop over the array, and a macro rather than a closure: LLVM
/// kept `for filter in NODE_FILTERS` as a loop dispatching each filter through a jump table
/// (about a sixth of `evaluate` at `bench scheduler --claims 100000`, perf annotate), and a
/// closure called once per filter was not inlined either (a call per filter, the `match`
/// not folded). Expanded with a constant at each step, [`NodeFilter::check`] folds to the
/// one check. A test checks that this order is the array's.
macro_rules! node_filters_in_order {
    ($step:ident) => {
        $step!(NodeFilter::Tiers);
        $step!(NodeFilter::NodeState);
        $step!(NodeFilter::Affinity);
        $step!(NodeFilter::AntiAffinity);
        $step!(NodeFilter::AntiAffinityOfOthers);
        $step!(NodeFilter::TopologySpread);
        $step!(NodeFilter::TenantIsolation);
        $step!(NodeFilter::Taints);
    };
}

/// Runs the filters of `set` on candidate `node`, in order; the first rejection wins.
/// The filters that keep tenants apart run even where `set` leaves them out.
#[inline(always)]
pub(crate) fn run<'c>(
    set: FilterSet,
    node: Option<&'c NodeEntry>,
    ctx: &ClaimCtx<'c>,
) -> Result<(), Reject<'c>> {
    macro_rules! step {
        ($filter:expr) => {
            if !$filter.can_disable() || set.runs($filter) {
                $filter.check(node, ctx)?;
            }
        };
    }
    node_filters_in_order!(step);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use crate::test_fixtures::{compute_class, node as add_node};
    use crate::{Outcome, Profile, Scheduler};
    use infraos_api::Labels;
    use infraos_api::kinds::{Claim, NodeSpec};

    /// One node `n0` with 8 CPUs, these labels and this spec.
    pub(crate) fn one_node(spec: NodeSpec, labels: &[(&str, &str)]) -> Snapshot {
        let mut snap = Snapshot::new();
        compute_class(&mut snap);
        add_node(&mut snap, "n0", 8, labels);
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        snap.upsert_node("n0", &labels, &spec, None);
        snap
    }

    /// A claim spec for one CPU.
    pub(crate) fn cpu() -> serde_json::Value {
        serde_json::json!({"requests": [{"class": "compute", "amount": {"cpu": "1"}}]})
    }

    fn claim(name: &str, spec: serde_json::Value) -> Claim {
        let v = serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Claim",
            "metadata": {"name": name, "namespace": "p", "labels": {"app": "web"}},
            "spec": spec,
        });
        infraos_api::object::decode(&v).unwrap()
    }

    /// Decides claims in one batch with the profile's `disabledFilters`: `Ok` when the last
    /// is placed, else its message.
    fn decide_all(
        snap: &Snapshot,
        specs: &[serde_json::Value],
        off: &[&str],
    ) -> Result<(), String> {
        let profile = Profile {
            disabled_filters: off.iter().map(|s| s.to_string()).collect(),
            ..Profile::default()
        };
        let mut s = Scheduler::new(profile).unwrap();
        let claims: Vec<(String, Claim)> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| (format!("p/c{i}"), claim(&format!("c{i}"), spec.clone())))
            .collect();
        let refs: Vec<(String, &Claim)> = claims.iter().map(|(k, c)| (k.clone(), c)).collect();
        let plan = s.plan(snap, &refs);
        match &plan.decisions.last().unwrap().outcome {
            Outcome::Placed(_) => Ok(()),
            Outcome::Unschedulable(e) => Err(e.message()),
            other => Err(format!("{other:?}")),
        }
    }

    pub(crate) fn decide(
        snap: &Snapshot,
        spec: serde_json::Value,
        off: &[&str],
    ) -> Result<(), String> {
        decide_all(snap, &[spec], off)
    }

    /// Decides `spec` after `first` in the same batch.
    pub(crate) fn decide_after(
        snap: &Snapshot,
        first: serde_json::Value,
        spec: serde_json::Value,
        off: &[&str],
    ) -> Result<(), String> {
        decide_all(snap, &[first, spec], off)
    }

    #[test]
    fn filters_run_in_the_order_of_the_list() {
        let mut seen = Vec::new();
        macro_rules! push {
            ($filter:expr) => {
                seen.push($filter)
            };
        }
        node_filters_in_order!(push);
        assert_eq!(seen, NODE_FILTERS);
    }

    #[test]
    fn names_are_unique_and_resolve() {
        for f in NODE_FILTERS {
            assert_eq!(NodeFilter::by_name(f.name()), Some(f));
            assert!(!f.reason().is_empty());
        }
        assert_eq!(NodeFilter::by_name("nope"), None);
    }

    #[test]
    fn a_profile_turns_filters_off_and_unknown_names_are_refused() {
        let set = FilterSet::without(&["taints".into(), "affinity".into()]).unwrap();
        assert!(!set.runs(NodeFilter::Taints) && !set.runs(NodeFilter::Affinity));
        assert!(set.runs(NodeFilter::NodeState));
        let err = FilterSet::without(&["magic".into()]).unwrap_err();
        assert!(err.to_string().contains("magic") && err.to_string().contains("nodeState"));
        let set = FilterSet::without(&["selector".into(), "colocate".into()]).unwrap();
        assert!(!set.runs_on_resources(ResourceFilter::Selector));
        assert!(!set.runs_on_resources(ResourceFilter::Colocate));
        assert!(set.runs_on_resources(ResourceFilter::ResourceIsolation));
        assert!(set.runs(NodeFilter::Taints));
        for name in ["tenantIsolation", "resourceIsolation", "tenantPlacement"] {
            let err = FilterSet::without(&[name.into()]).unwrap_err();
            assert!(err.to_string().contains("security promise"), "{err}");
        }
    }
}
