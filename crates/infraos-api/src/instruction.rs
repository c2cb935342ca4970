//! Signed instructions: what the server signs when it dispatches a workload to a node, and
//! what the agent checks before it acts.
//!
//! ```text
//!  body = canonical JSON { allocation: uid, namespace, name, claim: {name, uid}, node,
//!                          fencingEpoch, workload, approvedBy (when approved) }
//!  signature = sign(server key, "infraos-instruction-v1\0" ‖ body)     (spec.signature)
//! ```
//! The body binds the workload to one allocation of one claim, on one node, at one fencing
//! epoch: changing any of them (a tampered store, a forged object) breaks the signature, and
//! an old instruction shown again keeps its old epoch, which the agent refuses once it has
//! run a newer one for the claim.

use crate::audit::canonical_json;
use crate::kinds::Allocation;
use crate::signature::{PublicKey, Purpose, Signature, SignatureError};

/// The bytes signed for an allocation's workload; `None` when it has no workload or no
/// lease yet (nothing to instruct).
pub fn body(allocation: &Allocation) -> Option<Vec<u8>> {
    let workload = serde_json::to_value(allocation.spec.workload.as_ref()?).ok()?;
    body_with(allocation, workload)
}

/// The body as a server signed it before workloads had a `config` (the process driver's
/// fields beside the others), so that instructions signed then still verify.
fn legacy_body(allocation: &Allocation) -> Option<Vec<u8>> {
    body_with(
        allocation,
        allocation.spec.workload.as_ref()?.legacy_value()?,
    )
}

fn body_with(allocation: &Allocation, workload: serde_json::Value) -> Option<Vec<u8>> {
    let epoch = allocation.status.as_ref()?.lease.fencing_epoch;
    let mut value = serde_json::json!({
        "allocation": allocation.metadata.uid,
        "namespace": allocation.metadata.namespace,
        "name": allocation.metadata.name,
        "claim": {"name": allocation.spec.claim.name, "uid": allocation.spec.claim.uid},
        "node": allocation.spec.node,
        "fencingEpoch": epoch,
        "workload": workload,
    });
    // Only when there are approvers, so instructions signed before the field existed verify.
    if !allocation.spec.approved_by.is_empty() {
        value["approvedBy"] = serde_json::to_value(&allocation.spec.approved_by).ok()?;
    }
    Some(canonical_json(&value))
}

/// Why an instruction is not to be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionError {
    #[error("the instruction is not signed by the server")]
    Unsigned,
    #[error("the instruction's signature does not verify (tampered with or forged): {0}")]
    BadSignature(SignatureError),
    #[error(
        "replayed instruction: fencing epoch {epoch} is older than epoch {seen}, which this node already ran for the claim"
    )]
    Replayed { epoch: u64, seen: u64 },
}

