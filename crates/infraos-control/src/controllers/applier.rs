//! The plan applier: the one place where scheduling decisions become stored allocations.
//!
//! ```text
//!   prepare: plan (made on the snapshot) ─► for each placement: Snapshot::fits? ── no ─► retry
//!                                              │ yes
//!                                    ledger: fits the committed holdings? ── no ─► refused:
//!                                              │ yes              logged, resources audited,
//!                                              ▼                  claim retried at the requeue
//!                                    assume it in the snapshot, add it to the batch's records
//!   write (off the scheduling loop, batches in order):
//!            one transaction for the batch:  compare claim revision, allocation absent,
//!                                              each holdings record's version, each Resource
//!                                            put Allocation, put Claim status, put records,
//!                                              append audit record
//!            then the pending claims' statuses
//!   settle:  ├─ committed ─► done (the watch echo of our writes is idempotent)
//!            └─ conflict  ─► undo every assumption of the batch, retry those claims on fresh state
//! ```
//! The next batch is planned while one is written, on a snapshot that assumes it: if that
//! batch then fails, the next one was planned on less room than there was, never more.
//! The snapshot is a cache and can be wrong (issue 17 found it losing an allocation), so it
//! is not what the invariant rests on: each placement is also checked against the holdings
//! records (`controllers/ledger.rs`), which the batch's own transaction compares and writes.
//! A batch commits only if every record it used is still exactly the one it checked against,
//! so no interleaving of batches, and no error of the snapshot, can exceed a resource's
//! capacity or hand out an item twice (Nomad's plan applier re-checks against its state
//! store the same way). Unschedulable decisions are written as claim status, only when
//! their explanation changes.

use foldhash::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, Claim, ClaimSpec, Preemption, Unschedulable};
use infraos_scheduler::{Explanation, Outcome, Plan, Snapshot, Victim};
use infraos_store::{Compare, Txn, TxnCost, TxnLimits};

use super::ledger::{Ledger, LedgerWrites};
use crate::Context as AppState;
use crate::audit::{self, Actor, Record};
use crate::events;
use crate::lease;
use crate::objects::{self, encode_typed, encode_typed_mut};

use super::preemption_text::{as_seen_from, preemption_message, same_project};

/// A claim as the scheduler last saw it in the store.
#[derive(Clone, Debug)]
pub struct ClaimEntry {
    pub claim: Arc<Claim>,
    pub revision: u64,
    /// Its stored bytes (0: not known), which its placement's transaction is sized by.
    pub size: usize,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Claims to place again on fresher state.
    pub retry: Vec<String>,
    /// Claims that fit nowhere, with the message written to their status.
    pub unschedulable: Vec<(String, String)>,
    /// Placements the snapshot allowed but the committed holdings refused, with why.
    pub refused: Vec<(String, String)>,
    /// The store failed: back off before the next batch.
    pub store_failed: bool,
}

fn claim_key(entry: &ClaimEntry) -> String {
    objects::key(ClaimSpec::INFO, entry.claim.namespace(), entry.claim.name())
}

fn alloc_key(entry: &ClaimEntry) -> String {
    objects::key(
        AllocationSpec::INFO,
        entry.claim.namespace(),
        entry.claim.name(),
    )
}

/// Signs the instruction to run an allocation's workload, so the agent can tell it came from
/// this control plane unchanged. SLH-DSA signatures take ~135 ms: made off the runtime.
async fn sign_instruction(
    state: &AppState,
    allocation: &mut infraos_api::kinds::Allocation,
) -> Result<(), String> {
    use infraos_api::signature::{Algorithm, Purpose};
    let Some(body) = infraos_api::instruction::body(allocation) else {
        return Ok(());
    };
    let signer = state.signer.clone();
    let signature = if signer.algorithm() == Algorithm::Ed25519 {
        signer.sign(Purpose::Instruction, &body)
    } else {
        tokio::task::spawn_blocking(move || signer.sign(Purpose::Instruction, &body))
            .await
            .map_err(|e| e.to_string())?
    }
    .map_err(|e| e.to_string())?;
    allocation.spec.signature = Some(signature);
    Ok(())
}

