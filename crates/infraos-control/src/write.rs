//! Read, change, write one stored object with compare-and-swap and its audit record in the
//! same transaction, again on a fresh read when another writer got there first. The shape
//! every control-plane write of an existing object shares (agents' reports, rotations, the
//! node controller), so that none of them can forget the guard or the audit.
//!
//! The controllers call [`update`] and [`update_at`], failing with [`ControlError`]; the
//! HTTP edge calls [`update_at_with`] with its own error type, so that a handler's change
//! can refuse with any answer it likes.

use infraos_api::{Kind, Object, Time};
use infraos_store::{Compare, Store, Txn};

use crate::audit::{self, Actor, Record};
use crate::objects::{self, decode_typed, encode_typed};
use crate::{Clock, Context, ControlError};

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
    ctx: &Context,
    target: Target<'_>,
    missing: impl Fn() -> ControlError,
    change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ControlError>,
) -> Result<T, ControlError> {
    update_at(ctx, target, missing, change)
        .await
        .map(|(result, _)| result)
}

/// As [`update`], also answering the store revision the write made (`None` when nothing
/// was written).
pub async fn update_at<K: Kind, T>(
    ctx: &Context,
    target: Target<'_>,
    missing: impl Fn() -> ControlError,
    change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, ControlError>,
) -> Result<(T, Option<u64>), ControlError> {
    update_at_with(&*ctx.store, &*ctx.clock, target, missing, change).await
}

/// As [`update_at`], failing with the caller's error type `E`: what `missing` and `change`
/// return, and what the store's and the write's own failures are turned into.
pub async fn update_at_with<K: Kind, T, E: From<ControlError>>(
    store: &dyn Store,
    clock: &dyn Clock,
    target: Target<'_>,
    missing: impl Fn() -> E,
    mut change: impl FnMut(&mut Object<K>, Time) -> Result<Decision<T>, E>,
) -> Result<(T, Option<u64>), E> {
    let fail = |e: infraos_store::StoreError| E::from(ControlError::Store(e));
    let key = objects::key(K::INFO, target.namespace, target.name);
    for _ in 0..ATTEMPTS {
        let kv = store.get(&key).await.map_err(fail)?.ok_or_else(&missing)?;
        let mut object = decode_typed::<K>(&kv).map_err(E::from)?;
        let now = clock.now();
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
        let out = store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(key.clone(), kv.mod_revision))
                    .put(key.clone(), bytes)
                    .append(payload),
            )
            .await
            .map_err(fail)?;
        if out.succeeded {
            return Ok((result, Some(out.revision)));
        }
    }
    Err(ControlError::stale(K::INFO.kind, target.name).into())
}
