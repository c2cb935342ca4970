//! What every request handler shares: the controllers' [`Context`] (store, clock, heartbeats,
//! readiness, signing key) and the edge's own parts (configuration, RBAC, limits, the CA).

use std::sync::Arc;

use infraos_control::Context;

use crate::admission::ClassCache;
use crate::config::ServerConfig;

/// One pointer: every middleware and handler takes the state by value, and a clone of one
/// `Arc` per request is cheaper than a clone of each field's (a dozen atomics, twice).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// What the controllers share with the handlers. `state.store`, `state.clock`,
    /// `state.liveness`, `state.ready` and `state.signer` reach it through `Deref`, and a
    /// `&AppState` is a `&Context` wherever one is asked for.
    pub control: Context,
    /// The whole configuration; the controllers get its control part (`control.config`).
    pub config: Arc<ServerConfig>,
    /// Roles, bindings, projects and API tokens, for authentication and authorization.
    pub rbac: Arc<crate::authz::Rbac>,
    /// The trusted OIDC issuer, when `oidc:` is configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Per-identity rates, requests in flight, deadlines.
    pub limits: Arc<crate::limits::Limits>,
    pub classes: Arc<ClassCache>,
    pub openapi: Arc<serde_json::Value>,
    pub ca: crate::pki::SharedCa,
    /// Joins with the same token, one at a time.
    pub join_locks: Arc<crate::join_tokens::JoinLocks>,
    /// How the server calls agents (logs), with its `system:server` client certificate.
    pub agents: Arc<crate::agents::AgentDialer>,
    /// This replica's view of the leader election (always leading on the embedded store).
    pub leader: tokio::sync::watch::Receiver<crate::leader::Status>,
}

impl std::ops::Deref for Shared {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.control
    }
}