/// What a batch writes once its placements are re-checked and assumed in the snapshot: one
/// transaction for the allocations, and the statuses of the claims left pending.
pub struct Writes {
    /// The batch's sequence number (the ledger's name for it).
    batch: u64,
    /// What each assumed placement writes, encoded by the writer (off the scheduling loop).
    placed: Vec<PlacedWrite>,
    /// The holdings records the batch compares and writes.
    holdings: LedgerWrites,
    now: infraos_api::Time,
    /// Claims assumed allocated in the snapshot, committed by one transaction.
    pub assumed: Vec<String>,
    unschedulable: Vec<(String, ClaimEntry, Why)>,
    snapshot_revision: u64,
    /// What is known before writing (placements that no longer fit, preemption failures).
    applied: Applied,
    /// The claims this batch decided (placed, or left pending with a status to write).
    pub decided: Vec<String>,
}

impl Writes {
    fn new(batch: u64, now: infraos_api::Time, snapshot_revision: u64) -> Writes {
        Writes {
            batch,
            placed: Vec::new(),
            holdings: LedgerWrites::default(),
            now,
            assumed: Vec::new(),
            unschedulable: Vec::new(),
            snapshot_revision,
            applied: Applied::default(),
            decided: Vec::new(),
        }
    }
}

/// One placement to write: its claim as decided on, and where it goes. The writer builds
/// the allocation and the claim's Allocated status from it.
struct PlacedWrite {
    key: String,
    /// The allocation's uid, chosen before it is built: the holdings records name it.
    uid: String,
    entry: ClaimEntry,
    placement: infraos_scheduler::Placement,
    position: u32,
}

/// A written batch, to be settled in the snapshot and the ledger.
pub struct Written {
    pub batch: u64,
    /// The revision the allocations were committed at, or `None` when they were not.
    pub committed: Option<u64>,
    /// The assumed claims the transaction carried.
    pub assumed: Vec<String>,
    /// Assumed claims left out of it: their instruction could not be signed.
    pub unsigned: Vec<Unsigned>,
    pub applied: Applied,
}

/// A placement left out of its batch's transaction after the ledger counted it.
pub struct Unsigned {
    pub key: String,
    pub uid: String,
    pub resources: Vec<String>,
}

