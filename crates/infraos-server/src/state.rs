//! What every request handler and controller shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use infraos_store::Store;

use crate::admission::ClassCache;
use crate::clock::SharedClock;
use crate::config::ServerConfig;

/// One pointer: every middleware and handler takes the state by value, and a clone of one
/// `Arc` per request is cheaper than a clone of each field's (a dozen atomics, twice).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// The same state writing through another store (a leadership term's fenced one).
    pub fn with_store(&self, store: Arc<dyn Store>) -> AppState {
        let mut shared = (*self.0).clone();
        shared.store = store;
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Arc<ServerConfig>,
    /// Roles, bindings, projects and API tokens, for authentication and authorization.
    pub rbac: Arc<crate::authz::Rbac>,
    /// The trusted OIDC issuer, when `oidc:` is configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Per-identity rates, requests in flight, deadlines.
    pub limits: Arc<crate::limits::Limits>,
    pub classes: Arc<ClassCache>,
    pub clock: SharedClock,
    /// Set once the controllers have synced their caches.
    pub ready: Arc<AtomicBool>,
    pub openapi: Arc<serde_json::Value>,
    pub ca: crate::pki::SharedCa,
    pub liveness: Arc<crate::liveness::Liveness>,
    /// Joins with the same token, one at a time.
    pub join_locks: Arc<crate::join_tokens::JoinLocks>,
    /// How the server calls agents (logs), with its `system:server` client certificate.
    pub agents: Arc<crate::agents::AgentDialer>,
    /// This replica's view of the leader election (always leading on the embedded store).
    pub leader: tokio::sync::watch::Receiver<crate::leader::Status>,
    /// The server's signing key (audit checkpoints, signed heads).
    pub signer: Arc<crate::signing::ServerKey>,
}
