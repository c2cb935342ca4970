//! Updates and merge patches, of an object or its status: what the server owns is taken
//! from the stored object, then admission and one compare-and-swap with the audit record.

use super::*;

/// An update or a merge patch, of an object or of its status.
pub(super) async fn write(
    state: AppState,
    ctx: Ctx,
    path: ObjectPath,
    verb: Verb,
    request: Request,
) -> Result<Response, ApiError> {
    let (info, p) = path.resolve(false, true)?;
    let (ns, name) = (p.namespace(), p.name.as_deref().unwrap_or_default());
    let status_only = p.subresource.is_some();
    let verb_name = match (verb, status_only) {
        (Verb::Update, false) => "update",
        (Verb::Update, true) => "update-status",
        (_, false) => "patch",
        (_, true) => "patch-status",
    };
    let result = write_object(
        &state,
        &ctx,
        info,
        ns,
        name,
        status_only,
        verb,
        verb_name,
        request,
    )
    .await;
    Ok(result.unwrap_or_else(|e| refused(verb_name, audit::object_ref(info.kind, ns, name), e)))
}

#[allow(clippy::too_many_arguments)]
async fn write_object(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    status_only: bool,
    verb: Verb,
    verb_name: &str,
    request: Request,
) -> Result<Response, ApiError> {
    if !info.user_writable {
        return Err(ApiError::method_not_allowed(format!(
            "{} objects are written by the control plane only",
            info.kind
        )));
    }
    if status_only {
        kinds::strategy(info).check_status_write()?;
    }
    let (body, format) = read_body(state, request).await?;
    if verb == Verb::Patch && format == BodyFormat::Yaml {
        return Err(ApiError::unsupported_media_type(
            "PATCH takes a JSON merge patch (application/merge-patch+json)",
        ));
    }
    let precondition = match body.pointer("/metadata/resourceVersion") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("metadata.resourceVersion must be a revision number")
                })?,
        ),
    };
    let key = objects::key(info, ns, name);
    // A merge patch without a precondition is retried on conflicts; everything else reports
    // them (409) so the client decides.
    let attempts = if verb == Verb::Patch && precondition.is_none() {
        5
    } else {
        1
    };
    let mut last_err = None;
    for _ in 0..attempts {
        let kv = state
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(info.kind, name))?;
        let current = decode_stored(&kv)?;
        if precondition.is_some_and(|rv| rv != current.revision) {
            return Err(ApiError::stale(info.kind, name));
        }
        let desired = match verb {
            Verb::Patch => {
                let mut target = current.value.clone();
                json_patch::merge(&mut target, &body);
                target
            }
            _ => body.clone(),
        };
        match commit_update(
            state,
            ctx,
            info,
            ns,
            name,
            status_only,
            verb_name,
            desired,
            &current,
        )
        .await
        {
            Err(e) if e.reason == "Conflict" && attempts > 1 => last_err = Some(e),
            other => return other,
        }
    }
    Err(last_err.unwrap_or_else(|| ApiError::stale(info.kind, name)))
}

#[allow(clippy::too_many_arguments)]
async fn commit_update(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    name: &str,
    status_only: bool,
    verb_name: &str,
    mut desired: serde_json::Value,
    current: &Stored,
) -> Result<Response, ApiError> {
    let body_name = desired.pointer("/metadata/name").and_then(|v| v.as_str());
    if body_name.is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the name {:?} of the URL",
            bounded(body_name.unwrap_or_default(), ERROR_STRING_MAX),
            bounded(name, ERROR_STRING_MAX)
        )));
    }
    let body_ns = desired
        .pointer("/metadata/namespace")
        .and_then(|v| v.as_str());
    if body_ns.is_some() && body_ns != ns {
        return Err(ApiError::bad_request(
            "metadata.namespace does not match the URL",
        ));
    }
    // What the server owns comes from the stored object, whatever the body says.
    let old = &current.value;
    if status_only {
        let mut merged = old.clone();
        match desired.get("status") {
            Some(s) => merged["status"] = s.clone(),
            None => {
                if let Some(o) = merged.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        desired = merged;
    } else {
        match old.get("status") {
            Some(s) => desired["status"] = s.clone(),
            None => {
                if let Some(o) = desired.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    if let Some(meta) = desired.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("name".into(), name.into());
        if let Some(ns) = ns {
            meta.insert("namespace".into(), ns.into());
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => {
                    meta.insert(field.into(), v.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
        meta.remove("resourceVersion");
    }
    let old_typed = TypedObject::decode(info, old).map_err(|e| {
        ApiError::internal(format!(
            "stored {} {name:?} no longer validates: {e}",
            info.kind
        ))
    })?;
    let mut object = crate::offload::decode(info, &desired)
        .await?
        .map_err(|e| ApiError::invalid(info.kind, name, &e))?;
    if !status_only {
        authz::check_object(state, &ctx.identity, verb_name, &object)?;
    }
    let attempt = admission::Attempt::new(&*state.store, &state.classes).updating(&old_typed);
    admission::default(&attempt, &mut object).await?;
    admission::validate(&attempt, &object).await?;
    // System finalizers are removed by the control plane only.
    {
        let kept: Vec<String> = old_typed
            .meta()
            .finalizers
            .iter()
            .filter(|f| f.starts_with("infraos.io/") && !object.meta().finalizers.contains(f))
            .cloned()
            .collect();
        object.meta_mut().finalizers.extend(kept);
    }
    let mut value = object.to_value();
    if old.get("spec") != value.get("spec") {
        let generation = old_typed.meta().generation + 1;
        object.meta_mut().generation = generation;
        value["metadata"]["generation"] = generation.into();
    }
    let now = state.clock.now();
    let bytes = encode_for_store(&value);
    let key = objects::key(info, ns, name);
    let finalized =
        object.meta().deletion_timestamp.is_some() && object.meta().finalizers.is_empty();
    let mut object_ref = audit::object_ref(info.kind, ns, name);
    object_ref.uid = Some(object.meta().uid.clone());
    if status_only {
        object_ref.subresource = Some("status".into());
    }
    let payload = Record {
        actor: &ctx.actor(),
        verb: if finalized { "delete" } else { verb_name },
        object: object_ref,
        code: 200,
        reason: None,
        before: Some(&current.bytes),
        after: if finalized { None } else { Some(&bytes) },
        node: None,
    }
    .payload(now);
    let scoped = if finalized {
        scope_leftovers(state, info, name).await?
    } else {
        Vec::new()
    };
    let txn = Txn::new().when(Compare::unchanged(key.clone(), current.revision));
    let txn = if finalized {
        txn.delete(key)
    } else {
        txn.put(key, bytes.clone())
    };
    let txn = lifecycle::delete_with_scope(
        txn.append(payload),
        &scoped,
        &ctx.actor(),
        (info.kind, name),
        now,
    );
    let out = state.store.txn(txn).await?;
    if !out.succeeded {
        return Err(ApiError::stale(info.kind, name));
    }
    for gone in scoped.iter().filter(|s| s.kind == "RoleBinding") {
        state.rbac.observe(&gone.kv.key, out.revision, None);
    }
    observe(
        state,
        info,
        ns,
        name,
        out.revision,
        (!finalized).then_some(&bytes[..]),
    );
    set_revision(&mut value, out.revision);
    Ok(Json(value).into_response())
}
