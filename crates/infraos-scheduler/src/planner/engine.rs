//! The scheduler's state: its profile and plugins, the scan start, memoized CEL results,
//! reusable buffers, and the nominations of claims waiting for preemption victims.

use crate::governance::GovDim;
use crate::plugins::ScorePlugin;
use crate::profile::{Profile, ProfileError};
use crate::snapshot::{NodeId, ResourceId};
use foldhash::{HashMap, HashMapExt, HashSet};
use infraos_api::kinds::AllocatedResource;
use std::sync::Arc;

use super::filter::list::FilterSet;

#[derive(Clone)]
pub(crate) struct Pick {
    pub(crate) request: usize,
    pub(crate) resource: ResourceId,
    pub(crate) items: Vec<usize>,
}

pub(crate) const MAX_PLUGINS: usize = 8;

pub(crate) struct Candidate {
    pub(crate) node: Option<NodeId>,
    pub(crate) picks: Vec<Pick>,
    pub(crate) score: f64,
    pub(crate) plugin_scores: [f64; MAX_PLUGINS],
}

/// Per-evaluation buffers, reused so that filtering a candidate allocates nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) picks: Vec<Pick>,
    pub(crate) utilizations: Vec<f64>,
    /// What the candidate's earlier requests took: (resource, dimension index, nanos).
    pub(crate) dims: Vec<(ResourceId, usize, i128)>,
    pub(crate) items: Vec<(ResourceId, usize)>,
}

impl Scratch {
    pub(crate) fn clear(&mut self) {
        self.picks.clear();
        self.utilizations.clear();
        self.dims.clear();
        self.items.clear();
    }

    pub(crate) fn used(&self, id: ResourceId, dim: usize) -> i128 {
        self.dims
            .iter()
            .filter(|(r, d, _)| *r == id && *d == dim)
            .map(|(_, _, n)| *n)
            .sum()
    }
}

/// Memoized CEL results: selector source → (resource, stamp) → match per item.
pub(crate) type SelectorMemo = HashMap<Arc<str>, HashMap<(ResourceId, u64), Arc<[bool]>>>;
/// Memoized CEL results by item content: selector source → item → match. Items repeat across
/// machines (the same GPU names and attributes on every node of a model), so a new resource
/// is mostly answered without evaluating anything.
pub(crate) type ItemMemo = HashMap<Arc<str>, HashMap<infraos_api::Item, bool>>;
pub(crate) const MEMO_LIMIT: usize = 100_000;

/// The scheduler: a profile, its plugins, and the little state that makes it fair and fast
/// (where the next scan starts, memoized CEL results, reusable buffers).
pub struct Scheduler {
    pub(crate) profile: Profile,
    /// Every plugin, by index in `plugins::NAMES`.
    pub(crate) plugins: Vec<Box<dyn ScorePlugin>>,
    /// The profile's weight per plugin (0: off unless a claim weights it).
    pub(crate) weights: [f64; MAX_PLUGINS],
    /// The node filters the profile runs.
    pub(crate) filters: FilterSet,
    pub(crate) next_start: usize,
    pub(crate) memo: SelectorMemo,
    pub(crate) item_memo: ItemMemo,
    pub(crate) memo_entries: usize,
    pub(crate) scratch: Scratch,
    /// Claims waiting for their preemption victims to end, by claim key: what each will
    /// take is held against every claim that could not preempt it once placed (lower and
    /// equal priorities) meanwhile, so they cannot take what the victims free (Kubernetes'
    /// nominated node, narrowed to the claim's own resources).
    pub(crate) nominations: HashMap<String, Nomination>,
    /// The allocations each claim has preempted since it was last placed: it never preempts
    /// one of them again before it is placed (a victim back in the room it was preempted
    /// from means the nomination did not hold; preempting it again would be a loop).
    pub(crate) preempted: HashMap<String, HashSet<String>>,
    /// Claims a plan placed that had a nomination or victims: what they had, kept until the
    /// placement is confirmed ([`Scheduler::forget`]) or undone ([`Scheduler::unplaced`]).
    /// A placement the applier refuses, or a batch that does not commit, puts the claim
    /// back to pending; dropping its nomination at plan time let a claim of its priority
    /// take the room its victims freed, and the preemptor preempted a second round of
    /// other victims (issue 17). Not held meanwhile: the placement itself holds the room.
    pub(crate) placing: HashMap<String, Placing>,
}

/// What a placed claim had while it waited, until its placement is confirmed or undone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placing {
    pub(crate) nomination: Option<Nomination>,
    pub(crate) preempted: Option<HashSet<String>>,
}

/// What a claim waiting for its preemption victims will take: its resources on the node it
/// was nominated for (preempting for capacity), or its share of the tenant and project
/// quotas it preempts for. Kept by names, not snapshot indices, which may be reused.
#[derive(Clone, Debug)]
pub(crate) struct Nomination {
    /// The claim's key, or `gang:ns/group` for a gang's members: they never hold against
    /// each other.
    pub owner: String,
    pub priority: i32,
    pub namespace: String,
    pub tenant: Option<String>,
    /// Where it will land; empty when it preempts for a quota and no node is known.
    pub parts: Vec<AllocatedResource>,
    /// The allocations whose end it waits for (those it preempted, and those already being
    /// preempted that it counted on): their room is its room, held against the same claims
    /// as the rest of the nomination.
    pub victims: Vec<String>,
    /// What the whole claim takes, by interned dimension (for a quota nomination).
    pub needs: Vec<(GovDim, i128)>,
}

impl Scheduler {
    pub fn new(profile: Profile) -> Result<Self, ProfileError> {
        let (plugins, profile_weights) = profile.build_plugins()?;
        if plugins.len() > MAX_PLUGINS {
            return Err(ProfileError::TooManyPlugins(MAX_PLUGINS));
        }
        let mut weights = [0.0; MAX_PLUGINS];
        for (w, p) in weights.iter_mut().zip(profile_weights) {
            *w = p;
        }
        let filters = FilterSet::without(&profile.disabled_filters)?;
        Ok(Scheduler {
            profile,
            plugins,
            weights,
            filters,
            next_start: 0,
            memo: HashMap::new(),
            item_memo: HashMap::new(),
            memo_entries: 0,
            scratch: Scratch::default(),
            nominations: HashMap::new(),
            preempted: HashMap::new(),
            placing: HashMap::new(),
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Where the next claim's scan over candidate nodes begins: a replay sets it to what the
    /// decision recorded.
    pub fn set_scan_start(&mut self, start: usize) {
        self.next_start = start;
    }
}
