//! Read, change, write one stored object with compare-and-swap and its audit record in the
//! same transaction, again on a fresh read when another writer got there first. The shape
//! every control-plane write of an existing object shares (agents' reports, rotations, the
//! node controller), so that none of them can forget the guard or the audit.

use infraos_api::{Kind, Object, Time};
use infraos_store::{Compare, Txn};

use crate::audit::{self, Actor, Record};
use crate::error::ApiError;
use crate::objects::{self, decode_typed, encode_typed};
use crate::state::AppState;

/// How often a write is tried again after losing a race.
const ATTEMPTS: usize = 8;

/// What a change decided about the object it was given.
pub enum Decision<T> {
    /// Nothing to write; the update returns `T`.
    Unchanged(T),
    /// Write the changed object, audited as `audit`, then return `T`.
    Write { audit: Audit, result: T },
}

/// How a write is recorded in the audit chain.
pub struct Audit {
    pub verb: &'static str,
    pub subresource: Option<&'static str>,
    pub reason: Option<String>,
    /// The node the write concerns, if any.
    pub node: Option<String>,
}

/// Where the object is and who is writing it.
pub struct Target<'a> {
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub actor: &'a Actor,
}

/// Applies `change` to the stored object and writes it back if it changed, guarded by the
/// revision it read. `missing` is the error when there is no such object. Fails with a
/// conflict when other writers won every attempt.
pub async fn update<K: Kind, T>(
    state: &AppState,
    target: Target<'_>,
    missing: impl Fn() -> ApiError,
    change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ApiError>,
) -> Result<T, ApiError> {
    update_at(state, target, missing, change)
        .await
        .map(|(result, _)| result)
}

/// As [`update`], also answering the store revision the write made (`None` when nothing
/// was written), for handlers that return the object with its `resourceVersion`.
pub async fn update_at<K: Kind, T>(
    state: &AppState,
    target: Target<'_>,
    missing: impl Fn() -> ApiError,
    mut change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ApiError>,
) -> Result<(T, Option<u64>), ApiError> {
    let key = objects::key(K::INFO, target.namespace, target.name);
    for _ in 0..ATTEMPTS {
        let kv = state.store.get(&key).await?.ok_or_else(&missing)?;
        let mut object = decode_typed::<K>(&kv)?;
        let now = state.clock.now();
        let (how, result) = match change(&mut object, now)? {
            Decision::Unchanged(result) => return Ok((result, None)),
            Decision::Write { audit, result } => (audit, result),
        };
        let bytes = encode_typed(&object);
        let mut object_ref = audit::object_ref(K::INFO.kind, target.namespace, target.name);
        object_ref.uid = Some(object.metadata.uid.clone()).filter(|u| !u.is_empty());
        object_ref.subresource = how.subresource.map(str::to_string);
        let payload = Record {
            actor: target.actor,
            verb: how.verb,
            object: object_ref,
            code: 200,
            reason: how.reason,
            before: Some(&kv.value),
            after: Some(&bytes),
            node: how.node,
        }
        .payload(now);
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(key.clone(), kv.mod_revision))
                    .put(key.clone(), bytes)
                    .append(payload),
            )
            .await?;
        if out.succeeded {
            return Ok((result, Some(out.revision)));
        }
    }
    Err(ApiError::stale(K::INFO.kind, target.name))
}
