//! The reconciler's side effects: it turns [`reconcile::compute`]'s actions into runs through
//! the driver registry (start, stop, renew, forget), follows their exits, keeps each run's
//! record on disk before and after every step, and reports workload status to the server.
//! Which driver runs a workload is the workload's `driver`; which one a run belongs to is its
//! handle's, so nothing here knows a driver in particular.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::Time;
use infraos_api::agent_protocol::RenewRequest;
use infraos_api::kinds::{Allocation, NodeSpec, ResourceLimits, Tier, WorkloadState};
use infraos_exec::{Deadline, DriverError, DriverRegistry, TaskConfig, TaskHandle, TaskState};
use tokio::sync::{mpsc, watch};

use super::{Shared, deadline_of, wanted_of};
use crate::AgentError;
use crate::config::AgentConfig;
use crate::reconcile::{self, Action, Local, Wanted};
use crate::workloads::{self, WorkloadRecord};

enum Event {
    Exited(String, TaskState),
    Reported(String, WorkloadState, bool),
    Renewed(String, Option<Time>),
}

pub(super) struct Reconciler {
    shared: Arc<Shared>,
    drivers: Arc<DriverRegistry>,
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
    pub(super) fn new(
        shared: Arc<Shared>,
        drivers: Arc<DriverRegistry>,
        config: AgentConfig,
    ) -> Reconciler {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Reconciler {
            shared,
            drivers,
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
            let state = self.drivers.recover(&handle);
            match state {
                TaskState::Running => {
                    tracing::info!(workload = %uid, pid = ?handle.pid, "re-adopted a running workload");
                    self.watch_exit(uid.clone(), handle);
                }
                ended => self.on_exit(&uid, ended),
            }
        }
    }

    fn watch_exit(&self, uid: String, handle: TaskHandle) {
        let drivers = self.drivers.clone();
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let state = drivers.wait(&handle).await;
            let _ = tx.send(Event::Exited(uid, state));
        });
    }

    pub(super) async fn run(
        mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
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
        let now_ms = self.shared.clock.now().unix_millis();
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
        self.drivers.cleanup(&record.spec.driver, uid);
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
                    && let Err(e) = self.drivers.set_deadline(handle, deadline_of(r))
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
            self.shared.clock.now(),
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
                    if let Some(r) = self.records.get(&uid) {
                        self.drivers.cleanup(&r.spec.driver, &uid);
                    }
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
        let limits = match ResourceLimits::for_allocation(&allocation.spec) {
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
        let result = self.drivers.start(&task).await;
        let Some(record) = self.records.get_mut(&w.uid) else {
            return;
        };
        match result {
            Ok(handle) => {
                record.status.pid = handle.pid.and_then(|p| u32::try_from(p).ok());
                record.status.uid = handle.uid;
                record.status.started_at = Some(Time::from_unix_millis(handle.started_at_ms));
                record.handle = Some(handle.clone());
                record.set_state(WorkloadState::Running);
                tracing::info!(workload = %w.uid, pid = ?handle.pid, "workload running");
                self.save(&w.uid);
                self.watch_exit(w.uid.clone(), handle);
            }
            Err(e) => {
                tracing::warn!(workload = %w.uid, error = %e, "workload did not start");
                record.status.reason = Some(e.to_string());
                if matches!(
                    e,
                    DriverError::Refused(_)
                        | DriverError::UnknownDriver(_)
                        | DriverError::Unsupported { .. }
                ) {
                    record.stopping = Some("Refused".into());
                } else {
                    let delay = record.spec.restart.delay(record.status.restarts);
                    record.next_start_ms = Some(
                        self.shared.clock.now().unix_millis()
                            + i64::try_from(delay.as_millis()).unwrap_or(0),
                    );
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
            let drivers = self.drivers.clone();
            tokio::spawn(async move {
                if let Err(e) = drivers.stop(&handle, grace).await {
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
