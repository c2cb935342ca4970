//! The agent's main loop and its helpers.
//!
//! ```text
//!   heartbeat ──────────────► server (node lease)
//!   inventory (on change) ──► server (Node status + Resources)
//!   allocations watch ──► wanted ──┐
//!   local records (disk) ──────────┼─► reconcile::compute ─► start / stop / renew / forget
//!   task exits (pidfd) ────────────┘          │
//!                                             └─► records (disk) ─► workload status ─► server
//! ```
//! Recovery: at start every record with a handle is re-attached (`Driver::recover`, by the
//! handle's driver); what ended meanwhile is recorded, nothing is started twice. Without a
//! server the last view of the allocations stays in force, and each workload stops when its
//! lease ends.
//!
//! The background loops (heartbeat, allocations watch, inventory, certificate rotation) are in
//! `runner/loops.rs`; the reconciler that starts and stops runs, through the driver registry,
//! in `runner/reconciler.rs`.

mod loops;
mod reconciler;

use std::collections::BTreeMap;
use std::sync::Arc;

use infraos_api::agent_protocol::PROTOCOL_VERSION;
use infraos_api::kinds::{AgentInfo, Allocation, Tier};
use infraos_api::time::{SharedClock, SystemClock};
use infraos_client::Client;
use infraos_exec::drivers::process::ProcessDriver;
use infraos_exec::{Deadline, DriverRegistry};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};

use crate::AgentError;
use crate::config::AgentConfig;
use crate::identity;
use crate::reconcile::Wanted;
use crate::workloads::WorkloadRecord;
use reconciler::Reconciler;

/// What the background loops share with the reconciler.
struct Shared {
    node: String,
    server: String,
    client: RwLock<Client>,
    /// Allocations on this node by `namespace/name`, and whether the view is fresh.
    allocations: Mutex<(BTreeMap<String, Allocation>, bool)>,
    /// The node's granted tiers; `None` until the server has said (nothing starts before).
    tiers: Mutex<Option<Vec<Tier>>>,
    /// The server's signing key this node pinned: workloads run only on instructions it
    /// signed. `None` for a node that has not learnt it yet (joined before servers signed).
    signing_key: Mutex<Option<infraos_api::signature::PublicKey>>,
    identity_dir: std::path::PathBuf,
    wake: Notify,
    /// The one clock the agent reads (leases, deadlines, certificate rotation).
    clock: SharedClock,
}

impl Shared {
    fn client(&self) -> Client {
        self.client.read().clone()
    }

    /// Learns the server's signing key if this node has none pinned yet.
    fn offer_signing_key(&self, key: &infraos_api::signature::PublicKey) {
        if self.signing_key.lock().is_some() {
            return;
        }
        if identity::pin_signing_key(&self.identity_dir, key) {
            *self.signing_key.lock() = Some(key.clone());
            self.wake.notify_one();
        }
    }

    /// Takes the server's word on the grant; a change wakes the reconciler.
    fn set_tiers(&self, tiers: Vec<Tier>) {
        let mut current = self.tiers.lock();
        if current.as_ref() != Some(&tiers) {
            let names: Vec<&str> = tiers.iter().map(|t| t.as_str()).collect();
            tracing::info!("granted tiers: {}", names.join(","));
            *current = Some(tiers);
            self.wake.notify_one();
        }
    }
}

fn agent_info(
    config: &AgentConfig,
    drivers: &DriverRegistry,
    address: Option<String>,
) -> AgentInfo {
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        drivers: config.drivers.clone(),
        address,
        certificate_expires: None,
        fingerprints: drivers.fingerprints(),
    }
}

/// The drivers this agent has: every driver this build has that its configuration allows.
pub fn drivers(config: &AgentConfig) -> DriverRegistry {
    let mut registry = DriverRegistry::new();
    if config
        .drivers
        .iter()
        .any(|d| d == infraos_api::kinds::PROCESS_DRIVER)
    {
        registry.register(Arc::new(
            ProcessDriver::new(config.shim_program.clone(), config.log_max_bytes)
                .with_hidden_paths(config.hidden_paths()),
        ));
    }
    registry
}

