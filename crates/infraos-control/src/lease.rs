//! The lease contract (DESIGN §2) as pure functions over a claim and its allocation.
//!
//! ```text
//!   acquire ──► Active ──renew (before expireTime)──► Active (expireTime moves)
//!                 │ release / claim deleted ──────────► Released  (freed now)
//!                 │ preempted (before expireTime) ────► lease cut; after it + margin: claim requeued
//!                 └ now > expireTime + skew margin ────► Expired   (freed only then)
//! ```
//! Expired is final. A renewal after `expireTime` is refused even inside the skew margin: the
//! agent may already have stopped the workload, and only a new allocation (with a higher
//! fencing epoch) may run it again. For the same reason a lease past `expireTime` cannot be
//! marked preempted: preemption requeues its claim, and that would revive an expired lease
//! through the back door (issue 17, finding 2). The API handlers and the lease controller both go through these functions, and
//! commit the results with compare-and-swap on both objects.

use infraos_api::kinds::{
    Allocation, AllocationPhase, AllocationSpec, AllocationStatus, Claim, ClaimPhase, ClaimRef,
    Lease, NODE_LABEL, Preemption,
};
use infraos_api::{Duration, Object, OwnerReference, Time};
use infraos_scheduler::{AllocationMeta, Placement};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("claim is {0}, not Allocated")]
    NotAllocated(&'static str),
    #[error("the lease expired at {0}; create a new claim to allocate again")]
    Expired(Time),
    #[error("the allocation is {0}")]
    Ended(&'static str),
    #[error("the allocation is being preempted by {0}; it cannot be renewed")]
    Preempting(String),
}

/// What the lease controller should do about an allocation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryAction {
    /// Past expireTime plus the margin: free it.
    Expire,
    /// Look again at this time.
    CheckAt(Time),
    /// Nothing to watch: the allocation no longer holds resources.
    Done,
}

pub fn expiry_action(allocation: &Allocation, now: Time, skew_margin: Duration) -> ExpiryAction {
    let Some(status) = &allocation.status else {
        return ExpiryAction::Done;
    };
    if !status.phase.holds_resources() {
        return ExpiryAction::Done;
    }
    let free_at = status.lease.expire_time.plus(skew_margin);
    if now > free_at {
        ExpiryAction::Expire
    } else {
        ExpiryAction::CheckAt(free_at)
    }
}

/// What the scheduler's snapshot records of the allocation [`allocate`] makes for `claim`
/// at `placement`: derived the same way, without building it (the allocation itself is built
/// and encoded off the scheduling loop).
pub fn allocation_meta(claim: &Claim, placement: &Placement, now: Time) -> AllocationMeta {
    AllocationMeta {
        priority: claim.spec.priority.unwrap_or(0),
        queue: claim
            .spec
            .queue
            .clone()
            .unwrap_or_else(|| infraos_api::kinds::DEFAULT_QUEUE.to_string()),
        group: claim.spec.group.as_ref().map(|g| g.name.clone()),
        borrowing: placement.borrowing,
        preempting: false,
        created_ms: now.unix_millis(),
        labels: allocation_labels(claim, placement),
        node: placement.node.clone(),
        anti_affinity: required_anti_affinity(claim),
    }
}

/// The claim's labels, and the node's name under `infraos.io/node`: it lets a node's agent
/// watch exactly its own allocations (the node authorizer checks it).
fn allocation_labels(claim: &Claim, placement: &Placement) -> infraos_api::Labels {
    let mut labels = claim.metadata.labels.clone();
    if let Some(node) = &placement.node {
        labels.insert(NODE_LABEL.to_string(), node.clone());
    }
    labels
}

/// The claim's required anti-affinity terms, which its allocation keeps for later claims.
fn required_anti_affinity(claim: &Claim) -> Vec<infraos_api::kinds::AffinityTerm> {
    claim
        .spec
        .anti_affinity
        .iter()
        .filter(|t| !t.preferred)
        .cloned()
        .collect()
}

/// Who approved a high-risk claim; empty for the rest.
fn approvers(claim: &Claim) -> Vec<String> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.approval.as_ref())
        .map(|a| a.approvals.iter().map(|r| r.by.clone()).collect())
        .unwrap_or_default()
}