/// The agent's check: a valid signature by `key`, and an epoch no older than the newest this
/// node has run for the claim (`seen`).
pub fn check(
    allocation: &Allocation,
    key: &PublicKey,
    seen: Option<u64>,
) -> Result<(), InstructionError> {
    let Some(body) = body(allocation) else {
        return Ok(());
    };
    let signature: &Signature = allocation
        .spec
        .signature
        .as_ref()
        .ok_or(InstructionError::Unsigned)?;
    if let Err(e) = crate::signature::verify(key, Purpose::Instruction, &body, signature) {
        let legacy = legacy_body(allocation).is_some_and(|b| {
            crate::signature::verify(key, Purpose::Instruction, &b, signature).is_ok()
        });
        if !legacy {
            return Err(InstructionError::BadSignature(e));
        }
    }
    let epoch = allocation
        .status
        .as_ref()
        .map_or(0, |s| s.lease.fencing_epoch);
    match seen {
        Some(seen) if epoch < seen => Err(InstructionError::Replayed { epoch, seen }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Object;
    use crate::kinds::{
        AllocationPhase, AllocationSpec, AllocationStatus, ClaimRef, Lease, WorkloadSpec,
    };
    use crate::signature::Algorithm;
    use crate::time::Time;
    use ed25519_dalek::Signer;

    fn allocation(epoch: u64) -> Allocation {
        let mut a = Object::new(
            "c1",
            Some("p"),
            AllocationSpec {
                claim: ClaimRef {
                    name: "c1".into(),
                    uid: "claim-uid".into(),
                },
                node: Some("n1".into()),
                workload: Some(WorkloadSpec::process("/bin/true", Vec::new())),
                ..Default::default()
            },
        );
        a.metadata.uid = "alloc-uid".into();
        a.status = Some(AllocationStatus {
            phase: AllocationPhase::Active,
            lease: Lease {
                acquire_time: Time::from_unix_millis(0),
                renew_time: Time::from_unix_millis(0),
                expire_time: Time::from_unix_millis(1000),
                fencing_epoch: epoch,
            },
            ..Default::default()
        });
        a
    }

    fn sign(key: &ed25519_dalek::SigningKey, a: &mut Allocation) {
        let message = crate::signature::signed_message(Purpose::Instruction, &body(a).unwrap());
        let sig = key.sign(&message);
        a.spec.signature =
            Some(Signature::from_bytes(Algorithm::Ed25519, &sig.to_bytes()).unwrap());
    }

    fn keys() -> (ed25519_dalek::SigningKey, PublicKey) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk = PublicKey::from_bytes(Algorithm::Ed25519, sk.verifying_key().as_bytes()).unwrap();
        (sk, pk)
    }

    #[test]
    fn signed_instructions_verify_and_tampering_does_not() {
        let (sk, pk) = keys();
        let mut a = allocation(3);
        sign(&sk, &mut a);
        assert_eq!(check(&a, &pk, None), Ok(()));
        assert_eq!(check(&a, &pk, Some(3)), Ok(()));

        let mut tampered = a.clone();
        if let Some(w) = tampered.spec.workload.as_mut() {
            w.config.insert("command", "/bin/sh");
        }
        assert!(matches!(
            check(&tampered, &pk, None),
            Err(InstructionError::BadSignature(_))
        ));
        let mut moved = a.clone();
        moved.spec.node = Some("n2".into());
        assert!(matches!(
            check(&moved, &pk, None),
            Err(InstructionError::BadSignature(_))
        ));
        let mut unsigned = a.clone();
        unsigned.spec.signature = None;
        assert_eq!(check(&unsigned, &pk, None), Err(InstructionError::Unsigned));

        // Another key's signature is a forgery.
        let forger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let mut forged = allocation(3);
        sign(&forger, &mut forged);
        assert!(matches!(
            check(&forged, &pk, None),
            Err(InstructionError::BadSignature(_))
        ));
    }

    #[test]
    fn instructions_signed_over_the_old_workload_shape_still_verify() {
        let (sk, pk) = keys();
        let mut a = allocation(3);
        let old = legacy_body(&a).unwrap();
        assert_ne!(Some(&old), body(&a).as_ref());
        let message = crate::signature::signed_message(Purpose::Instruction, &old);
        a.spec.signature =
            Some(Signature::from_bytes(Algorithm::Ed25519, &sk.sign(&message).to_bytes()).unwrap());
        assert_eq!(check(&a, &pk, None), Ok(()));
        if let Some(w) = a.spec.workload.as_mut() {
            w.config.insert("command", "/bin/sh");
        }
        assert!(matches!(
            check(&a, &pk, None),
            Err(InstructionError::BadSignature(_))
        ));
    }

    #[test]
    fn an_older_epoch_is_a_replay() {
        let (sk, pk) = keys();
        let mut old = allocation(2);
        sign(&sk, &mut old);
        assert_eq!(
            check(&old, &pk, Some(3)),
            Err(InstructionError::Replayed { epoch: 2, seen: 3 })
        );
        // The epoch is signed: raising it on an old instruction breaks the signature.
        let mut bumped = old.clone();
        if let Some(s) = bumped.status.as_mut() {
            s.lease.fencing_epoch = 4;
        }
        assert!(matches!(
            check(&bumped, &pk, Some(3)),
            Err(InstructionError::BadSignature(_))
        ));
    }
}
