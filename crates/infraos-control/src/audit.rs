//! Building audit entries. Entries are appended to the store's hash-chained ledger in the same
//! transaction as the change they describe, so an acknowledged change always has its record;
//! refused requests get a record of their own. The leader signs the chain with
//! [`checkpoint`] records, and any replica signs its head on request ([`sign_head`]).
//!
//! Records hold hashes of objects, never the objects: a token, a key or an environment
//! variable in a stored object does not reach the audit trail. Every string a record takes
//! from outside (subject, object, node, source) is cut to [`AUDIT_STRING_MAX`] bytes and the
//! reason to [`REASON_MAX`] when the payload is built, so no request can make a record larger
//! than a few kilobytes (issue 16).

use std::sync::Arc;

use infraos_api::Time;
use infraos_api::audit::{
    AuditCheckpoint, AuditEntry, AuditHead, AuditObjectRef, AuditResult, CHECKPOINT_SUBJECT,
    CHECKPOINT_VERB, HEAD_KIND, head_body, sha256_hex,
};
use infraos_api::signature::{Purpose, Signature};
use infraos_api::text::{AUDIT_STRING_MAX, REASON_MAX, bound_owned, bounded};
use infraos_store::{LedgerHead, Store, Txn};

use crate::signing::{ServerKey, SigningError};

pub mod checkpoint;

/// Who acts, and from where.
#[derive(Clone, Debug)]
pub struct Actor {
    pub subject: String,
    pub source: Option<String>,
}

/// The subject of requests made without credentials (failed sign-ins, joins): who they are
/// is unknown, so records name where they came from (`source`) instead; never a name taken
/// from the request.
pub const ANONYMOUS: &str = "anonymous";

impl Actor {
    pub fn system(controller: &str) -> Self {
        Actor {
            subject: format!("system:{controller}"),
            source: None,
        }
    }

    /// A caller without credentials, known only by its address.
    pub fn anonymous(source: Option<std::net::SocketAddr>) -> Self {
        Actor {
            subject: ANONYMOUS.to_string(),
            source: source.map(|s| s.to_string()),
        }
    }
}

/// One audit entry under construction.
pub struct Record<'a> {
    pub actor: &'a Actor,
    pub verb: &'a str,
    pub object: AuditObjectRef,
    pub code: u16,
    pub reason: Option<String>,
    pub before: Option<&'a [u8]>,
    pub after: Option<&'a [u8]>,
    pub node: Option<String>,
}

impl Record<'_> {
    /// The canonical JSON payload for the ledger, every outside string bounded.
    pub fn payload(self, now: Time) -> Vec<u8> {
        let cut = |s: String| bound_owned(s, AUDIT_STRING_MAX);
        let object = self.object;
        AuditEntry {
            time: now,
            subject: bounded(&self.actor.subject, AUDIT_STRING_MAX).into_owned(),
            verb: bounded(self.verb, AUDIT_STRING_MAX).into_owned(),
            object: AuditObjectRef {
                kind: cut(object.kind),
                name: cut(object.name),
                namespace: object.namespace.map(cut),
                subresource: object.subresource.map(cut),
                uid: object.uid.map(cut),
            },
            result: AuditResult {
                code: self.code,
                reason: self.reason.map(|r| bound_owned(r, REASON_MAX)),
            },
            before_hash: self.before.map(sha256_hex),
            after_hash: self.after.map(sha256_hex),
            checkpoint: None,
            node: self.node.map(cut),
            source: self
                .actor
                .source
                .as_deref()
                .map(|s| bounded(s, AUDIT_STRING_MAX).into_owned()),
        }
        .canonical_bytes()
    }
}

/// What a record is about. Its strings are cut when the payload is built
/// ([`Record::payload`]), once, so the cut still says the full length.
pub fn object_ref(kind: &str, namespace: Option<&str>, name: &str) -> AuditObjectRef {
    AuditObjectRef {
        kind: kind.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        uid: None,
        subresource: None,
    }
}

/// What an audit record of a refusal says of it: the answer's status code, its reason word
/// and message. The HTTP edge's error implements it; the audit trail knows no HTTP.
pub trait Refused {
    fn code(&self) -> u16;
    fn reason(&self) -> &str;
    fn message(&self) -> &str;
}

