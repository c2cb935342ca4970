//! The scheduler controller: keeps the scheduler's snapshot and queue in step with the store,
//! and runs batches through the pure scheduler and the plan applier.
//!
//! ```text
//!   reflectors (classes, nodes, resources, allocations, claims) ──► one channel
//!        │ drain every pending change, then:
//!        ├─ cluster changed and claims wait as unschedulable ──► requeue them (≥ 1 s apart)
//!        └─ while claims are queued: batch ─► Scheduler::plan ─► applier::prepare
//!                                                      └─► batch writer task (in order) ─► settle
//!                       (at most MAX_IN_FLIGHT batches unsettled; all settled before idling)
//! ```
//! Level-triggered: a claim is queued whenever its latest state is Pending and it is neither
//! queued nor known unschedulable; the store, not this loop, is the source of truth, and a
//! stale decision is caught by the applier's compare-and-swap.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use infraos_api::Kind as _;
use infraos_api::kinds::{
    AllocationSpec, ClaimPhase, ClaimSpec, ClassAmounts, NodeSpec, PriorityClassSpec, ProjectSpec,
    QueueSpec, QuotaSpec, ResourceClassSpec, ResourceSpec, TenantSpec,
};
use infraos_scheduler::planner::WAITING_FOR_PREEMPTION;
use infraos_scheduler::{AllocationMeta, Outcome, Scheduler, Snapshot};
use infraos_store::{Decoded, EventKind, KeyValue};
use tokio::sync::{mpsc, watch};

