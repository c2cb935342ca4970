//! The InfraOS control plane's inside (DESIGN §3, §9): the controllers as level-triggered
//! loops over watches of the store, the reflector that feeds them, object writes with their
//! audit records, events, leases, leader election, `explain`, and audit checkpoints.
//!
//! It knows no HTTP: `infraos-server` is the edge (TLS, authentication, limits, authorization,
//! admission, handlers) and calls in here. Controllers get a [`Context`]: the store, the clock
//! and what they are configured with, not the server's whole state.
//!
//! ```text
//!   infraos-server ──► infraos-control ──► infraos-scheduler, infraos-store, infraos-api
//! ```
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use infraos_api::Duration;
use infraos_scheduler::Profile;
use infraos_store::{Store, StoreError};

pub mod audit;
pub mod controllers;
pub mod datadir;
pub mod events;
pub mod explain;
pub mod holdings;
pub mod leader;
pub mod lease;
pub mod liveness;
pub mod objects;
pub mod reflector;
pub mod runtime;
pub mod signing;
pub mod supervisor;
#[cfg(test)]
mod testing;
pub mod write;

/// The clock is `infraos-api`'s, the one the agent and the executors read too.
pub use infraos_api::time::{Clock, SharedClock, SystemClock};

/// Why a control-plane operation failed. The HTTP edge maps each to its status (404, 409,
/// 410, 500, 503), so the variants say what happened, not how to answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    /// Another writer won every attempt of a compare-and-swap write.
    #[error(
        "operation cannot be fulfilled on {kind} {name:?}: the object has been modified; apply your changes to the latest version and try again"
    )]
    Stale { kind: String, name: String },
    #[error("{message}")]
    Conflict {
        kind: String,
        name: String,
        message: String,
    },
    /// What was asked for is no longer held (compacted history).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Profile(#[from] infraos_scheduler::ProfileError),
    #[error("signing: {0}")]
    Signing(#[from] signing::SigningError),
}

impl ControlError {
    pub fn not_found(kind: &str, name: &str) -> Self {
        ControlError::NotFound {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }
    pub fn stale(kind: &str, name: &str) -> Self {
        ControlError::Stale {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }
    pub fn conflict(kind: &str, name: &str, message: impl Into<String>) -> Self {
        ControlError::Conflict {
            kind: kind.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }
    pub fn gone(message: impl Into<String>) -> Self {
        ControlError::Gone(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ControlError::Internal(message.into())
    }
}

/// What the controllers are configured with: the control-plane part of `server.yaml`.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// How long after `expireTime` a lease is freed (clock skew between server and agents).
    pub lease_skew_margin: Duration,
    /// Most claims the scheduler decides in one batch.
    pub scheduler_batch: usize,
    pub scheduler: Profile,
    /// Events older than this are collected.
    pub event_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// How long a node may go without a heartbeat before it is NotReady.
    pub node_grace_period: Duration,
    pub audit_checkpoint_records: u64,
    pub audit_checkpoint_interval: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            lease_skew_margin: Duration::from_secs(5),
            scheduler_batch: 1024,
            scheduler: Profile::default(),
            event_ttl: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(10),
            node_grace_period: Duration::from_secs(40),
            audit_checkpoint_records: 1000,
            audit_checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// What a controller works with: the store, the clock, its configuration, and the few pieces
/// of memory shared with the API (heartbeats, readiness, the signing key). Narrower than the
/// server's state on purpose: no controller can reach authentication, limits or the router.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub config: Arc<ControlConfig>,
    /// Heartbeats as agents report them, and the node tiers.
    pub liveness: Arc<liveness::Liveness>,
    /// Set once the controllers have synced their caches.
    pub ready: Arc<AtomicBool>,
    /// The server's signing key (audit checkpoints, signed heads).
    pub signer: Arc<signing::ServerKey>,
}

impl Context {
    /// The same context writing through another store (a leadership term's fenced one).
    pub fn with_store(&self, store: Arc<dyn Store>) -> Context {
        Context {
            store,
            ..self.clone()
        }
    }
}