/// The Allocation for a placed claim and the claim's new status.
pub fn allocate(
    claim: &mut Claim,
    placement: &Placement,
    now: Time,
    snapshot_revision: u64,
) -> Allocation {
    let epoch = claim.status.as_ref().map_or(0, |s| s.fencing_epoch) + 1;
    let expire = now.plus(claim.spec.lease.duration);
    let mut allocation: Allocation = Object::new(
        claim.metadata.name.clone(),
        claim.metadata.namespace.as_deref(),
        AllocationSpec {
            claim: ClaimRef {
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
            },
            node: placement.node.clone(),
            resources: placement.resources.clone(),
            score: Some(placement.score.clone()),
            runner_up: placement.runner_up.clone(),
            snapshot_revision,
            batch_position: 0,
            workload: claim.spec.workload.clone(),
            renew_policy: claim.spec.lease.renew_policy,
            priority: claim.spec.priority.unwrap_or(0),
            queue: claim.spec.queue.clone(),
            group: claim.spec.group.as_ref().map(|g| g.name.clone()),
            borrowing: placement.borrowing,
            anti_affinity: required_anti_affinity(claim),
            approved_by: approvers(claim),
            signature: None,
        },
    );
    allocation.metadata.uid = uuid::Uuid::new_v4().to_string();
    allocation.metadata.creation_timestamp = Some(now);
    allocation.metadata.generation = 1;
    allocation.metadata.labels = allocation_labels(claim, placement);
    allocation.metadata.owner_references = vec![OwnerReference {
        api_version: infraos_api::API_VERSION.into(),
        kind: "Claim".into(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        controller: true,
    }];
    allocation.status = Some(AllocationStatus {
        phase: AllocationPhase::Active,
        lease: Lease {
            acquire_time: now,
            renew_time: now,
            expire_time: expire,
            fencing_epoch: epoch,
        },
        end_time: None,
        reason: None,
        workload: None,
        preemption: None,
    });
    let status = claim.status.get_or_insert_with(Default::default);
    status.phase = ClaimPhase::Allocated;
    status.allocation = Some(claim.metadata.name.clone());
    status.node = placement.node.clone();
    status.expire_time = Some(expire);
    status.fencing_epoch = epoch;
    status.reason = None;
    status.message = None;
    status.unschedulable = None;
    status.last_transition_time = Some(now);
    allocation
}

fn active_lease<'a>(
    claim: &Claim,
    allocation: &'a mut Allocation,
) -> Result<&'a mut AllocationStatus, LeaseError> {
    let phase = claim
        .status
        .as_ref()
        .map_or(ClaimPhase::Pending, |s| s.phase);
    if phase != ClaimPhase::Allocated {
        return Err(LeaseError::NotAllocated(phase.as_str()));
    }
    let status = allocation.status.get_or_insert_with(Default::default);
    if !status.phase.holds_resources() {
        return Err(LeaseError::Ended(status.phase.as_str()));
    }
    Ok(status)
}

/// Extends the lease to `now + duration`.
pub fn renew(
    claim: &mut Claim,
    allocation: &mut Allocation,
    now: Time,
    duration: Duration,
) -> Result<Time, LeaseError> {
    let status = active_lease(claim, allocation)?;
    if let Some(p) = &status.preemption {
        return Err(LeaseError::Preempting(p.by.clone()));
    }
    if !status.lease.can_renew(now) {
        return Err(LeaseError::Expired(status.lease.expire_time));
    }
    let expire = now.plus(duration);
    status.lease.renew_time = now;
    status.lease.expire_time = expire;
    if let Some(s) = claim.status.as_mut() {
        s.expire_time = Some(expire);
    }
    Ok(expire)
}

/// Ends the lease early: resources are freed at once.
pub fn release(
    claim: &mut Claim,
    allocation: &mut Allocation,
    now: Time,
    reason: &str,
) -> Result<(), LeaseError> {
    let status = active_lease(claim, allocation)?;
    status.phase = AllocationPhase::Released;
    status.end_time = Some(now);
    status.reason = Some(reason.to_string());
    if let Some(s) = claim.status.as_mut() {
        s.phase = ClaimPhase::Released;
        s.reason = Some(reason.to_string());
        s.message = None;
        s.last_transition_time = Some(now);
    }
    Ok(())
}

