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
//! Recovery: at start every record with a handle is re-attached (`Driver::recover`); what
//! ended meanwhile is recorded, nothing is started twice. Without a server the last view of
//! the allocations stays in force, and each workload stops when its lease ends.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infraos_api::Kind as _;
use infraos_api::Time;
use infraos_api::agent_protocol::{
    HeartbeatResponse, NodeReport, NodeReportResponse, PROTOCOL_VERSION, RenewRequest,
};
use infraos_api::kinds::{
    AgentInfo, Allocation, AllocationSpec, NODE_LABEL, NodeSpec, Tier, WorkloadState,
};
use infraos_client::Client;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::driver::process::{DEFAULT_PIDS, ProcessDriver};
use crate::driver::{Deadline, Driver, DriverError, TaskConfig, TaskState};
use crate::identity::{self, Identity};
use crate::reconcile::{self, Action, Local, Wanted};
use crate::workloads::{self, WorkloadRecord};
use crate::{AgentError, now};

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

fn agent_info(config: &AgentConfig, address: Option<String>) -> AgentInfo {
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        drivers: config.drivers.clone(),
        address,
        certificate_expires: None,
    }
}

/// Runs the agent until `shutdown`. Workloads keep running after the agent stops; the next
/// start re-adopts them.
pub async fn run(
    config: AgentConfig,
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
    let info = agent_info(&config, Some(advertise.clone()));
    let (identity, tiers) = match identity::load(&config.identity_dir(), &config.name, now())? {
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
    });
    let tls = Arc::new(RwLock::new(Arc::new(crate::serve::tls_config(&identity)?)));
    let mut tasks = vec![
        tokio::spawn(crate::serve::serve(
            listener,
            tls.clone(),
            config.workloads_dir(),
        )),
        tokio::spawn(heartbeat_loop(shared.clone())),
        tokio::spawn(watch_loop(shared.clone())),
        tokio::spawn(inventory_loop(shared.clone(), config.clone(), info)),
        tokio::spawn(rotation_loop(shared.clone(), config.clone(), identity, tls)),
    ];
    let driver: Arc<dyn Driver> = Arc::new(
        ProcessDriver::new(config.shim_program.clone(), config.log_max_bytes)
            .with_hidden_paths(config.hidden_paths()),
    );
    tracing::info!(node = %config.name, address = %advertise, "agent running");
    let result = Reconciler::new(shared, driver, config)
        .run(&mut shutdown)
        .await;
    for task in tasks.drain(..) {
        task.abort();
    }
    result
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut interval = Duration::from_secs(10);
    loop {
        let client = shared.client();
        // A heartbeat that takes longer than the interval is as good as lost.
        let beat = tokio::time::timeout(
            interval,
            client.send_json::<_, HeartbeatResponse>(
                reqwest::Method::POST,
                "/agent/v1/heartbeat",
                &serde_json::json!({}),
            ),
        )
        .await;
        let Ok(beat) = beat else {
            tracing::warn!(after = ?interval, "heartbeat timed out");
            continue;
        };
        match beat {
            Ok(r) => {
                interval = Duration::from_millis(r.heartbeat_interval_ms.clamp(100, 600_000));
                if let Some(tiers) = r.tiers {
                    shared.set_tiers(tiers);
                }
                if let Some(key) = &r.signing_key {
                    shared.offer_signing_key(key);
                }
            }
            Err(e) if e.code() == Some(404) => tracing::error!(
                error = %e,
                "the server no longer knows this node: an administrator deleted it; \
                 workloads run until their leases end; rejoin with a new join token"
            ),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

async fn watch_loop(shared: Arc<Shared>) {
    let selector = format!("{NODE_LABEL}={}", shared.node);
    loop {
        let client = shared.client();
        let listed = client
            .list(AllocationSpec::INFO, None, Some(&selector))
            .await;
        let (items, revision) = match listed {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing allocations failed; keeping the last view");
                shared.allocations.lock().1 = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        {
            let mut view = shared.allocations.lock();
            view.0 = items
                .into_iter()
                .filter_map(|v| serde_json::from_value::<Allocation>(v).ok())
                .map(|a| {
                    (
                        format!("{}/{}", a.namespace().unwrap_or_default(), a.name()),
                        a,
                    )
                })
                .collect();
            view.1 = true;
        }
        shared.wake.notify_one();
        let mut events = match client
            .watch_as::<Allocation>(AllocationSpec::INFO, None, Some(&selector), Some(revision))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching allocations failed");
                shared.allocations.lock().1 = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let key = format!(
                "{}/{}",
                event.object.namespace().unwrap_or_default(),
                event.object.name()
            );
            {
                let mut view = shared.allocations.lock();
                match event.type_.as_str() {
                    "ADDED" | "MODIFIED" => {
                        view.0.insert(key, event.object);
                    }
                    "DELETED" => {
                        view.0.remove(&key);
                    }
                    _ => continue,
                }
            }
            shared.wake.notify_one();
        }
        shared.allocations.lock().1 = false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn inventory_loop(shared: Arc<Shared>, config: AgentConfig, info: AgentInfo) {
    let mut last: Option<u64> = None;
    loop {
        let inventory = tokio::task::spawn_blocking(|| {
            infraos_inventory::collect(&infraos_inventory::Options::default())
        })
        .await
        .unwrap_or_default();
        let fingerprint = infraos_inventory::fingerprint(&inventory);
        if last != Some(fingerprint) {
            let report = NodeReport {
                agent: info.clone(),
                resources: crate::resources::from_inventory(
                    &shared.node,
                    &inventory,
                    config.reserve_cpu,
                    config.reserve_memory,
                ),
                inventory,
            };
            match shared
                .client()
                .send_json::<_, NodeReportResponse>(
                    reqwest::Method::PUT,
                    "/agent/v1/status",
                    &report,
                )
                .await
            {
                Ok(r) => {
                    shared.set_tiers(r.tiers);
                    last = Some(fingerprint);
                    shared.wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "publishing inventory failed"),
            }
        }
        let pause = if last.is_some() {
            config.inventory_interval
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(pause).await;
    }
}

async fn rotation_loop(
    shared: Arc<Shared>,
    config: AgentConfig,
    mut identity: Identity,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
) {
    loop {
        // At least a second between rotations, whatever the certificate says.
        let wait = now().millis_until(identity.rotate_at()).max(1_000);
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        match identity::rotate(&shared.client(), &config.identity_dir(), &shared.node).await {
            Ok((next, tiers)) => {
                match (next.client(&shared.server), crate::serve::tls_config(&next)) {
                    (Ok(client), Ok(server_tls)) => {
                        *shared.client.write() = client;
                        *tls.write() = Arc::new(server_tls);
                        shared.set_tiers(tiers);
                        tracing::info!(expires = %next.not_after, "certificate rotated");
                        identity = next;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "rotated certificate unusable");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate rotation failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
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

/// The cgroup limits for an allocation: its cpu and memory, tightened by the workload's own.
pub fn limits_of(allocation: &AllocationSpec) -> Result<infraos_sys::cgroup::Limits, String> {
    let mut cpu_nanos: i128 = 0;
    let mut memory_nanos: i128 = 0;
    for r in &allocation.resources {
        if let Some(q) = r.amount.get("cpu") {
            cpu_nanos += q.nanos();
        }
        if let Some(q) = r.amount.get("memory") {
            memory_nanos += q.nanos();
        }
    }
    let workload = allocation.workload.as_ref();
    let pick = |allocated: i128,
                limit: Option<infraos_api::Quantity>,
                dim: &str|
     -> Result<Option<i128>, String> {
        match limit {
            Some(l) if allocated > 0 && l.nanos() > allocated => Err(format!(
                "limits.{dim} {l} is above the allocation's {}",
                infraos_api::Quantity::from_nanos(allocated)
            )),
            Some(l) => Ok(Some(l.nanos())),
            None if allocated > 0 => Ok(Some(allocated)),
            None => Ok(None),
        }
    };
    let cpu = pick(cpu_nanos, workload.and_then(|w| w.limits.cpu), "cpu")?;
    let memory = pick(
        memory_nanos,
        workload.and_then(|w| w.limits.memory),
        "memory",
    )?;
    Ok(infraos_sys::cgroup::Limits {
        cpu_millis: cpu.map(|n| u64::try_from(n / 1_000_000).unwrap_or(u64::MAX).max(1)),
        memory_bytes: memory.map(|n| u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX)),
        pids: Some(
            workload
                .and_then(|w| w.limits.pids)
                .map_or(DEFAULT_PIDS, u64::from),
        ),
    })
}

enum Event {
    Exited(String, TaskState),
    Reported(String, WorkloadState, bool),
    Renewed(String, Option<Time>),
}

struct Reconciler {
    shared: Arc<Shared>,
    driver: Arc<dyn Driver>,
    config: AgentConfig,
    records: BTreeMap<String, WorkloadRecord>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    reporting: HashSet<String>,
    renewing: HashSet<String>,
    /// The newest fencing epoch this node has started per claim (`namespace/claim`), kept on
    /// disk: an older instruction shown again is a replay.
    epochs: BTreeMap<String, u64>,
}

const EPOCHS: &str = "epochs.json";

impl Reconciler {
    fn new(shared: Arc<Shared>, driver: Arc<dyn Driver>, config: AgentConfig) -> Reconciler {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Reconciler {
            shared,
            driver,
            records: workloads::load_all(&config.workloads_dir()),
            events_tx,
            events_rx,
            reporting: HashSet::new(),
            renewing: HashSet::new(),
            epochs: std::fs::read(config.data_dir.join(EPOCHS))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            config,
        }
    }

    /// Remembers that `w`'s epoch ran here, before it starts.
    fn record_epoch(&mut self, w: &Wanted) {
        let key = format!("{}/{}", w.namespace, w.claim);
        if self.epochs.get(&key).is_some_and(|e| *e >= w.epoch) {
            return;
        }
        self.epochs.insert(key, w.epoch);
        let path = self.config.data_dir.join(EPOCHS);
        let bytes = serde_json::to_vec(&self.epochs).unwrap_or_default();
        if let Err(e) = crate::write_atomic(&path, &bytes, 0o600) {
            tracing::warn!(error = %e, "cannot keep the fencing epochs seen");
        }
    }

    fn save(&self, uid: &str) {
        if let Some(r) = self.records.get(uid)
            && let Err(e) = r.save(&self.config.workloads_dir())
        {
            tracing::error!(workload = uid, error = %e, "cannot persist the workload record");
        }
    }

    /// Re-attaches to what the previous agent process left running.
    fn recover(&mut self) {
        let uids: Vec<String> = self.records.keys().cloned().collect();
        for uid in uids {
            let Some(handle) = self.records.get(&uid).and_then(|r| r.handle.clone()) else {
                continue;
            };
            let state = self.driver.recover(&handle);
            match state {
                TaskState::Running => {
                    tracing::info!(workload = %uid, pid = handle.pid, "re-adopted a running workload");
                    self.watch_exit(uid.clone(), handle);
                }
                ended => self.on_exit(&uid, ended),
            }
        }
    }

    fn watch_exit(&self, uid: String, handle: crate::driver::TaskHandle) {
        let driver = self.driver.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let state = driver.wait(&handle).await;
            let _ = tx.send(Event::Exited(uid, state));
        });
    }

    async fn run(mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        self.recover();
        loop {
            self.reconcile().await;
            self.report();
            tokio::select! {
                event = self.events_rx.recv() => {
                    if let Some(event) = event { self.handle(event); }
                    while let Ok(event) = self.events_rx.try_recv() { self.handle(event); }
                }
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited(uid, state) => self.on_exit(&uid, state),
            Event::Reported(uid, state, ok) => {
                self.reporting.remove(&uid);
                if ok
                    && let Some(r) = self.records.get_mut(&uid)
                    && r.status.state == state
                {
                    r.reported = true;
                    self.save(&uid);
                }
            }
            Event::Renewed(uid, expire) => {
                self.renewing.remove(&uid);
                if let (Some(expire), Some(r)) = (expire, self.records.get_mut(&uid)) {
                    r.expire_time = expire;
                    self.save(&uid);
                }
            }
        }
    }

    fn on_exit(&mut self, uid: &str, state: TaskState) {
        let Some(record) = self.records.get_mut(uid) else {
            return;
        };
        let now_ms = now().unix_millis();
        let (code, signal, at_ms) = match state {
            TaskState::Running => return,
            TaskState::Exited(e) => (e.exit_code, e.signal, e.at_ms),
            TaskState::Lost => (None, None, now_ms),
        };
        record.status.exit_code = code;
        record.status.signal = signal;
        record.status.finished_at = Some(Time::from_unix_millis(at_ms));
        record.status.pid = None;
        let lease_expired = matches!(state, TaskState::Exited(e) if e.lease_expired);
        let next = if record.stopping.is_some() {
            WorkloadState::Stopped
        } else if lease_expired {
            // Its supervisor ended it at the lease bound while this agent was away.
            record.status.reason = Some("LeaseExpired".into());
            WorkloadState::Stopped
        } else if matches!(state, TaskState::Lost) {
            record.status.reason = Some("the workload's supervisor vanished".into());
            WorkloadState::Failed
        } else if signal.is_some() {
            record.status.reason = Some(format!("killed by signal {}", signal.unwrap_or_default()));
            WorkloadState::Failed
        } else {
            WorkloadState::Exited
        };
        record.set_state(next);
        record.reported = false;
        let delay = record.spec.restart.delay(record.status.restarts);
        record.next_start_ms =
            Some(now_ms + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4));
        self.driver.cleanup(uid);
        tracing::info!(
            workload = uid,
            state = next.as_str(),
            ?code,
            ?signal,
            "workload ended"
        );
        self.save(uid);
    }

    async fn reconcile(&mut self) {
        let (allocations, synced) = {
            let view = self.shared.allocations.lock();
            (view.0.clone(), view.1)
        };
        let by_uid: BTreeMap<String, &Allocation> = allocations
            .values()
            .map(|a| (a.metadata.uid.clone(), a))
            .collect();
        let signing_key = self.shared.signing_key.lock().clone();
        let wanted: BTreeMap<String, Wanted> = by_uid
            .iter()
            .filter_map(|(uid, a)| {
                let mut w = wanted_of(a)?;
                if !self.records.contains_key(uid) {
                    if let Some(key) = &signing_key {
                        let seen = self.epochs.get(&format!("{}/{}", w.namespace, w.claim));
                        if let Err(e) = infraos_api::instruction::check(a, key, seen.copied()) {
                            w.refused = Some(e.to_string());
                        }
                    }
                    if w.refused.is_none() {
                        w.refused = reconcile::privileged_refusal(
                            &w.spec,
                            &a.spec.approved_by,
                            signing_key.is_some(),
                        );
                    }
                }
                Some((uid.clone(), w))
            })
            .collect();
        // A renewal seen in the allocation moves the local lease end too.
        for (uid, w) in &wanted {
            if let Some(r) = self.records.get_mut(uid)
                && r.expire_time != w.expire_time
                && w.epoch == r.epoch
            {
                r.expire_time = w.expire_time;
                if let Some(handle) = &r.handle
                    && let Err(e) = self.driver.set_deadline(handle, deadline_of(r))
                {
                    tracing::warn!(workload = %uid, error = %e, "cannot move the lease bound");
                }
                self.save(uid);
            }
        }
        let local: BTreeMap<String, Local> = self
            .records
            .iter()
            .map(|(uid, r)| {
                (
                    uid.clone(),
                    Local {
                        claim: r.name.clone(),
                        namespace: r.namespace.clone(),
                        epoch: r.epoch,
                        state: r.status.state,
                        stopping: r.stopping.is_some(),
                        exit_code: r.status.exit_code,
                        signal: r.status.signal,
                        next_start_ms: r.next_start_ms,
                        expire_time: r.expire_time,
                        reported: r.reported,
                        spec: r.spec.clone(),
                    },
                )
            })
            .collect();
        let mut tiers = self.tiers();
        // A grant and a placement can outrun the next heartbeat: before refusing new work
        // for want of a tier, read the Node itself. The scheduler placed it only after it
        // saw the grant, so a read now sees the grant too.
        let lacking = wanted.iter().any(|(uid, w)| {
            !self.records.contains_key(uid)
                && tiers
                    .as_ref()
                    .is_none_or(|held| w.spec.required_tiers().iter().any(|t| !held.contains(t)))
        });
        if lacking {
            self.refresh_tiers().await;
            tiers = self.tiers();
        }
        let actions = reconcile::compute(
            &wanted,
            &local,
            now(),
            synced,
            &self.config.drivers,
            tiers.as_deref(),
        );
        for action in actions {
            match action {
                Action::Start(uid) => {
                    if let (Some(w), Some(a)) = (wanted.get(&uid), by_uid.get(&uid)) {
                        self.record_epoch(w);
                        self.start(w, a).await;
                    }
                }
                Action::Refuse { uid, reason } => {
                    if let Some(w) = wanted.get(&uid) {
                        self.refuse(w, reason);
                    }
                }
                Action::Stop { uid, reason } => self.stop(&uid, reason),
                Action::Renew(uid) => self.renew(&uid),
                Action::Forget(uid) => {
                    self.driver.cleanup(&uid);
                    workloads::remove(&self.config.workloads_dir(), &uid);
                    self.records.remove(&uid);
                }
            }
        }
    }

    fn tiers(&self) -> Option<Vec<Tier>> {
        self.shared.tiers.lock().clone()
    }

    async fn refresh_tiers(&self) {
        match self
            .shared
            .client()
            .get(NodeSpec::INFO, None, &self.shared.node)
            .await
        {
            Ok(node) => match serde_json::from_value::<Vec<Tier>>(node["spec"]["tiers"].clone()) {
                Ok(tiers) => self.shared.set_tiers(tiers),
                Err(e) => tracing::warn!(error = %e, "the node's tiers are unreadable"),
            },
            Err(e) => tracing::warn!(error = %e, "reading the node's tiers failed"),
        }
    }

    fn record_for(&mut self, w: &Wanted) -> &mut WorkloadRecord {
        let lease_ms = w.expire_time.unix_millis() - w.renew_time.unix_millis();
        self.records
            .entry(w.uid.clone())
            .or_insert_with(|| WorkloadRecord {
                uid: w.uid.clone(),
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                epoch: w.epoch,
                spec: w.spec.clone(),
                renew_policy: w.renew_policy,
                expire_time: w.expire_time,
                lease_ms,
                handle: None,
                status: infraos_api::kinds::WorkloadStatus {
                    fencing_epoch: w.epoch,
                    ..Default::default()
                },
                reported: false,
                stopping: None,
                next_start_ms: None,
            })
    }

    fn refuse(&mut self, w: &Wanted, reason: String) {
        let record = self.record_for(w);
        if record.stopping.is_some() {
            return;
        }
        tracing::warn!(workload = %w.uid, %reason, "refused");
        record.status.reason = Some(reason);
        record.stopping = Some("Refused".into());
        record.set_state(WorkloadState::Failed);
        self.save(&w.uid);
    }

    async fn start(&mut self, w: &Wanted, allocation: &Allocation) {
        let limits = match limits_of(&allocation.spec) {
            Ok(l) => l,
            Err(reason) => return self.refuse(w, reason),
        };
        let dir = WorkloadRecord::dir(&self.config.workloads_dir(), &w.uid);
        let hostname = w.name.clone();
        let record = self.record_for(w);
        if record.handle.is_some() {
            record.status.restarts += 1;
        }
        record.set_state(WorkloadState::Starting);
        record.status.reason = None;
        record.status.exit_code = None;
        record.status.signal = None;
        record.status.finished_at = None;
        self.save(&w.uid);
        // What the workload may know of where it runs (Nomad's NOMAD_*, Kubernetes' downward
        // API); the fencing epoch lets it tag what it writes, so a stale run can be told apart.
        let mut spec = w.spec.clone();
        for (key, value) in [
            ("INFRAOS_NODE", self.config.name.clone()),
            ("INFRAOS_PROJECT", w.namespace.clone()),
            ("INFRAOS_CLAIM", w.claim.clone()),
            ("INFRAOS_ALLOCATION_UID", w.uid.clone()),
            ("INFRAOS_FENCING_EPOCH", w.epoch.to_string()),
        ] {
            spec.env.insert(key.to_string(), value);
        }
        let workload_uid = self.workload_uid(&w.uid);
        let task = TaskConfig {
            id: w.uid.clone(),
            spec,
            limits,
            dir,
            hostname,
            workload_uid,
            deadline: Deadline {
                stop_at_ms: crate::reconcile::stop_at(w.expire_time, &w.spec).unix_millis(),
                grace_ms: w.spec.stop_grace.as_millis(),
            },
        };
        let result = self.driver.start(&task).await;
        let Some(record) = self.records.get_mut(&w.uid) else {
            return;
        };
        match result {
            Ok(handle) => {
                record.status.pid = u32::try_from(handle.pid).ok();
                record.status.uid = handle.uid;
                record.status.started_at = Some(Time::from_unix_millis(handle.started_at_ms));
                record.handle = Some(handle.clone());
                record.set_state(WorkloadState::Running);
                tracing::info!(workload = %w.uid, pid = handle.pid, "workload running");
                self.save(&w.uid);
                self.watch_exit(w.uid.clone(), handle);
            }
            Err(e) => {
                tracing::warn!(workload = %w.uid, error = %e, "workload did not start");
                record.status.reason = Some(e.to_string());
                if matches!(e, DriverError::Refused(_)) {
                    record.stopping = Some("Refused".into());
                } else {
                    let delay = record.spec.restart.delay(record.status.restarts);
                    record.next_start_ms =
                        Some(now().unix_millis() + i64::try_from(delay.as_millis()).unwrap_or(0));
                }
                record.set_state(WorkloadState::Failed);
                self.save(&w.uid);
            }
        }
    }

    /// The unprivileged uid for an allocation's runs: one of the agent's range, picked from
    /// the allocation's uid and moved on past uids that other live records hold, so no two
    /// runs on this node share one (they could signal each other or read each other's files).
    fn workload_uid(&self, allocation: &str) -> u32 {
        let (base, count) = (
            self.config.workload_uid_base,
            self.config.workload_uid_count.max(1),
        );
        if let Some(uid) = self.records.get(allocation).and_then(|r| r.status.uid) {
            // A restart keeps its uid (files it wrote in a writable path stay its own).
            return uid;
        }
        let taken: HashSet<u32> = self
            .records
            .iter()
            .filter(|(id, r)| id.as_str() != allocation && !r.status.state.is_final())
            .filter_map(|(_, r)| r.status.uid)
            .collect();
        let start = allocation.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (0..u64::from(count))
            .map(|i| base.saturating_add(((start.wrapping_add(i)) % u64::from(count)) as u32))
            .find(|uid| !taken.contains(uid))
            .unwrap_or(base)
    }

    fn stop(&mut self, uid: &str, reason: &'static str) {
        let Some(record) = self.records.get_mut(uid) else {
            return;
        };
        record.stopping = Some(reason.to_string());
        record.status.reason = Some(reason.to_string());
        let grace = record.spec.stop_grace.as_std();
        let handle = record.handle.clone();
        self.save(uid);
        tracing::info!(workload = uid, reason, "stopping workload");
        if let Some(handle) = handle {
            let driver = self.driver.clone();
            tokio::spawn(async move {
                if let Err(e) = driver.stop(&handle, grace).await {
                    tracing::warn!(error = %e, "stopping failed");
                }
            });
        }
    }

    fn renew(&mut self, uid: &str) {
        let Some(record) = self.records.get(uid) else {
            return;
        };
        if !self.renewing.insert(uid.to_string()) {
            return;
        }
        let client = self.shared.client();
        let path = format!(
            "/agent/v1/namespaces/{}/allocations/{}/renew",
            record.namespace, record.name
        );
        let body = RenewRequest {
            fencing_epoch: record.epoch,
        };
        let tx = self.events_tx.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            let expire = match client
                .send_json::<_, serde_json::Value>(reqwest::Method::POST, &path, &body)
                .await
            {
                Ok(v) => v
                    .pointer("/status/expireTime")
                    .and_then(|t| serde_json::from_value::<Time>(t.clone()).ok()),
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    None
                }
            };
            let _ = tx.send(Event::Renewed(uid, expire));
        });
    }

    /// Sends every status the server has not acknowledged yet (one request per workload).
    fn report(&mut self) {
        for (uid, record) in &self.records {
            if record.reported || self.reporting.contains(uid) {
                continue;
            }
            self.reporting.insert(uid.clone());
            let client = self.shared.client();
            let path = format!(
                "/agent/v1/namespaces/{}/allocations/{}/workload",
                record.namespace, record.name
            );
            let mut status = record.status.clone();
            status.fencing_epoch = record.epoch;
            let tx = self.events_tx.clone();
            let uid = uid.clone();
            tokio::spawn(async move {
                let state = status.state;
                let ok = match client
                    .send_json::<_, ()>(reqwest::Method::PUT, &path, &status)
                    .await
                {
                    Ok(()) => true,
                    // A newer epoch or a vanished allocation will never take this report.
                    Err(e) if matches!(e.code(), Some(404 | 409 | 403)) => {
                        tracing::info!(error = %e, "workload report refused; not retrying");
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "workload report failed; will retry");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        false
                    }
                };
                let _ = tx.send(Event::Reported(uid, state, ok));
            });
        }
    }
}