/// Records a refused request: it changed nothing, but the attempt is part of the trail.
pub async fn refusal(
    store: &dyn Store,
    now: infraos_api::Time,
    actor: &Actor,
    verb: &str,
    object: AuditObjectRef,
    error: &impl Refused,
) {
    let payload = Record {
        actor,
        verb,
        object,
        code: error.code(),
        // The message says why (the field, the missing binding); it never holds secrets.
        reason: Some(format!("{}: {}", error.reason(), error.message())),
        before: None,
        after: None,
        node: None,
    }
    .payload(now);
    append_alone(store, payload).await;
}

/// Appends a record on its own, for requests that changed nothing.
pub async fn append_alone(store: &dyn Store, payload: Vec<u8>) {
    if let Err(e) = store.txn(Txn::new().append(payload)).await {
        tracing::error!(error = %e, "could not append an audit record");
    }
}

/// The payload of a checkpoint record vouching for `checkpoint.seq`. Its object is the record
/// it vouches for.
pub fn checkpoint_payload(now: Time, checkpoint: AuditCheckpoint) -> Vec<u8> {
    AuditEntry {
        after_hash: None,
        before_hash: None,
        object: object_ref("AuditRecord", None, &checkpoint.seq.to_string()),
        checkpoint: Some(checkpoint),
        node: None,
        result: AuditResult {
            code: 200,
            reason: None,
        },
        source: None,
        subject: CHECKPOINT_SUBJECT.to_string(),
        time: now,
        verb: CHECKPOINT_VERB.to_string(),
    }
    .canonical_bytes()
}

/// Signs on a blocking thread: an SLH-DSA signature takes milliseconds of CPU (seconds in a
/// debug build), too long for the async workers.
pub async fn sign_blocking(
    signer: &Arc<ServerKey>,
    purpose: Purpose,
    body: Vec<u8>,
) -> Result<Signature, SigningError> {
    let signer = Arc::clone(signer);
    tokio::task::spawn_blocking(move || signer.sign(purpose, &body))
        .await
        .map_err(|e| SigningError::Sign(format!("the signing task failed: {e}")))?
}

/// The chain's current head, signed with the time it was read at.
pub async fn sign_head(
    signer: &Arc<ServerKey>,
    head: LedgerHead,
    now: Time,
) -> Result<AuditHead, SigningError> {
    let signature = sign_blocking(
        signer,
        Purpose::AuditHead,
        head_body(head.seq, &head.hash, now),
    )
    .await?;
    Ok(AuditHead {
        api_version: infraos_api::API_VERSION.to_string(),
        kind: HEAD_KIND.to_string(),
        seq: head.seq,
        hash: hex::encode(head.hash),
        time: now,
        key_id: signer.public_key().key_id(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_huge_outside_strings_stay_small() {
        let huge = "x".repeat(2 << 20);
        let actor = Actor {
            subject: format!("node:{huge}"),
            source: Some(huge.clone()),
        };
        let mut object = object_ref(&huge, Some(&huge), &huge);
        object.subresource = Some(huge.clone());
        object.uid = Some(huge.clone());
        let payload = Record {
            actor: &actor,
            verb: "create",
            object,
            code: 422,
            reason: Some(huge.clone()),
            before: None,
            after: None,
            node: Some(huge.clone()),
        }
        .payload(Time::from_unix_millis(0));
        assert!(
            payload.len() < 2 * REASON_MAX + 8 * AUDIT_STRING_MAX,
            "{}",
            payload.len()
        );
        let entry: AuditEntry = serde_json::from_slice(&payload).unwrap();
        assert!(
            entry.object.name.ends_with("…(2097152 bytes)"),
            "{}",
            entry.object.name
        );
        assert!(entry.subject.starts_with("node:xxx"));
    }

    #[test]
    fn anonymous_callers_are_named_by_their_address_only() {
        let actor = Actor::anonymous(Some("192.0.2.1:5000".parse().unwrap()));
        assert_eq!(actor.subject, ANONYMOUS);
        assert_eq!(actor.source.as_deref(), Some("192.0.2.1:5000"));
    }
}
