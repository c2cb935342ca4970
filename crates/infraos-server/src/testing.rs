//! Test support: the server's shared state over a given store, built the way `Server::start`
//! builds it, so handlers and controllers can be driven in-process against a store that
//! misbehaves on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use infraos_store::Store;
use tokio::sync::watch;

use crate::state::{AppState, Shared};

/// The state of a server on data dir `dir` (initialised here) writing to `store`.
pub(crate) async fn state(dir: &Path, store: Arc<dyn Store>) -> AppState {
    crate::init::init_data_dir(dir, &[]).await.unwrap();
    let config = crate::config::ServerConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let (signer, _) = crate::signing::ServerKey::ensure(dir, config.signature_algorithm).unwrap();
    let ca = Arc::new(crate::pki::Ca::load(dir).unwrap());
    let clock: crate::SharedClock = Arc::new(crate::SystemClock);
    let agents = Arc::new(crate::agents::AgentDialer::new(&ca, clock.now()).unwrap());
    let (_, leader) = watch::channel(crate::leader::Status::default());
    let control = infraos_control::Context {
        store,
        clock,
        config: Arc::new(config.control()),
        liveness: Arc::new(crate::liveness::Liveness::default()),
        ready: Arc::new(AtomicBool::new(false)),
        signer: Arc::new(signer),
    };
    AppState::new(Shared {
        control,
        limits: Arc::new(crate::limits::Limits::new(config.api_limits.clone())),
        config: Arc::new(config),
        rbac: Arc::new(crate::authz::Rbac::default()),
        oidc: None,
        classes: Arc::new(crate::admission::ClassCache::default()),
        openapi: Arc::new(crate::openapi::document()),
        ca,
        join_locks: Arc::new(crate::join_tokens::JoinLocks::default()),
        agents,
        leader,
    })
}

/// The request context of the administrator.
pub(crate) fn admin() -> crate::api::Ctx {
    crate::api::Ctx {
        identity: Arc::new(crate::identity::Identity {
            subject: "user:admin".into(),
            groups: vec!["system:masters".into()],
            token: None,
        }),
        source: None,
    }
}