/// Re-checks each placement against the snapshot and assumes it there, starts preempting
/// victims, and prepares the plan's writes: one batch (one transaction) while the store takes
/// it whole, several in order otherwise ([`infraos_store::TxnLimits`]: a default etcd takes
/// about 30 placements in one). Each batch has its own sequence number (`next_batch`), so the
/// ledger chains them as it chains plans, and one that fails takes with it only the later ones
/// that build on the same records. A gang's members go in one batch: all or none. Nothing is
/// written yet but the preemptions (rare, and each its own compare-and-swap).
pub async fn prepare(
    state: &AppState,
    snapshot: &mut Snapshot,
    ledger: &mut Ledger,
    next_batch: &mut u64,
    plan: Plan,
    claims: &HashMap<String, ClaimEntry>,
) -> Vec<Writes> {
    let limits = state.store.txn_limits();
    let sizes = Sizes::of(state);
    let now = state.clock.now();
    let snapshot_revision = plan.snapshot_revision;
    let mut sequence = || {
        let batch = *next_batch;
        *next_batch += 1;
        batch
    };
    let mut batch = Writes::new(sequence(), now, snapshot_revision);
    // Placements by unit (a gang, or one claim), in the order of their first decision.
    let mut units: Vec<Vec<(u32, String, infraos_scheduler::Placement)>> = Vec::new();
    let mut unit_of: HashMap<String, usize> = HashMap::default();
    for (position, decision) in plan.decisions.into_iter().enumerate() {
        let Some(entry) = claims.get(&decision.claim_key) else {
            continue;
        };
        let position = u32::try_from(position).unwrap_or(u32::MAX);
        match decision.outcome {
            Outcome::Placed(placement) => {
                let unit = match &entry.claim.spec.group {
                    Some(group) => {
                        let ns = decision.claim_key.split_once('/').map_or("", |(ns, _)| ns);
                        format!("gang:{ns}/{}", group.name)
                    }
                    None => decision.claim_key.clone(),
                };
                let index = *unit_of.entry(unit).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[index].push((position, decision.claim_key, placement));
            }
            Outcome::Unschedulable(explanation) => {
                let mut why = Why::from(&explanation);
                why.position = position;
                batch.decided.push(decision.claim_key.clone());
                batch
                    .unschedulable
                    .push((decision.claim_key, entry.clone(), why));
            }
            Outcome::Preempt(preemption) => {
                let mut started = Vec::new();
                for victim in &preemption.victims {
                    match preempt_victim(state, snapshot, victim, &decision.claim_key).await {
                        Ok(true) => started.push(victim),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(victim = %victim.allocation, error = %e, "preempting failed");
                            batch.applied.store_failed = true;
                        }
                    }
                }
                let own = decision.claim_key.split_once('/').map_or("", |(ns, _)| ns);
                let message = preemption_message(&preemption, &|victim| same_project(victim, own));
                tracing::info!(claim = %decision.claim_key, victims = started.len(), "preempting");
                batch.decided.push(decision.claim_key.clone());
                batch.unschedulable.push((
                    decision.claim_key,
                    entry.clone(),
                    Why {
                        reason: "Preempting",
                        message,
                        explanation: preemption.explanation,
                        position,
                    },
                ));
            }
        }
    }
    // The statuses of claims left pending are written with the first batch; each placement
    // goes with the batch whose transaction carries it.
    let mut sealed: Vec<Writes> = Vec::new();
    let mut cost = TxnCost::default();
    for unit in units {
        let mut members = Vec::with_capacity(unit.len());
        for (position, key, placement) in unit {
            let Some(entry) = claims.get(&key) else {
                continue;
            };
            if let Err(e) = snapshot.fits(&placement.resources) {
                tracing::debug!(claim = %key, error = %e, "placement no longer fits");
                batch.decided.push(key.clone());
                batch.applied.retry.push(key);
                continue;
            }
            members.push((position, key, placement, entry));
        }
        if members.is_empty() {
            continue;
        }
        let mut unit_cost = sizes.unit_cost(ledger, batch.batch, &members);
        if !limits.admits(cost.plus(unit_cost)) && !batch.placed.is_empty() {
            let next = Writes::new(sequence(), now, snapshot_revision);
            let full = std::mem::replace(&mut batch, next);
            sealed.push(seal(ledger, full));
            cost = TxnCost::default();
            unit_cost = sizes.unit_cost(ledger, batch.batch, &members);
        }
        if !limits.admits(unit_cost) {
            let message = too_large_message(&unit_cost, &limits, members.len());
            tracing::warn!(claims = members.len(), %message, "placement too large for one transaction");
            for (position, key, _, entry) in members {
                batch.decided.push(key.clone());
                batch.unschedulable.push((
                    key,
                    entry.clone(),
                    Why {
                        reason: TOO_LARGE_FOR_STORE,
                        message: message.clone(),
                        explanation: Explanation {
                            reason: TOO_LARGE_FOR_STORE,
                            detail: Some(message.clone()),
                            candidate_kind: "nodes",
                            ..Explanation::default()
                        },
                        position,
                    },
                ));
            }
            continue;
        }
        cost = cost.plus(unit_cost);
        for (position, key, placement, entry) in members {
            batch.decided.push(key.clone());
            let uid = uuid::Uuid::new_v4().to_string();
            if let Err(e) = ledger.take(batch.batch, snapshot, &key, &uid, &placement.resources) {
                // The snapshot let through what the committed holdings refuse: it is wrong
                // (or behind), and this is the place that catches it.
                tracing::error!(
                    claim = %key,
                    node = ?placement.node,
                    error = %e,
                    "holdings ledger refused a placement the snapshot allowed"
                );
                ledger.refused(&placement.resources);
                batch
                    .applied
                    .refused
                    .push((key, format!("refused by the holdings ledger: {e}")));
                continue;
            }
            let meta = lease::allocation_meta(&entry.claim, &placement, now);
            snapshot.apply_allocation(&key, &placement.resources, meta);
            batch.assumed.push(key.clone());
            batch.placed.push(PlacedWrite {
                key,
                uid,
                entry: entry.clone(),
                placement,
                position,
            });
        }
    }
    sealed.push(seal(ledger, batch));
    sealed
}

/// The reason a claim stays pending when placing it (with its gang) takes more than one
/// transaction of the store can carry.
pub const TOO_LARGE_FOR_STORE: &str = "TooLargeForStore";

