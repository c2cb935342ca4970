//! Deletes: finalizers first (202), else the object and what goes with it in one
//! transaction, retried on the server's own concurrent writes.

use super::*;

/// Attempts a DELETE makes before answering 409: each re-reads the object, so only a
/// writer that keeps changing it faster than this loses.
const DELETE_ATTEMPTS: usize = 8;

/// A DELETE carries no precondition (no resourceVersion or uid to hold the object to), so a
/// change between its read and its write is not the caller's conflict: most often it is the
/// server's own status write (the scheduler placing the claim, the lease controller). It is
/// tried again on the object as it now is; 409 only when that keeps failing (issue 17: 2 of
/// ~500 deletes under churn answered 409).
pub(crate) async fn delete_object(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    for _ in 0..DELETE_ATTEMPTS {
        if let Some(response) = delete_once(state, ctx, info, ns, name).await? {
            return Ok(response);
        }
    }
    Err(ApiError::stale(info.kind, name))
}

/// One attempt; `None` when the object changed between the read and the write.
async fn delete_once(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Response>, ApiError> {
    kinds::strategy(info).check_delete()?;
    let key = objects::key(info, ns, name);
    let kv = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(info.kind, name))?;
    let current = decode_stored(&kv)?;
    admission::validate_delete(&*state.store, info, name).await?;
    let now = state.clock.now();
    let finalizers_pending = current
        .value
        .pointer("/metadata/finalizers")
        .and_then(|f| f.as_array())
        .is_some_and(|f| !f.is_empty());
    let mut object_ref = audit::object_ref(info.kind, ns, name);
    object_ref.uid = current
        .value
        .pointer("/metadata/uid")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if finalizers_pending {
        // Mark for deletion; the controller owning the finalizer finishes the job.
        if current
            .value
            .pointer("/metadata/deletionTimestamp")
            .is_some()
        {
            return Ok(Some(Json(current.value).into_response()));
        }
        let mut value = current.value.clone();
        value["metadata"]["deletionTimestamp"] = serde_json::to_value(now).unwrap_or_default();
        let bytes = encode_for_store(&value);
        let kept = bytes.clone();
        let payload = Record {
            actor: &ctx.actor(),
            verb: "delete",
            object: object_ref,
            code: 202,
            reason: Some("waiting for finalizers".into()),
            before: Some(&current.bytes),
            after: Some(&bytes),
            node: None,
        }
        .payload(now);
        let out = state
            .store
            .txn(
                Txn::new()
                    .when(Compare::unchanged(key.clone(), current.revision))
                    .put(key, bytes)
                    .append(payload),
            )
            .await?;
        if !out.succeeded {
            return Ok(None);
        }
        observe(state, info, ns, name, out.revision, Some(&kept));
        set_revision(&mut value, out.revision);
        return Ok(Some((StatusCode::ACCEPTED, Json(value)).into_response()));
    }
    let payload = Record {
        actor: &ctx.actor(),
        verb: "delete",
        object: object_ref,
        code: 200,
        reason: None,
        before: Some(&current.bytes),
        after: None,
        node: None,
    }
    .payload(now);
    let scoped = scope_leftovers(state, info, name).await?;
    let txn = Txn::new()
        .when(Compare::unchanged(key.clone(), current.revision))
        .delete(key)
        .append(payload);
    let txn = lifecycle::delete_with_scope(txn, &scoped, &ctx.actor(), (info.kind, name), now);
    let out = state.store.txn(txn).await?;
    if !out.succeeded {
        return Ok(None);
    }
    observe(state, info, ns, name, out.revision, None);
    for gone in scoped.iter().filter(|s| s.kind == "RoleBinding") {
        state.rbac.observe(&gone.kv.key, out.revision, None);
    }
    Ok(Some(Json(current.value).into_response()))
}

/// What goes with an object being deleted (a Project's events now, and the RoleBindings and
/// Quotas scoped to a Project or Tenant), returned to be deleted in the same transaction.
pub(super) async fn scope_leftovers(
    state: &AppState,
    info: &KindInfo,
    name: &str,
) -> Result<Vec<lifecycle::Scoped>, ApiError> {
    kinds::strategy(info).leftovers(&*state.store, name).await
}
