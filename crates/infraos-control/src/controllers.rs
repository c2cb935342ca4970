//! Controllers: level-triggered loops over watches of the store (DESIGN §3). Only the leader
//! runs them; with the embedded store the single server is always the leader.

pub(crate) mod applier;
pub mod claims;
pub mod expiry;
mod feed;
pub mod heartbeats;
mod ledger;
pub mod nodes;
mod pending;
pub mod scheduler;
