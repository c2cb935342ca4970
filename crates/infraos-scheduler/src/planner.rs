//! Placing claims: snapshot in, plan out. This file is the façade; the stages live in
//! `planner/`, each in its own file, lower stages first:
//!
//! ```text
//!  outcome      Plan, Decision, Outcome, Explanation: what comes out
//!  explanation  Reject: why a candidate is rejected, and which reason to report
//!  engine       Scheduler: profile, plugins, memoized CEL, buffers, nominations
//!  claim_ctx    a claim compiled against the classes, with its constraints and quotas
//!  batching     what the batch took so far: overlay, quota, holds of nominations
//!  quota        tenant and project quotas (pre-filter), pool quotas (per candidate)
//!  filter       the node filters, a static list; a profile may turn off all but isolation
//!  resource_filter  the resource filters (isolation, tenant placement, selector, colocate)
//!  score        weighted plugins, normalization of relative ones
//!  place        candidates from a rotating start: filter, fit, score, best one wins
//!  nominations  what preemptors wait for, held against lower and equal priorities
//!  decide       the plan stage: fair order, quotas, placement, preemption (post-filter)
//!  gang         gangs, placed whole or not at all
//! ```
//!
//! ```text
//!  for each claim of the batch, in order:
//!    compile requests against classes ──(unknown class/dimension)──► Unschedulable
//!    candidates = nodes holding the rarest node-bound class       (or pools, if none is)
//!    from a rotating start, for each candidate:
//!      filter: the profile's node filters (registered, ready, schedulable, affinity, …)
//!              each request: a resource on the node, else a pool, that passes the resource
//!              filters (isolation, tenant placement, label selector, colocate) and has
//!              room (for items: enough free ones the CEL item selector matches)
//!      score:  weighted plugins (binpack, spread) on utilization after placement
//!      stop after enough feasible candidates (sampling, as kube-scheduler does)
//!    best candidate ──► Placed (+ score breakdown, runner-up), reserved in the batch overlay
//!    none          ──► Unschedulable with per-reason rejection counts
//! ```
//! The snapshot is never mutated: claims earlier in the batch are accounted for in an overlay,
//! and the server's plan applier re-checks every placement against current state
//! ([`Snapshot::fits`](crate::Snapshot::fits)) before it commits.
//!
//! The stages import one another only downwards (and `claim_ctx` ↔ `batching`, which need
//! each other's types); nothing below imports this façade, `order.rs` or `preemption.rs`,
//! so no import circle is longer than two files.

pub(crate) mod batching;
pub(crate) mod claim_ctx;
pub(crate) mod decide;
pub(crate) mod engine;
pub(crate) mod explanation;
pub(crate) mod filter;
pub(crate) mod gang;
pub(crate) mod nominations;
pub(crate) mod outcome;
pub(crate) mod place;
pub(crate) mod quota;
pub(crate) mod resource_filter;
pub(crate) mod score;

pub use claim_ctx::claim_priority;
pub use engine::Scheduler;
pub use filter::{NODE_FILTERS, NodeFilter, RESOURCE_FILTERS, ResourceFilter};
pub use outcome::{
    Decision, Explanation, GANG_INCOMPLETE, Outcome, Placement, Plan, PreemptionPlan,
    QUOTA_EXCEEDED, UNSCHEDULABLE, Victim, WAITING_FOR_PREEMPTION,
};
