//! Controllers: level-triggered loops over watches of the store (DESIGN §3). Only the leader
//! runs them; with the embedded store the single server is always the leader.
//!
//! Every object controller runs on [`crate::runtime`] (watch → typed cache → reconcile →
//! `Action`): `claims` (the finalizer), `expiry` (leases), `nodes` (node lifecycle) and
//! `heartbeats` (the replicas' shared heartbeat records).
//!
//! The scheduler controller (`scheduler`, with `feed`, `ledger`, `pending` and the plan
//! `applier`) stays a batch pipeline over its own watches, on purpose. It does not reconcile
//! one object at a time: it keeps one snapshot of ten kinds of object, decides a window of
//! pending claims together (fair share, gangs all-or-nothing, preemption across claims) and
//! commits each batch's plan in one compare-and-swap transaction, as Nomad's plan applier
//! does. A per-key work queue would cut a gang or a preemption into independent reconciles
//! that each see a different snapshot, and would lose the batching the throughput rests on.
//! What it shares with the runtime is the watcher (`reflector`, relisting after compaction)
//! and the write path (`write`, `audit`).

pub(crate) mod applier;
pub mod claims;
pub mod expiry;
mod feed;
pub mod heartbeats;
mod ledger;
pub mod nodes;
mod pending;
pub(crate) mod preemption_text;
pub mod scheduler;
