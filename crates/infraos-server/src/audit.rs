//! Building audit entries. Entries are appended to the store's hash-chained ledger in the same
//! transaction as the change they describe, so an acknowledged change always has its record;
//! refused requests get a record of their own.

use infraos_api::Time;
use infraos_api::audit::{AuditEntry, AuditObjectRef, AuditResult, sha256_hex};
use infraos_store::{Store, Txn};

/// Who acts, and from where.
#[derive(Clone, Debug)]
pub struct Actor {
    pub subject: String,
    pub source: Option<String>,
}

impl Actor {
    pub fn system(controller: &str) -> Self {
        Actor {
            subject: format!("system:{controller}"),
            source: None,
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
    /// The canonical JSON payload for the ledger.
    pub fn payload(self, now: Time) -> Vec<u8> {
        AuditEntry {
            time: now,
            subject: self.actor.subject.clone(),
            verb: self.verb.to_string(),
            object: self.object,
            result: AuditResult {
                code: self.code,
                reason: self.reason,
            },
            before_hash: self.before.map(sha256_hex),
            after_hash: self.after.map(sha256_hex),
            node: self.node,
            source: self.actor.source.clone(),
        }
        .canonical_bytes()
    }
}

pub fn object_ref(kind: &str, namespace: Option<&str>, name: &str) -> AuditObjectRef {
    AuditObjectRef {
        kind: kind.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        uid: None,
        subresource: None,
    }
}

/// Records a refused request: it changed nothing, but the attempt is part of the trail.
pub async fn refusal(
    store: &dyn Store,
    now: infraos_api::Time,
    actor: &Actor,
    verb: &str,
    object: AuditObjectRef,
    error: &crate::error::ApiError,
) {
    let payload = Record {
        actor,
        verb,
        object,
        code: error.code.as_u16(),
        // The message says why (the field, the missing binding); it never holds secrets.
        reason: Some(format!("{}: {}", error.reason, error.message)),
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