/// Marks an allocation whose lease ran out (plus the margin) as Expired, and its claim too.
pub fn expire(claim: Option<&mut Claim>, allocation: &mut Allocation, now: Time) {
    let status = allocation.status.get_or_insert_with(Default::default);
    let expired_at = status.lease.expire_time;
    status.phase = AllocationPhase::Expired;
    status.end_time = Some(now);
    status.reason = Some("LeaseExpired".into());
    if let Some(claim) = claim {
        let s = claim.status.get_or_insert_with(Default::default);
        if s.phase == ClaimPhase::Allocated {
            s.phase = ClaimPhase::Expired;
            s.reason = Some("LeaseExpired".into());
            s.message = Some(format!(
                "the lease expired at {expired_at} and was not renewed"
            ));
            s.last_transition_time = Some(now);
        }
    }
}

/// Marks an allocation whose lease ran out while its node was not ready as Lost, and puts its
/// claim back in the queue: the next allocation gets a higher fencing epoch, so the agent
/// that lost contact cannot act for the claim any more.
pub fn lose(claim: Option<&mut Claim>, allocation: &mut Allocation, now: Time) {
    let status = allocation.status.get_or_insert_with(Default::default);
    let expired_at = status.lease.expire_time;
    status.phase = AllocationPhase::Lost;
    status.end_time = Some(now);
    status.reason = Some("NodeLost".into());
    let node = allocation.spec.node.clone().unwrap_or_default();
    if let Some(claim) = claim {
        requeue(
            claim,
            now,
            "NodeLost",
            format!(
                "node {node} stopped heartbeating and the lease ended at {expired_at}; requeued"
            ),
        );
    }
}

/// Starts preempting an allocation: its lease is cut to end `grace` from now (the agent
/// stops the workload at `expireTime − stopGrace`, that is now), and it can no longer be
/// renewed. Its resources are freed like any lease, after `expireTime` plus the skew margin,
/// so the preemptor never runs beside a victim that has not stopped. A lease already past
/// `expireTime` is refused ([`LeaseError::Expired`]): it ends Expired, and its claim with it.
pub fn preempt(
    claim: Option<&mut Claim>,
    allocation: &mut Allocation,
    now: Time,
    preemption: Preemption,
) -> Result<(), LeaseError> {
    let grace = allocation
        .spec
        .workload
        .as_ref()
        .map_or(Duration::from_millis(0), |w| w.stop_grace);
    let status = allocation.status.get_or_insert_with(Default::default);
    if !status.phase.holds_resources() {
        return Err(LeaseError::Ended(status.phase.as_str()));
    }
    if !status.lease.can_renew(now) {
        return Err(LeaseError::Expired(status.lease.expire_time));
    }
    let cut = now.plus(grace);
    if cut < status.lease.expire_time {
        status.lease.expire_time = cut;
    }
    let expire = status.lease.expire_time;
    let message = format!(
        "preempted by {}: {}; the lease now ends at {expire}",
        preemption.by, preemption.reason
    );
    status.preemption = Some(preemption);
    if let Some(claim) = claim {
        let s = claim.status.get_or_insert_with(Default::default);
        s.expire_time = Some(expire);
        s.reason = Some("Preempting".into());
        s.message = Some(message);
    }
    Ok(())
}

/// How an allocation whose lease is over ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Its lease ran out: final, for the allocation and its claim.
    Expired,
    /// Its node is not ready: the claim is requeued.
    Lost,
    /// It was being preempted: the claim is requeued.
    Preempted,
}

/// How an allocation past `expireTime` plus the margin ends. Preempted only if it was marked
/// while its lease still ran ([`preempt`] refuses later marks; a mark made after the lease
/// ran out, by an older build, is stamped after `expireTime`): a lease that expired on its
/// own is Expired, whatever marks it collected since.
pub fn end_of(allocation: &Allocation, node_lost: bool) -> End {
    let marked_in_time = allocation.status.as_ref().is_some_and(|s| {
        s.preemption
            .as_ref()
            .is_some_and(|p| p.time <= s.lease.expire_time)
    });
    match (marked_in_time, node_lost) {
        (true, _) => End::Preempted,
        (false, true) => End::Lost,
        (false, false) => End::Expired,
    }
}