fn too_large_message(cost: &TxnCost, limits: &TxnLimits, claims: usize) -> String {
    let what = if claims > 1 {
        format!("placing this gang's {claims} members together")
    } else {
        "placing this claim".to_string()
    };
    format!(
        "{what} takes {} compares, {} operations and about {} bytes in one transaction; \
         the store takes at most {} compares, {} operations and {} bytes (etcd's \
         --max-txn-ops and --max-request-bytes, named in the store URL as maxTxnOps and \
         maxRequestBytes)",
        cost.compares,
        cost.ops(),
        cost.bytes,
        limits.compares,
        limits.ops,
        limits.bytes
    )
}

/// Seals a batch's holdings records into its writes.
fn seal(ledger: &mut Ledger, mut batch: Writes) -> Writes {
    batch.holdings = ledger.seal(batch.batch, !batch.assumed.is_empty());
    batch
}

/// What sizes a placement's share of a transaction (bytes are estimates, on the safe side:
/// the allocation copies the claim's spec, and its audit entry the allocation).
struct Sizes {
    /// The instruction's signature as stored (base64 of 64 bytes for Ed25519, of 7,856 for
    /// SLH-DSA).
    signature: usize,
}

/// Bytes one holder adds to a holdings record (a claim key, a uid, amounts and items).
const HOLDER_BYTES: usize = 256;
/// Bytes of an allocation, claim status and audit entry besides the claim's own.
const PLACEMENT_OVERHEAD: usize = 2048;
/// Bytes of each placed resource in the allocation and its audit entry.
const RESOURCE_BYTES: usize = 512;

impl Sizes {
    fn of(state: &AppState) -> Sizes {
        use infraos_api::signature::Algorithm;
        let raw = match state.signer.algorithm() {
            Algorithm::Ed25519 => 64,
            Algorithm::SlhDsaSha2_128s => 7856,
        };
        Sizes {
            signature: raw * 4 / 3 + 256,
        }
    }

    /// What a unit's placements add to batch `batch`'s transaction: per placement, the claim's
    /// compare and the allocation's, their two puts and an audit entry; per resource whose
    /// record the batch does not write yet, the record's version compare, the Resource's
    /// revision compare, and the record's put.
    fn unit_cost(
        &self,
        ledger: &Ledger,
        batch: u64,
        members: &[(u32, String, infraos_scheduler::Placement, &ClaimEntry)],
    ) -> TxnCost {
        let mut resources: Vec<&str> = members
            .iter()
            .flat_map(|(_, _, p, _)| p.resources.iter().map(|r| r.resource.as_str()))
            .collect();
        resources.sort_unstable();
        resources.dedup();
        let (records, record_bytes) = ledger.records_cost(batch, &resources, HOLDER_BYTES);
        let mut bytes = record_bytes;
        for (_, key, placement, entry) in members {
            let claim = if entry.size > 0 {
                entry.size
            } else {
                serde_json::to_vec(&*entry.claim).map_or(64 * 1024, |v| v.len())
            };
            let allocation = claim
                + self.signature
                + placement.resources.len() * RESOURCE_BYTES
                + PLACEMENT_OVERHEAD;
            // The claim's put, the allocation's, and the audit entry holding the allocation.
            bytes += claim + 2 * allocation + 4 * (key.len() + 64);
            bytes += placement.resources.len() * HOLDER_BYTES;
        }
        let n = members.len();
        TxnCost {
            compares: 2 * n + 2 * records,
            writes: 2 * n + records,
            ledger_entries: n,
            bytes,
        }
    }
}