use super::applier::{self, ClaimEntry};
use super::feed::AllocationFeed;
use super::ledger::Ledger;
use super::pending::PendingQueue;
use crate::Context as AppState;
use crate::ControlError as ServerError;
use crate::ControlError as ApiError;
use crate::audit::Actor;
use crate::objects::{self, decode_typed};
use crate::reflector::{self, Change};
use crate::write::{self as update, Audit, Decision, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Source {
    Classes,
    Nodes,
    Resources,
    Allocations,
    Claims,
    PriorityClasses,
    Queues,
    Quotas,
    Projects,
    Tenants,
}

const SOURCES: [Source; 10] = [
    Source::Classes,
    Source::Nodes,
    Source::Resources,
    Source::Allocations,
    Source::Claims,
    Source::PriorityClasses,
    Source::Queues,
    Source::Quotas,
    Source::Projects,
    Source::Tenants,
];

/// What applying one stored object to the snapshot changed.
pub(super) enum Applied {
    /// Capacity, constraints or quotas: unschedulable claims may fit now.
    Cluster,
    /// Nothing that changes where claims fit.
    Quiet,
    AllocationHeld {
        preempting: bool,
    },
    /// An allocation stopped holding resources: its uid and resources, and whether the
    /// snapshot gave them back (not when it holds a newer allocation under the key).
    AllocationEnded {
        uid: String,
        resources: Vec<String>,
        removed: bool,
    },
    /// A claim: the snapshot does not hold claims; the caller decides what to do with it.
    Claim(Box<infraos_api::kinds::Claim>),
}

/// The store prefix a source reflects.
fn source_prefix(source: Source) -> String {
    match source {
        Source::Classes => objects::prefix(ResourceClassSpec::INFO, None),
        Source::Nodes => objects::prefix(NodeSpec::INFO, None),
        Source::Resources => objects::prefix(ResourceSpec::INFO, None),
        Source::Allocations => objects::prefix(AllocationSpec::INFO, None),
        Source::Claims => objects::prefix(ClaimSpec::INFO, None),
        Source::PriorityClasses => objects::prefix(PriorityClassSpec::INFO, None),
        Source::Queues => objects::prefix(QueueSpec::INFO, None),
        Source::Quotas => objects::prefix(QuotaSpec::INFO, None),
        Source::Projects => objects::prefix(ProjectSpec::INFO, None),
        Source::Tenants => objects::prefix(TenantSpec::INFO, None),
    }
}

/// Applies one stored object to the snapshot, as the scheduler sees it (shared with replay).
/// An allocation's state applies only if it is newer than the one the snapshot holds for
/// its key (see [`Snapshot::apply_allocation_at`]).
pub(super) fn apply_object(
    snapshot: &mut Snapshot,
    source: Source,
    id: &str,
    kv: &KeyValue,
) -> Result<Applied, ApiError> {
    Ok(match source {
        Source::Classes => {
            let c = decode_typed::<ResourceClassSpec>(kv)?;
            snapshot.upsert_class(id, &c.spec);
            Applied::Cluster
        }
        Source::Nodes => {
            let n = decode_typed::<NodeSpec>(kv)?;
            snapshot.upsert_node(id, &n.metadata.labels, &n.spec, n.status.as_ref());
            Applied::Cluster
        }
        Source::Resources => {
            let r = decode_typed::<ResourceSpec>(kv)?;
            snapshot.upsert_resource(id, &r.metadata.labels, &r.spec);
            Applied::Cluster
        }
        Source::Allocations => {
            let a = decode_typed::<AllocationSpec>(kv)?;
            if a.status.as_ref().is_some_and(|s| s.phase.holds_resources()) {
                let created = a.metadata.creation_timestamp.map_or(0, |t| t.unix_millis());
                let mut meta = AllocationMeta::of(&a.spec, a.status.as_ref(), created);
                meta.labels = a.metadata.labels;
                let preempting = meta.preempting;
                if snapshot.apply_allocation_at(id, &a.spec.resources, meta, kv.mod_revision) {
                    Applied::AllocationHeld { preempting }
                } else {
                    Applied::Quiet
                }
            } else {
                let mut resources: Vec<String> = a
                    .spec
                    .resources
                    .iter()
                    .map(|p| p.resource.clone())
                    .collect();
                resources.sort_unstable();
                resources.dedup();
                Applied::AllocationEnded {
                    removed: snapshot.remove_allocation_at(id, kv.mod_revision),
                    uid: a.metadata.uid,
                    resources,
                }
            }
        }
        Source::Claims => Applied::Claim(Box::new(decode_typed::<ClaimSpec>(kv)?)),
        Source::PriorityClasses => {
            let p = decode_typed::<PriorityClassSpec>(kv)?;
            snapshot.upsert_priority_class(id, &p.spec);
            Applied::Cluster
        }
        Source::Queues => {
            let q = decode_typed::<QueueSpec>(kv)?;
            snapshot.upsert_queue(id, q.spec.weight);
            Applied::Quiet
        }
        Source::Quotas => {
            let q = decode_typed::<QuotaSpec>(kv)?;
            snapshot.upsert_quota(id, &q.spec);
            Applied::Cluster
        }
        Source::Projects => {
            let p = decode_typed::<ProjectSpec>(kv)?;
            snapshot.upsert_project(id, &p.spec.tenant);
            Applied::Quiet
        }
        Source::Tenants => {
            let t = decode_typed::<TenantSpec>(kv)?;
            snapshot.upsert_tenant(id, t.spec.placement.as_ref());
            Applied::Cluster
        }
    })
}

/// Replay's way in (`explain.rs`): the snapshot this loop's cache would hold, built from the
/// objects `list` returns for each store prefix the cache reflects (claims excepted: the
/// snapshot holds none), each applied as the loop applies it. The caller chooses how to list
/// (explain reads the store at a past revision) and sets the snapshot's revision.
pub(crate) async fn snapshot_from<L, F>(mut list: L) -> Result<Snapshot, ApiError>
where
    L: FnMut(String) -> F,
    F: std::future::Future<Output = Result<Vec<KeyValue>, ApiError>>,
{
    let mut snapshot = Snapshot::new();
    for source in SOURCES {
        if source == Source::Claims {
            continue;
        }
        for kv in &list(source_prefix(source)).await? {
            apply_object(&mut snapshot, source, &object_id(&kv.key), kv)?;
        }
    }
    Ok(snapshot)
}

/// Adds to a replayed snapshot an allocation the scheduler had assumed when it decided (its
/// own earlier commits), as the loop applies an allocation it reads: only when newer than
/// the one held under its key.
pub(crate) fn assume_allocation(
    snapshot: &mut Snapshot,
    id: &str,
    kv: &KeyValue,
) -> Result<(), ApiError> {
    apply_object(snapshot, Source::Allocations, id, kv).map(drop)
}

/// What reaches the loop: a change, with its claims already decoded when it comes from the
/// claims reflector (decoding them was a quarter of the loop's work; a task beside the loop
/// does it, on another core when there is one).
struct Input {
    change: Change<Source>,
    /// Aligned with the change's objects (`None`: a delete, or not decoded).
    claims: Vec<Option<DecodedClaim>>,
}

impl From<Change<Source>> for Input {
    fn from(change: Change<Source>) -> Self {
        Input {
            change,
            claims: Vec::new(),
        }
    }
}

/// A claim from the claims reflector, decoded beside the loop.
enum DecodedClaim {
    Pending(Arc<infraos_api::kinds::Claim>),
    /// Allocated, deleting or otherwise not the scheduler's: only that is decoded (half the
    /// claim events are the scheduler's own Allocated echoes).
    NotPending,
}

/// What tells whether a stored claim is pending, read without decoding the rest.
#[derive(serde::Deserialize)]
struct ClaimProbe {
    metadata: ProbeMeta,
    #[serde(default)]
    status: Option<ProbeStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeMeta {
    #[serde(default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ProbeStatus {
    #[serde(default)]
    phase: Option<ClaimPhase>,
}

/// Decodes the claims of a change from the claims reflector.
fn decode_claims(change: &Change<Source>) -> Vec<Option<DecodedClaim>> {
    let decode = |kv: &KeyValue, decoded: Option<&Decoded>| {
        // Created by the API in this process: the claim it admitted is what it stored.
        if let Some(claim) = decoded.and_then(|d| {
            Arc::clone(&d.0)
                .downcast::<infraos_api::kinds::Claim>()
                .ok()
        }) {
            return Some(if is_pending(&claim) {
                DecodedClaim::Pending(claim)
            } else {
                DecodedClaim::NotPending
            });
        }
        let pending = serde_json::from_slice::<ClaimProbe>(&kv.value).map(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .is_none_or(|s| s.phase.is_none_or(|ph| ph == ClaimPhase::Pending))
        });
        match pending {
            Ok(false) => Some(DecodedClaim::NotPending),
            _ => decode_typed::<ClaimSpec>(kv)
                .ok()
                .map(|c| DecodedClaim::Pending(Arc::new(c))),
        }
    };
    match change {
        Change::Resync(_, kvs, _) => kvs.iter().map(|kv| decode(kv, None)).collect(),
        Change::Events(_, events) => events
            .iter()
            .map(|e| match e.kind {
                EventKind::Put => decode(&e.kv, e.decoded.as_ref()),
                EventKind::Delete => None,
            })
            .collect(),
    }
}

/// Whether a claim is the scheduler's to place: Pending and not being deleted.
fn is_pending(claim: &infraos_api::kinds::Claim) -> bool {
    claim.metadata.deletion_timestamp.is_none()
        && claim
            .status
            .as_ref()
            .is_none_or(|s| s.phase == ClaimPhase::Pending)
}

const REQUEUE_INTERVAL: Duration = Duration::from_secs(1);
/// Batches written but not yet settled: the next batch is planned while the previous one is
/// committed (its fsync, its status writes), on a snapshot that already assumes it. With 3
/// the loop spent a quarter of a 40,000-claim run waiting for the writer; 8 lets several
/// batches share a group commit (`docs/benchmarks.md`, 2026-11-29d).
const MAX_IN_FLIGHT: usize = 8;
const FULL_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// How often records are rewritten without the holders that ended (they are pruned from
/// any record a batch writes anyway).
const COMPACTION_INTERVAL: Duration = Duration::from_secs(5);

struct Controller {
    state: AppState,
    scheduler: Scheduler,
    snapshot: Snapshot,
    /// Pending claims by `namespace/name`.
    claims: HashMap<String, ClaimEntry>,
    queue: PendingQueue,
    /// Claims that fit nowhere last time, with the message recorded.
    unschedulable: HashMap<String, String>,
    /// Revisions our own commits produced: claim events up to them are echoes to ignore.
    committed: HashMap<String, u64>,
    /// How allocation events and our own assumptions reach the snapshot.
    feed: AllocationFeed,
    /// The committed holdings every placement is checked against before it is written.
    ledger: Ledger,
    /// The sequence number of the next batch.
    next_batch: u64,
    last_compaction: Instant,
    known: HashMap<Source, HashSet<String>>,
    synced: HashSet<Source>,
    cluster_changed: bool,
    last_requeue: Instant,
    /// Claims waiting for their preemption victims to end: requeued the moment an
    /// allocation frees resources (not after the requeue interval), so that they, being of
    /// higher priority, go before the victims' own requeued claims.
    preemptors: HashSet<String>,
    /// Quota figures as last written to each Quota's status.
    quota_written: HashMap<String, (ClassAmounts, ClassAmounts)>,
    quota_generation: u64,
    last_quota_write: Instant,
    /// Prepared batches go to the batch writer task; written ones come back, in order.
    to_writer: mpsc::Sender<applier::Writes>,
    from_writer: mpsc::Receiver<applier::Written>,
    /// The claims each unsettled batch decided, oldest first: not queued again meanwhile.
    in_flight: VecDeque<Vec<String>>,
    in_flight_claims: HashSet<String>,
}

const QUOTA_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the reflectors and the scheduling loop.
pub fn spawn(
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let scheduler = Scheduler::new(state.config.scheduler.clone())?;
    let (tx, rx) = mpsc::channel::<Input>(16_384);
    for source in SOURCES {
        let prefix = source_prefix(source);
        if source == Source::Claims {
            let (claims_tx, mut claims_rx) = mpsc::channel::<Change<Source>>(1024);
            tokio::spawn(reflector::run(
                state.store.clone(),
                prefix,
                source,
                claims_tx,
                shutdown.clone(),
            ));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(change) = claims_rx.recv().await {
                    let claims = decode_claims(&change);
                    if tx.send(Input { change, claims }).await.is_err() {
                        return;
                    }
                }
            });
            continue;
        }
        tokio::spawn(reflector::run(
            state.store.clone(),
            prefix,
            source,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    let (to_writer, mut writes) = mpsc::channel::<applier::Writes>(MAX_IN_FLIGHT);
    let (written_tx, from_writer) = mpsc::channel::<applier::Written>(MAX_IN_FLIGHT);
    let writer_state = state.clone();
    // The batch writer: writes prepared batches concurrently, so that the store's group
    // commit takes several in one fsync; they reach the store in the order planned (futures
    // are first polled in the order pushed: a replay counts earlier batches' allocations as
    // assumed), and come back in that order.
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                batch = writes.recv(), if open => match batch {
                    Some(batch) => {
                        let state = writer_state.clone();
                        pending.push_back(async move { applier::write(&state, batch).await });
                    }
                    None => open = false,
                },
                Some(written) = pending.next(), if !pending.is_empty() => {
                    if written_tx.send(written).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    });
    let controller = Controller {
        state,
        scheduler,
        snapshot: Snapshot::new(),
        claims: HashMap::new(),
        queue: PendingQueue::default(),
        unschedulable: HashMap::new(),
        committed: HashMap::new(),
        feed: AllocationFeed::default(),
        ledger: Ledger::default(),
        next_batch: 0,
        last_compaction: Instant::now(),
        known: HashMap::new(),
        synced: HashSet::new(),
        cluster_changed: false,
        last_requeue: Instant::now(),
        preemptors: HashSet::new(),
        quota_written: HashMap::new(),
        quota_generation: u64::MAX,
        last_quota_write: Instant::now(),
        to_writer,
        from_writer,
        in_flight: VecDeque::new(),
        in_flight_claims: HashSet::new(),
    };
    Ok(tokio::spawn(controller.run(rx, shutdown)))
}

pub(crate) use crate::objects::object_id;

impl Controller {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>, mut shutdown: watch::Receiver<bool>) {
        let mut last_full_retry = Instant::now();
        loop {
            let quota_behind = self.snapshot.governance_generation() != self.quota_generation;
            let wait = if self.unschedulable.is_empty() && !quota_behind {
                FULL_RETRY_INTERVAL
            } else {
                REQUEUE_INTERVAL
            };
            tokio::select! {
                change = rx.recv() => match change {
                    Some(c) => self.handle(c),
                    None => return,
                },
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            while let Ok(c) = rx.try_recv() {
                self.handle(c);
            }
            if self.synced.len() < SOURCES.len() {
                continue;
            }
            self.state.ready.store(true, Ordering::Release);
            if !self.ledger.is_ready() {
                // Loaded with nothing in flight: no allocation appears while it reads.
                let mut failed = self.settle_all().await;
                match self.ledger.load(&*self.state.store).await {
                    Ok(0) => {}
                    Ok(corrected) => {
                        tracing::info!(corrected, "holdings records made to match the allocations")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load the holdings records; retrying");
                        failed = true;
                    }
                }
                if failed {
                    if reflector::sleep_or_shutdown(&mut shutdown, Duration::from_millis(500)).await
                    {
                        return;
                    }
                    continue;
                }
            }
            if last_full_retry.elapsed() >= FULL_RETRY_INTERVAL {
                self.cluster_changed = true;
                last_full_retry = Instant::now();
            }
            if self.cluster_changed && self.last_requeue.elapsed() >= REQUEUE_INTERVAL {
                self.requeue_unschedulable();
            }
            let mut backoff = false;
            while !self.queue.is_empty() && !backoff {
                backoff = self.schedule_batch().await;
                while let Ok(c) = rx.try_recv() {
                    self.handle(c);
                }
            }
            // Nothing stays unsettled while the loop waits.
            backoff |= self.settle_all().await;
            if !backoff {
                backoff |= self.tend_ledger().await;
            }
            if !backoff {
                self.write_quota_status().await;
            }
            if backoff
                && reflector::sleep_or_shutdown(&mut shutdown, Duration::from_millis(500)).await
            {
                return;
            }
        }
    }

    fn requeue_unschedulable(&mut self) {
        self.cluster_changed = false;
        self.last_requeue = Instant::now();
        let keys: Vec<String> = self.unschedulable.keys().cloned().collect();
        for key in keys {
            self.enqueue(key);
        }
    }

    fn enqueue(&mut self, key: String) {
        if self.in_flight_claims.contains(&key) {
            return; // its batch settles it, and queues it again if it must be
        }
        let Some(entry) = self.claims.get(&key) else {
            return;
        };
        let claim = &entry.claim;
        let priority = infraos_scheduler::claim_priority(&self.snapshot, claim).0;
        let gang = claim
            .spec
            .group
            .as_ref()
            .map(|g| format!("{}/{}", claim.namespace().unwrap_or_default(), g.name));
        self.queue.push(key, priority, gang);
    }

    fn handle(&mut self, input: Input) {
        let Input { change, claims } = input;
        let mut claims = claims.into_iter();
        match change {
            Change::Resync(source, kvs, revision) => {
                let names: HashSet<String> = kvs.iter().map(|kv| object_id(&kv.key)).collect();
                let gone: Vec<String> = self
                    .known
                    .get(&source)
                    .map(|old| old.difference(&names).cloned().collect())
                    .unwrap_or_default();
                for id in gone {
                    self.remove(source, &id, revision);
                }
                match source {
                    // Ends may have been missed while the watch was behind: the ledger is
                    // loaded again from the allocations before the next batch.
                    Source::Allocations => self.ledger.invalidate(),
                    Source::Resources => self.ledger.forget_resources(),
                    _ => {}
                }
                for kv in &kvs {
                    self.upsert(source, kv, claims.next().flatten());
                }
                self.known.insert(source, names);
                self.synced.insert(source);
                self.snapshot.set_revision(revision);
                self.cluster_changed = true;
            }
            Change::Events(source, events) => {
                for event in events.iter() {
                    let kv = &event.kv;
                    self.snapshot.set_revision(kv.mod_revision);
                    match event.kind {
                        EventKind::Put => {
                            self.known
                                .entry(source)
                                .or_default()
                                .insert(object_id(&kv.key));
                            self.upsert(source, kv, claims.next().flatten());
                        }
                        EventKind::Delete => {
                            claims.next();
                            let id = object_id(&kv.key);
                            if let Some(known) = self.known.get_mut(&source) {
                                known.remove(&id);
                            }
                            if source == Source::Allocations {
                                let applied = self.feed.delete(&mut self.snapshot, &id, kv);
                                self.applied(&id, kv.mod_revision, Ok(applied));
                                continue;
                            }
                            self.remove(source, &id, kv.mod_revision);
                        }
                    }
                }
            }
        }
    }

    /// `decoded`: the claim `kv` holds, when decoded already.
    fn upsert(&mut self, source: Source, kv: &KeyValue, decoded: Option<DecodedClaim>) {
        let id = object_id(&kv.key);
        if source == Source::Allocations {
            let applied = self.feed.put(&mut self.snapshot, &id, kv);
            self.applied(&id, kv.mod_revision, applied);
            return;
        }
        if source == Source::Resources {
            self.ledger.resource_seen(&id, kv.mod_revision);
        }
        match decoded {
            Some(DecodedClaim::Pending(claim)) => {
                self.upsert_claim(id, kv.mod_revision, claim, kv.value.len());
                return;
            }
            Some(DecodedClaim::NotPending) => {
                if self
                    .committed
                    .get(&id)
                    .is_none_or(|&r| r <= kv.mod_revision)
                {
                    self.forget_claim(&id);
                }
                return;
            }
            None => {}
        }
        match apply_object(&mut self.snapshot, source, &id, kv) {
            Ok(Applied::Claim(claim)) => {
                self.upsert_claim(id, kv.mod_revision, Arc::new(*claim), kv.value.len())
            }
            applied => self.applied(&id, kv.mod_revision, applied),
        }
    }

    /// Acts on what applying object `id`, stored at `revision`, changed.
    fn applied(&mut self, id: &str, revision: u64, applied: Result<Applied, ApiError>) {
        for ended in self.feed.take_ended() {
            self.ledger.ended(&ended.uid, ended.resources);
        }
        match applied {
            Ok(Applied::Cluster) => self.cluster_changed = true,
            Ok(Applied::Quiet) => {}
            Ok(Applied::AllocationHeld { preempting }) => {
                if preempting {
                    // Claims waiting for preemption look again when victims end.
                    self.cluster_changed = true;
                }
            }
            Ok(Applied::AllocationEnded { removed, .. }) => {
                if removed {
                    self.cluster_changed = true;
                    self.wake_preemptors();
                }
            }
            Ok(Applied::Claim(claim)) => {
                // Its stored size is not known here: the applier estimates it.
                self.upsert_claim(id.to_string(), revision, Arc::new(*claim), 0)
            }
            Err(e) => {
                tracing::error!(object = %id, revision, error = ?e, "cannot decode a stored object; ignoring it");
            }
        }
    }

    /// `size`: the claim's stored bytes (0 when not known), which the applier sizes its
    /// transactions by.
    fn upsert_claim(
        &mut self,
        id: String,
        revision: u64,
        claim: Arc<infraos_api::kinds::Claim>,
        size: usize,
    ) {
        if self.committed.get(&id).is_some_and(|&r| r > revision) {
            return; // an event from before our own commit
        }
        if !is_pending(&claim) {
            self.forget_claim(&id);
            return;
        }
        self.claims.insert(
            id.clone(),
            ClaimEntry {
                claim,
                revision,
                size,
            },
        );
        if !self.unschedulable.contains_key(&id) {
            self.enqueue(id);
        }
    }

    /// A placement of `key` did not become an allocation: a preemptor keeps its nomination.
    fn unplaced(&mut self, key: &str) {
        if self.scheduler.unplaced(key) {
            tracing::debug!(claim = %key, "a preemptor's placement did not stick; it keeps its nomination");
        }
    }

    /// Requeues the claims that wait for preempted allocations to end.
    fn wake_preemptors(&mut self) {
        let keys: Vec<String> = self.preemptors.iter().cloned().collect();
        for key in keys {
            self.unschedulable.remove(&key);
            self.enqueue(key);
        }
    }

    fn forget_claim(&mut self, id: &str) {
        self.preemptors.remove(id);
        self.scheduler.forget(id);
        self.claims.remove(id);
        self.unschedulable.remove(id);
        self.committed.remove(id);
    }

    /// Object `id` of `source` is gone as of `revision`.
    fn remove(&mut self, source: Source, id: &str, revision: u64) {
        match source {
            Source::Classes => self.snapshot.remove_class(id),
            Source::Nodes => self.snapshot.remove_node(id),
            Source::Resources => {
                self.ledger.resource_gone(id);
                self.snapshot.remove_resource(id);
            }
            Source::Allocations => {
                if matches!(
                    self.feed.gone(&mut self.snapshot, id, revision),
                    Applied::AllocationEnded { .. }
                ) {
                    self.cluster_changed = true;
                    self.wake_preemptors();
                }
            }
            Source::Claims => self.forget_claim(id),
            Source::PriorityClasses => self.snapshot.remove_priority_class(id),
            Source::Queues => self.snapshot.remove_queue(id),
            Source::Quotas => {
                self.snapshot.remove_quota(id);
                self.cluster_changed = true;
            }
            Source::Projects => self.snapshot.remove_project(id),
            Source::Tenants => {
                self.snapshot.remove_tenant(id);
                self.cluster_changed = true;
            }
        }
    }

    /// Decides up to one batch of the queued claims, chosen by the scheduler's fair order
    /// over all of them; returns true when the store failed.
    async fn schedule_batch(&mut self) -> bool {
        // Records a failed batch wrote are read again before anything builds on them.
        let unread = self.ledger.unread_all();
        if !unread.is_empty()
            && let Err(e) = self.ledger.refresh(&*self.state.store, &unread).await
        {
            tracing::warn!(error = %e, "cannot read holdings records again");
            return true;
        }
        let max = self.state.config.scheduler_batch.max(1);
        // The scheduler orders by fair share within a window of the queue's head (highest
        // priorities, oldest first), wide enough for that order to matter.
        let window = self.queue.window(max.saturating_mul(4).max(1024));
        let mut batch: Vec<(String, Arc<infraos_api::kinds::Claim>)> =
            Vec::with_capacity(window.len());
        for key in window {
            match self.claims.get(&key) {
                Some(entry) => batch.push((key, Arc::clone(&entry.claim))),
                None => self.queue.remove(&key),
            }
        }
        if batch.is_empty() {
            return false;
        }
        let refs: Vec<(String, &infraos_api::kinds::Claim)> =
            batch.iter().map(|(k, c)| (k.clone(), c.as_ref())).collect();
        let now = self.state.clock.now().unix_millis();
        let plan = self.scheduler.plan_at(&self.snapshot, &refs, now, max);
        let decided: HashSet<&str> = plan
            .decisions
            .iter()
            .map(|d| d.claim_key.as_str())
            .collect();
        for key in &decided {
            self.queue.remove(key);
        }
        for d in &plan.decisions {
            let waits_for_victims = match &d.outcome {
                Outcome::Preempt(_) => true,
                Outcome::Unschedulable(e) => e.reason == WAITING_FOR_PREEMPTION,
                Outcome::Placed(_) => false,
            };
            if waits_for_victims {
                self.preemptors.insert(d.claim_key.clone());
            } else {
                self.preemptors.remove(&d.claim_key);
            }
        }
        // One plan may be written as several transactions (the store's limit on one), each
        // its own batch for the ledger, written in order.
        let batches = applier::prepare(
            &self.state,
            &mut self.snapshot,
            &mut self.ledger,
            &mut self.next_batch,
            plan,
            &self.claims,
        )
        .await;
        for writes in &batches {
            self.in_flight_claims.extend(writes.decided.iter().cloned());
            for key in &writes.assumed {
                self.feed.assume(key);
            }
        }
        let mut store_failed = false;
        for writes in batches {
            self.in_flight.push_back(writes.decided.clone());
            if self.to_writer.send(writes).await.is_err() {
                return true; // shutting down
            }
            while self.in_flight.len() >= MAX_IN_FLIGHT {
                store_failed |= self.settle_next().await;
            }
        }
        store_failed
    }

    /// Settles the oldest written batch; true when the store failed.
    async fn settle_next(&mut self) -> bool {
        let Some(keys) = self.in_flight.pop_front() else {
            return false;
        };
        let Some(written) = self.from_writer.recv().await else {
            return true; // shutting down
        };
        for key in &keys {
            self.in_flight_claims.remove(key);
        }
        self.ledger
            .settle(written.batch, written.committed.is_some());
        let mut applied = written.applied;
        for unsigned in written.unsigned {
            // Left out of the transaction after the ledger counted it: its holder is pruned.
            self.ledger.ended(&unsigned.uid, unsigned.resources);
            let effect = self.feed.not_committed(&mut self.snapshot, &unsigned.key);
            self.applied(&unsigned.key, 0, effect);
            self.unplaced(&unsigned.key);
            applied.retry.push(unsigned.key);
        }
        match written.committed {
            Some(revision) => {
                for key in written.assumed {
                    let effect = self.feed.committed(&mut self.snapshot, &key, revision);
                    self.applied(&key, revision, effect);
                    self.unschedulable.remove(&key);
                    // Placed for good: its nomination and victims are done with.
                    self.scheduler.forget(&key);
                    // Its Allocated echo may have come already (and forgotten the claim).
                    if self.claims.remove(&key).is_some() {
                        self.committed.insert(key, revision);
                    }
                }
            }
            None => {
                // The assumptions are undone; what was stored meanwhile applies.
                for key in written.assumed {
                    let effect = self.feed.not_committed(&mut self.snapshot, &key);
                    self.applied(&key, 0, effect);
                    self.unplaced(&key);
                    applied.retry.push(key);
                }
            }
        }
        for (key, message) in applied.unschedulable {
            self.unschedulable.insert(key, message);
        }
        // Placements that never reached the transaction (no longer fitting the snapshot,
        // or refused by the holdings ledger): their claims keep the nominations they had,
        // so the room their victims freed stays held for them (issue 17).
        for key in applied
            .retry
            .iter()
            .chain(applied.refused.iter().map(|(k, _)| k))
        {
            self.unplaced(key);
        }
        if !applied.refused.is_empty() {
            // Tried again at the next requeue, after the audit of their resources.
            self.cluster_changed = true;
            for (key, message) in applied.refused {
                self.unschedulable.insert(key, message);
            }
        }
        for key in applied.retry {
            self.refresh_claim(&key).await;
        }
        // A claim that changed while its batch was written came back pending; it was not
        // queued then (its batch held it), so it is now.
        for key in keys {
            if self.claims.contains_key(&key) && !self.unschedulable.contains_key(&key) {
                self.enqueue(key);
            }
        }
        applied.store_failed
    }

    /// With nothing in flight: audits the resources whose records refused what the snapshot
    /// allowed, and writes records without the holders that ended (at most every few
    /// seconds). True when the store failed.
    async fn tend_ledger(&mut self) -> bool {
        if self.ledger.has_suspects() {
            match self.ledger.audit(&*self.state.store).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::warn!(pruned, "holdings listed allocations that had ended");
                    self.cluster_changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot audit holdings");
                    return true;
                }
            }
        }
        if self.last_compaction.elapsed() >= COMPACTION_INTERVAL {
            self.last_compaction = Instant::now();
            if let Err(e) = self.ledger.compact(&*self.state.store).await {
                tracing::warn!(error = %e, "cannot compact holdings");
                return true;
            }
        }
        false
    }

    /// Settles every written batch; true when the store failed.
    async fn settle_all(&mut self) -> bool {
        let mut store_failed = false;
        while !self.in_flight.is_empty() {
            store_failed |= self.settle_next().await;
        }
        store_failed
    }

    /// Writes each Quota's usage to its status when it changed, at most once a second.
    async fn write_quota_status(&mut self) {
        let generation = self.snapshot.governance_generation();
        if generation == self.quota_generation
            || self.last_quota_write.elapsed() < QUOTA_STATUS_INTERVAL
        {
            return;
        }
        self.quota_generation = generation;
        self.last_quota_write = Instant::now();
        let revision = self.snapshot.revision();
        let figures: Vec<(String, ClassAmounts, ClassAmounts)> = self
            .snapshot
            .quotas()
            .iter()
            .map(|q| (q.name.clone(), q.used(), q.borrowed()))
            .filter(|(name, used, borrowed)| {
                self.quota_written.get(name) != Some(&(used.clone(), borrowed.clone()))
            })
            .collect();
        let actor = Actor::system("scheduler");
        for (name, used, borrowed) in figures {
            let result = update::update::<QuotaSpec, _>(
                &self.state,
                Target {
                    namespace: None,
                    name: &name,
                    actor: &actor,
                },
                || ApiError::not_found("Quota", &name),
                |quota, _| {
                    let status = quota.status.get_or_insert_with(Default::default);
                    if status.used == used && status.borrowed == borrowed {
                        return Ok(Decision::Unchanged(()));
                    }
                    status.used = used.clone();
                    status.borrowed = borrowed.clone();
                    status.observed_revision = revision;
                    Ok(Decision::Write {
                        audit: Audit {
                            verb: "update",
                            subresource: Some("status"),
                            reason: Some("quota usage".into()),
                            node: None,
                        },
                        result: (),
                    })
                },
            )
            .await;
            match result {
                Ok(()) => {
                    self.quota_written.insert(name, (used, borrowed));
                }
                Err(e) => {
                    // Written again on the next change or pass.
                    self.quota_generation = u64::MAX;
                    tracing::debug!(quota = %name, error = %e, "cannot write quota status");
                }
            }
        }
    }

    /// Re-reads a claim after a conflict, so the next attempt uses its current revision.
    async fn refresh_claim(&mut self, id: &str) {
        let Some((ns, name)) = id.split_once('/') else {
            return;
        };
        let key = objects::key(ClaimSpec::INFO, Some(ns), name);
        match self.state.store.get(&key).await {
            Ok(Some(kv)) => match decode_typed::<ClaimSpec>(&kv) {
                Ok(c) => {
                    self.committed.remove(id);
                    self.unschedulable.remove(id);
                    self.upsert_claim(id.to_string(), kv.mod_revision, Arc::new(c), kv.value.len());
                }
                Err(e) => tracing::error!(claim = %id, error = ?e, "cannot decode claim"),
            },
            Ok(None) => self.forget_claim(id),
            Err(e) => {
                tracing::warn!(claim = %id, error = %e, "cannot re-read claim; will retry");
                self.enqueue(id.to_string());
            }
        }
    }
}