/// Runs the agent until `shutdown`. Workloads keep running after the agent stops; the next
/// start re-adopts them.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    run_with(config, Arc::new(SystemClock), shutdown).await
}

/// [`run`] with the clock the agent reads.
pub async fn run_with(
    config: AgentConfig,
    clock: SharedClock,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(config.workloads_dir())
        .map_err(|e| AgentError::io(&config.workloads_dir(), e))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let advertise = config.advertise.unwrap_or(bound).to_string();
    let drivers = Arc::new(drivers(&config));
    let info = agent_info(&config, &drivers, Some(advertise.clone()));
    let (identity, tiers) = match identity::load(&config.identity_dir(), &config.name, clock.now())?
    {
        // The grant is learnt from the first heartbeat or report.
        Some(identity) => (identity, None),
        None => {
            let token = config.join_token.as_deref().ok_or_else(|| {
                AgentError::Join(format!(
                    "{} holds no valid identity for node {}: pass --join-token (see `infraos join-token create`)",
                    config.data_dir.display(),
                    config.name
                ))
            })?;
            let ca = config.ca_pem.as_deref().ok_or_else(|| {
                AgentError::Join(
                    "the server's CA certificate is needed to join: pass --ca FILE".into(),
                )
            })?;
            let (identity, tiers) = identity::join(
                &config.server,
                ca,
                &config.identity_dir(),
                &config.name,
                token,
                config.labels.clone(),
                info.clone(),
            )
            .await?;
            tracing::info!(node = %config.name, expires = %identity.not_after, "joined");
            (identity, Some(tiers))
        }
    };
    let shared = Arc::new(Shared {
        node: config.name.clone(),
        server: config.server.clone(),
        client: RwLock::new(identity.client(&config.server)?),
        allocations: Mutex::new((BTreeMap::new(), false)),
        tiers: Mutex::new(tiers),
        signing_key: Mutex::new(identity::pinned_signing_key(&config.identity_dir())),
        identity_dir: config.identity_dir(),
        wake: Notify::new(),
        clock,
    });
    let tls = Arc::new(RwLock::new(Arc::new(crate::serve::tls_config(&identity)?)));
    let mut tasks = vec![
        tokio::spawn(crate::serve::serve(
            listener,
            tls.clone(),
            config.workloads_dir(),
        )),
        tokio::spawn(loops::heartbeat_loop(shared.clone())),
        tokio::spawn(loops::watch_loop(shared.clone())),
        tokio::spawn(loops::inventory_loop(
            shared.clone(),
            config.clone(),
            info,
            drivers.clone(),
        )),
        tokio::spawn(loops::rotation_loop(
            shared.clone(),
            config.clone(),
            identity,
            tls,
        )),
    ];
    let names: Vec<&str> = drivers.names().collect();
    tracing::info!(node = %config.name, address = %advertise, drivers = %names.join(","), "agent running");
    let result = Reconciler::new(shared, drivers, config)
        .run(&mut shutdown)
        .await;
    for task in tasks.drain(..) {
        task.abort();
    }
    result
}

/// The lease bound of a local run, for its supervisor.
fn deadline_of(record: &WorkloadRecord) -> Deadline {
    Deadline {
        stop_at_ms: crate::reconcile::stop_at(record.expire_time, &record.spec).unix_millis(),
        grace_ms: record.spec.stop_grace.as_millis(),
    }
}

/// Turns an allocation into what the reconciler wants, if it carries a live workload.
fn wanted_of(allocation: &Allocation) -> Option<Wanted> {
    let status = allocation.status.as_ref()?;
    if !status.phase.holds_resources() {
        return None;
    }
    Some(Wanted {
        uid: allocation.metadata.uid.clone(),
        namespace: allocation.namespace()?.to_string(),
        name: allocation.name().to_string(),
        claim: allocation.spec.claim.name.clone(),
        epoch: status.lease.fencing_epoch,
        spec: allocation.spec.workload.clone()?,
        renew_policy: allocation.spec.renew_policy,
        renew_time: status.lease.renew_time,
        expire_time: status.lease.expire_time,
        refused: None,
    })
}