/// Writes a prepared batch: the allocations' transaction, then the pending claims' statuses.
/// Touches no scheduler state, so it runs while the next batch is planned.
pub async fn write(state: &AppState, writes: Writes) -> Written {
    let Writes {
        batch,
        placed,
        holdings,
        now,
        assumed,
        unschedulable,
        snapshot_revision,
        mut applied,
        decided: _,
    } = writes;
    let actor = Actor::system("scheduler");
    let mut txn = Txn::new();
    let mut assumed = assumed;
    let mut unsigned = Vec::new();
    // One allocation of the transaction, to tell afterwards whether it committed.
    let mut probe: Option<(String, String)> = None;
    for p in placed {
        let mut claim = (*p.entry.claim).clone();
        let mut allocation = lease::allocate(&mut claim, &p.placement, now, snapshot_revision);
        allocation.metadata.uid = p.uid;
        allocation.spec.batch_position = p.position;
        if let Err(e) = sign_instruction(state, &mut allocation).await {
            tracing::error!(claim = %p.key, error = %e, "cannot sign the instruction; placing it later");
            assumed.retain(|k| k != &p.key);
            let mut resources: Vec<String> = p
                .placement
                .resources
                .iter()
                .map(|r| r.resource.clone())
                .collect();
            resources.sort_unstable();
            resources.dedup();
            unsigned.push(Unsigned {
                key: p.key,
                uid: allocation.metadata.uid,
                resources,
            });
            continue;
        }
        let alloc_bytes = encode_typed(&allocation);
        if probe.is_none() {
            probe = Some((alloc_key(&p.entry), allocation.metadata.uid.clone()));
        }
        let mut object = audit::object_ref("Allocation", claim.namespace(), claim.name());
        object.uid = Some(allocation.metadata.uid.clone());
        let payload = Record {
            actor: &actor,
            verb: "allocate",
            object,
            code: 201,
            reason: None,
            before: None,
            after: Some(&alloc_bytes),
            node: p.placement.node,
        }
        .payload(now);
        txn = txn
            .when(Compare::unchanged(claim_key(&p.entry), p.entry.revision))
            .when(Compare::absent(alloc_key(&p.entry)))
            .put(alloc_key(&p.entry), alloc_bytes)
            .put(claim_key(&p.entry), encode_typed_mut(&mut claim))
            .append(payload);
    }
    // The holdings records: each compared on the version the batch's check was made
    // against, each Resource on the revision its capacity was read at.
    for compare in holdings.compares {
        txn = txn.when(compare);
    }
    for (key, record) in holdings.puts {
        txn = txn.put(key, record.encode());
    }
    let mut committed = None;
    if !assumed.is_empty() {
        match state.store.txn(txn).await {
            Ok(out) if out.succeeded => committed = Some(out.revision),
            outcome => {
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "committing a plan failed");
                    applied.store_failed = true;
                }
                // A store that failed mid-request, or answered a resend after the first send
                // committed, may have written the batch all the same: the snapshot must not
                // lose allocations that exist, so look.
                if let Some((key, uid)) = &probe {
                    committed = committed_anyway(state, key, uid).await;
                }
                if committed.is_none() && outcome.is_ok() {
                    tracing::debug!(
                        claims = assumed.len(),
                        "plan conflicted with newer state; retrying"
                    );
                }
            }
        }
    }
    let writes = unschedulable
        .into_iter()
        .map(|(key, entry, why)| write_unschedulable(state, key, entry, why, snapshot_revision));
    for outcome in join_all(writes).await {
        match outcome {
            StatusWrite::Recorded(key, message) => applied.unschedulable.push((key, message)),
            StatusWrite::Changed => {}
            StatusWrite::StoreFailed(key) => {
                applied.store_failed = true;
                applied.retry.push(key);
            }
        }
    }
    Written {
        batch,
        committed,
        assumed,
        unsigned,
        applied,
    }
}