/// Ends a preempted allocation once its cut lease is over (plus the margin), and puts its
/// claim back in the queue: nothing is lost, the claim is placed again when room returns.
pub fn end_preempted(claim: Option<&mut Claim>, allocation: &mut Allocation, now: Time) {
    let status = allocation.status.get_or_insert_with(Default::default);
    status.phase = AllocationPhase::Preempted;
    status.end_time = Some(now);
    status.reason = Some("Preempted".into());
    let by = status
        .preemption
        .as_ref()
        .map(|p| p.by.clone())
        .unwrap_or_default();
    if let Some(claim) = claim {
        requeue(
            claim,
            now,
            "Preempted",
            format!("preempted by {by}; requeued"),
        );
    }
}

/// Puts an Allocated claim back in the queue (its allocation is over but the claim is not):
/// the next allocation gets a higher fencing epoch.
fn requeue(claim: &mut Claim, now: Time, reason: &str, message: String) {
    let s = claim.status.get_or_insert_with(Default::default);
    if s.phase == ClaimPhase::Allocated {
        s.phase = ClaimPhase::Pending;
        s.allocation = None;
        s.node = None;
        s.expire_time = None;
        s.reason = Some(reason.into());
        s.message = Some(message);
        s.last_transition_time = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infraos_api::kinds::{ClaimSpec, ScoreBreakdown};

    fn t(ms: i64) -> Time {
        Time::from_unix_millis(ms)
    }

    fn placed() -> (Claim, Allocation) {
        let mut claim: Claim = Object::new("c", Some("p"), ClaimSpec::default());
        claim.spec.lease.duration = Duration::from_secs(10);
        let placement = Placement {
            node: Some("n1".into()),
            resources: vec![],
            score: ScoreBreakdown::default(),
            runner_up: None,
            borrowing: false,
        };
        let alloc = allocate(&mut claim, &placement, t(1_000), 7);
        (claim, alloc)
    }

    #[test]
    fn the_snapshot_records_what_the_allocation_says() {
        let mut claim: Claim = Object::new("c", Some("p"), ClaimSpec::default());
        claim.metadata.labels.insert("app".into(), "x".into());
        claim.spec.priority = Some(42);
        claim.spec.queue = Some("q".into());
        claim.spec.group = Some(infraos_api::kinds::GroupSpec {
            name: "g".into(),
            min_members: 2,
        });
        let placement = Placement {
            node: Some("n1".into()),
            resources: vec![],
            score: ScoreBreakdown::default(),
            runner_up: None,
            borrowing: true,
        };
        let meta = allocation_meta(&claim, &placement, t(1_000));
        let alloc = allocate(&mut claim, &placement, t(1_000), 7);
        let mut from_alloc = AllocationMeta::of(&alloc.spec, alloc.status.as_ref(), 1_000);
        from_alloc.labels = alloc.metadata.labels.clone();
        assert_eq!(meta, from_alloc);
    }

    #[test]
    fn allocation_starts_a_lease_with_the_next_epoch() {
        let (claim, alloc) = placed();
        let lease = &alloc.status.as_ref().unwrap().lease;
        assert_eq!(lease.expire_time, t(11_000));
        assert_eq!(lease.fencing_epoch, 1);
        assert_eq!(claim.status.as_ref().unwrap().phase, ClaimPhase::Allocated);
        assert_eq!(alloc.spec.snapshot_revision, 7);
    }

    #[test]
    fn renew_only_before_expiry() {
        let (mut claim, mut alloc) = placed();
        assert_eq!(
            renew(&mut claim, &mut alloc, t(5_000), Duration::from_secs(10)).unwrap(),
            t(15_000)
        );
        assert_eq!(
            renew(&mut claim, &mut alloc, t(15_001), Duration::from_secs(10)),
            Err(LeaseError::Expired(t(15_000)))
        );
    }

    #[test]
    fn expiry_waits_for_the_skew_margin() {
        let (_, alloc) = placed();
        let margin = Duration::from_secs(5);
        assert_eq!(
            expiry_action(&alloc, t(11_500), margin),
            ExpiryAction::CheckAt(t(16_000))
        );
        assert_eq!(
            expiry_action(&alloc, t(16_000), margin),
            ExpiryAction::CheckAt(t(16_000))
        );
        assert_eq!(
            expiry_action(&alloc, t(16_001), margin),
            ExpiryAction::Expire
        );
    }

    /// Issue 17, finding 2: a lease past its expireTime (inside the skew margin) that was
    /// then marked preempted took the requeue path, and its claim came back Pending with a
    /// new lease. Expired is final: the mark is refused, and the lease ends Expired.
    #[test]
    fn an_expired_lease_is_not_preempted_into_a_requeue() {
        let (mut claim, mut alloc) = placed();
        let expired_at = alloc.status.as_ref().unwrap().lease.expire_time;
        let inside_margin = t(expired_at.unix_millis() + 1);
        let marked = preempt(
            Some(&mut claim),
            &mut alloc,
            inside_margin,
            Preemption {
                by: "p/urgent".into(),
                time: inside_margin,
                reason: "priority 100 preempts priority 0".into(),
            },
        );
        assert_eq!(marked, Err(LeaseError::Expired(expired_at)));
        assert!(alloc.status.as_ref().unwrap().preemption.is_none());
        assert!(claim.status.as_ref().unwrap().reason.is_none());
        assert_eq!(end_of(&alloc, false), End::Expired);
        // Nor is it renewed inside the margin.
        assert_eq!(
            renew(
                &mut claim,
                &mut alloc,
                inside_margin,
                Duration::from_secs(10)
            ),
            Err(LeaseError::Expired(expired_at))
        );
        expire(
            Some(&mut claim),
            &mut alloc,
            t(expired_at.unix_millis() + 6_000),
        );
        assert_eq!(claim.status.as_ref().unwrap().phase, ClaimPhase::Expired);
        // A mark an older build made after expiry does not requeue either.
        alloc.status.as_mut().unwrap().phase = AllocationPhase::Active;
        alloc.status.as_mut().unwrap().preemption = Some(Preemption {
            by: "p/urgent".into(),
            time: inside_margin,
            reason: String::new(),
        });
        assert_eq!(end_of(&alloc, false), End::Expired);
        assert_eq!(end_of(&alloc, true), End::Lost);
    }

    #[test]
    fn preemption_cuts_the_lease_and_requeues_the_claim() {
        let (mut claim, mut alloc) = placed();
        preempt(
            Some(&mut claim),
            &mut alloc,
            t(2_000),
            Preemption {
                by: "p/urgent".into(),
                time: t(2_000),
                reason: "priority 100 preempts priority 0".into(),
            },
        )
        .unwrap();
        assert_eq!(end_of(&alloc, false), End::Preempted);
        let status = alloc.status.as_ref().unwrap();
        assert_eq!(status.lease.expire_time, t(2_000), "no workload: no grace");
        assert!(matches!(
            renew(&mut claim, &mut alloc, t(2_001), Duration::from_secs(10)),
            Err(LeaseError::Preempting(by)) if by == "p/urgent"
        ));
        end_preempted(Some(&mut claim), &mut alloc, t(9_000));
        let s = claim.status.as_ref().unwrap();
        assert_eq!(s.phase, ClaimPhase::Pending);
        assert_eq!(s.reason.as_deref(), Some("Preempted"));
        assert_eq!(
            alloc.status.as_ref().unwrap().phase,
            AllocationPhase::Preempted
        );
    }

    #[test]
    fn released_allocations_cannot_be_renewed_or_released_again() {
        let (mut claim, mut alloc) = placed();
        release(&mut claim, &mut alloc, t(2_000), "Released").unwrap();
        assert_eq!(claim.status.as_ref().unwrap().phase, ClaimPhase::Released);
        assert!(renew(&mut claim, &mut alloc, t(3_000), Duration::from_secs(1)).is_err());
        assert!(release(&mut claim, &mut alloc, t(3_000), "Released").is_err());
        assert_eq!(
            expiry_action(&alloc, t(99_000), Duration::default()),
            ExpiryAction::Done
        );
    }
}