/// The revision the batch was committed at, if the allocation at `key` is the one it wrote
/// (`uid`); asks again while the store does not answer (up to 30 s, then assumes not).
async fn committed_anyway(state: &AppState, key: &str, uid: &str) -> Option<u64> {
    for _ in 0..60 {
        match state.store.get(key).await {
            Ok(Some(kv)) => {
                let ours = objects::decode_typed::<AllocationSpec>(&kv)
                    .is_ok_and(|a| a.metadata.uid == uid);
                return ours.then_some(kv.mod_revision);
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(allocation = %key, error = %e, "cannot tell whether a plan committed; asking again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    None
}

/// Why a claim stays pending: a reason code, the message users read, and the counts.
struct Why {
    reason: &'static str,
    message: String,
    explanation: Explanation,
    /// The decision's position in its batch.
    position: u32,
}

impl From<&Explanation> for Why {
    fn from(explanation: &Explanation) -> Self {
        Why {
            reason: explanation.reason,
            message: explanation.message(),
            explanation: explanation.clone(),
            position: 0,
        }
    }
}

/// Starts preempting one victim: cuts its lease (CAS on the allocation and its claim),
/// audits it and records an event on both claims. `Ok(false)` when it no longer holds
/// resources or is already being preempted.
async fn preempt_victim(
    state: &AppState,
    snapshot: &mut Snapshot,
    victim: &Victim,
    preemptor: &str,
) -> Result<bool, infraos_store::StoreError> {
    let mut extra = Vec::new();
    if let Some((pns, pname)) = preemptor.split_once('/') {
        let involved = events::claim_ref(pname, Some(pns), "");
        extra.push(events::build(
            &involved,
            events::NORMAL,
            "Preempting",
            &format!(
                "preempting {} (priority {}): {}",
                as_seen_from(&victim.allocation, pns),
                victim.priority,
                victim.reason
            ),
            "scheduler",
            state.clock.now(),
        ));
    }
    let stopped = stop_early(
        state,
        &victim.allocation,
        Stop {
            by: preemptor,
            reason: &victim.reason,
            actor: "scheduler",
            verb: "preempt",
            event_reason: "Preempted",
            done: "preempted",
        },
        extra,
    )
    .await?;
    if stopped {
        snapshot.mark_preempting(&victim.allocation);
    }
    Ok(stopped)
}

/// Why and by whom an allocation is stopped before its lease ends.
pub(crate) struct Stop<'a> {
    /// The preempting claim, or the gang whose member was lost.
    pub by: &'a str,
    pub reason: &'a str,
    pub actor: &'static str,
    /// The audit verb.
    pub verb: &'static str,
    /// The Warning event's reason on the stopped claim.
    pub event_reason: &'static str,
    /// What happened, for messages: `preempted`, `stopped`.
    pub done: &'static str,
}

/// Stops allocation `ns/name` early: cuts its lease to its workload's stop grace and records
/// `status.preemption` (the lease controller then ends it and requeues its claim), with an
/// audit record and an event, in one compare-and-swap on the allocation and its claim (plus
/// `extra` events). `Ok(false)` when it no longer holds resources or is already stopping.
pub(crate) async fn stop_early(
    state: &AppState,
    allocation_key: &str,
    stop: Stop<'_>,
    extra: Vec<(String, Vec<u8>)>,
) -> Result<bool, infraos_store::StoreError> {
    let Some((ns, name)) = allocation_key.split_once('/') else {
        return Ok(false);
    };
    let alloc_key = objects::key(AllocationSpec::INFO, Some(ns), name);
    let claim_key = objects::key(ClaimSpec::INFO, Some(ns), name);
    let Some(alloc_kv) = state.store.get(&alloc_key).await? else {
        return Ok(false);
    };
    let Ok(mut allocation) = objects::decode_typed::<AllocationSpec>(&alloc_kv) else {
        return Ok(false);
    };
    let holds = allocation
        .status
        .as_ref()
        .is_some_and(|s| s.phase.holds_resources() && s.preemption.is_none());
    if !holds {
        return Ok(false);
    }
    let claim_kv = state.store.get(&claim_key).await?;
    let mut claim = claim_kv
        .as_ref()
        .and_then(|kv| objects::decode_typed::<ClaimSpec>(kv).ok());
    let now = state.clock.now();
    // The victim's project reads its status and events; the audit record keeps the name.
    let shown_by = if stop.verb == "preempt" {
        as_seen_from(stop.by, ns)
    } else {
        stop.by
    };
    let marked = lease::preempt(
        claim.as_mut(),
        &mut allocation,
        now,
        Preemption {
            by: shown_by.to_string(),
            time: now,
            reason: stop.reason.to_string(),
        },
    );
    if let Err(e) = marked {
        // Past its expireTime: it ends Expired (final) after the margin, freeing its room.
        tracing::debug!(allocation = %allocation_key, error = %e, "not stopped early");
        return Ok(false);
    }
    let alloc_bytes = encode_typed(&allocation);
    let mut object = audit::object_ref("Allocation", Some(ns), name);
    object.uid = Some(allocation.metadata.uid.clone());
    let payload = Record {
        actor: &Actor::system(stop.actor),
        verb: stop.verb,
        object,
        code: 200,
        reason: Some(format!("{} by {}: {}", stop.done, stop.by, stop.reason)),
        before: Some(&alloc_kv.value),
        after: Some(&alloc_bytes),
        node: allocation.spec.node.clone(),
    }
    .payload(now);
    let mut txn = Txn::new()
        .when(Compare::unchanged(alloc_key.clone(), alloc_kv.mod_revision))
        .put(alloc_key, alloc_bytes)
        .append(payload);
    let expire = allocation
        .status
        .as_ref()
        .map(|s| s.lease.expire_time.to_string())
        .unwrap_or_default();
    if let (Some(claim), Some(kv)) = (&claim, &claim_kv) {
        let (event_key, event_bytes) = events::build(
            &events::claim_ref(claim.name(), claim.namespace(), &claim.metadata.uid),
            events::WARNING,
            stop.event_reason,
            &format!(
                "{} by {}: {}; the workload is stopped and the lease ends at {expire}",
                stop.done, shown_by, stop.reason
            ),
            stop.actor,
            now,
        );
        txn = txn
            .when(Compare::unchanged(claim_key.clone(), kv.mod_revision))
            .put(claim_key, encode_typed(claim))
            .put(event_key, event_bytes);
    }
    for (key, bytes) in extra {
        txn = txn.put(key, bytes);
    }
    Ok(state.store.txn(txn).await?.succeeded)
}

/// Records why a claim stays pending, if that changed since the last attempt.
async fn write_unschedulable(
    state: &AppState,
    key: String,
    entry: ClaimEntry,
    why: Why,
    snapshot_revision: u64,
) -> StatusWrite {
    let Why {
        reason,
        message,
        explanation,
        position,
    } = why;
    let current = entry.claim.status.as_ref();
    if current.and_then(|s| s.message.as_deref()) == Some(message.as_str()) {
        return StatusWrite::Recorded(key, message);
    }
    tracing::debug!(claim = %key, reason, %message, "pending");
    let now = state.clock.now();
    let mut claim = (*entry.claim).clone();
    let status = claim.status.get_or_insert_with(Default::default);
    status.reason = Some(reason.into());
    status.message = Some(message.clone());
    status.unschedulable = Some(Unschedulable {
        candidates: explanation.candidates,
        candidate_kind: explanation.candidate_kind.to_string(),
        reasons: explanation.reasons.clone(),
        snapshot_revision,
        batch_position: position,
    });
    let bytes = encode_typed_mut(&mut claim);
    let involved = events::claim_ref(claim.name(), claim.namespace(), &claim.metadata.uid);
    let (event_key, event_bytes) = events::build(
        &involved,
        if reason == "Preempting" {
            events::NORMAL
        } else {
            events::WARNING
        },
        if reason == "Preempting" {
            "Preempting"
        } else {
            "FailedScheduling"
        },
        &message,
        "scheduler",
        now,
    );
    let mut object = audit::object_ref("Claim", claim.namespace(), claim.name());
    object.uid = Some(claim.metadata.uid.clone());
    let payload = Record {
        actor: &Actor::system("scheduler"),
        verb: "schedule",
        object,
        code: 409,
        reason: Some(format!("{reason}: {message}")),
        before: None,
        after: None,
        node: None,
    }
    .payload(now);
    let ck = claim_key(&entry);
    let result = state
        .store
        .txn(
            Txn::new()
                .when(Compare::unchanged(ck.clone(), entry.revision))
                .put(ck, bytes)
                .put(event_key, event_bytes)
                .append(payload),
        )
        .await;
    match result {
        Ok(out) if out.succeeded => StatusWrite::Recorded(key, message),
        // The claim changed meanwhile: its new state will be scheduled again.
        Ok(_) => StatusWrite::Changed,
        Err(e) => {
            tracing::warn!(claim = %key, error = %e, "could not record why a claim is unschedulable; it will be placed again");
            StatusWrite::StoreFailed(key)
        }
    }
}

/// What became of writing a claim's unschedulable status.
enum StatusWrite {
    Recorded(String, String),
    /// The claim changed meanwhile; its watch event brings it back.
    Changed,
    /// Nothing was written and no event will come: the claim must be queued again, or it
    /// would wait for a change that never happens (the chaos harness caught one so).
    StoreFailed(String),
}

#[cfg(test)]
#[path = "applier_tests.rs"]
mod limits_tests;
