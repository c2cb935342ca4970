//! Creates, one object or a batch in one transaction: parse, server-owned fields,
//! validation, authorization of the object, admission, one compare-and-swap with the audit
//! record.

use super::*;

pub(super) async fn create_one(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    request: Request,
    name_out: &mut String,
) -> Result<Response, ApiError> {
    user_writable(info)?;
    let (bytes, format) = read_bytes(state, request).await?;
    // One parse, straight into the kind's type; a failure is told apart as malformed (400)
    // or invalid (422, naming the field).
    // Claims' selectors compile while parsing: off the async workers (crate::offload).
    let parsed = crate::offload::parse_slice(info, &bytes, format == BodyFormat::Yaml).await?;
    let object = match parsed {
        Ok(o) => o,
        Err(e) => {
            let value = parse_value(&bytes, format)?;
            name_out.push_str(
                value
                    .pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
            );
            return Err(ApiError::invalid(info.kind, name_out, &e));
        }
    };
    name_out.clone_from(&object.meta().name);
    let prepared = prepare_create(state, &*state.store, ctx, info, ns, object).await?;
    let PreparedCreate {
        name,
        key,
        stored,
        payload,
        decoded,
        uid: _,
    } = prepared;
    let out = state
        .store
        .txn(
            Txn::new()
                .when(Compare::absent(key.clone()))
                .put_decoded(key, stored.clone(), decoded)
                .append(payload),
        )
        .await?;
    if !out.succeeded {
        return Err(ApiError::already_exists(info.kind, &name));
    }
    observe(state, info, ns, &name, out.revision, Some(&stored));
    let mut response = json_bytes(objects::with_revision(&stored, out.revision));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// Allocations and events are the control plane's to write.
fn user_writable(info: &KindInfo) -> Result<(), ApiError> {
    if info.user_writable {
        return Ok(());
    }
    Err(ApiError::method_not_allowed(format!(
        "{} objects are written by the control plane only",
        info.kind
    )))
}

/// What creating one object writes: its key, the stored bytes, and its audit payload.
struct PreparedCreate {
    name: String,
    key: String,
    stored: bytes::Bytes,
    payload: Vec<u8>,
    /// A claim as stored, for the scheduler's watch (which then need not decode `stored`).
    decoded: Option<Arc<dyn std::any::Any + Send + Sync>>,
    uid: String,
}

/// Everything a create does before the write: namespace, server-owned fields, validation,
/// authorization of the object, defaults and admission, and the claim's initial status.
/// `store` is where admission reads what it checks the object against: the store itself, or
/// for a batch a [`infraos_store::ReadMemo`] over it, so each class and project is read once.
async fn prepare_create(
    state: &AppState,
    store: &dyn Store,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    mut object: TypedObject,
) -> Result<PreparedCreate, ApiError> {
    // The name against its limits before anything else looks at the object: a refusal of a
    // megabyte name costs a few hundred bytes of answer and audit record.
    if let Some(problem) = infraos_api::names::object_name_problem(&object.meta().name) {
        return Err(ApiError::invalid_field(
            info.kind,
            &object.meta().name,
            "metadata.name",
            problem,
        ));
    }
    let name = object.meta().name.clone();
    let meta = object.meta_mut();
    if let Some(ns) = ns {
        match meta.namespace.as_deref() {
            Some(given) if given != ns => {
                return Err(ApiError::bad_request(format!(
                    "metadata.namespace {:?} does not match the namespace {:?} of the URL",
                    bounded(given, ERROR_STRING_MAX),
                    bounded(ns, ERROR_STRING_MAX)
                )));
            }
            _ => meta.namespace = Some(ns.to_string()),
        }
    }
    if meta
        .resource_version
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::invalid_field(
            info.kind,
            &name,
            "metadata.resourceVersion",
            "must not be set on objects to be created",
        ));
    }
    // What the server owns is the server's, whatever the body said.
    meta.uid.clear();
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    meta.generation = 0;
    meta.resource_version = None;
    object.clear_status();
    object
        .check()
        .map_err(|e| ApiError::invalid(info.kind, &name, &e))?;
    authz::check_role_name(&object)?;
    authz::check_object(state, &ctx.identity, "create", &object)?;
    // What the server sets, then admission: its links may read and refine it (a claim's
    // first status, which the approval link holds back).
    let now = state.clock.now();
    {
        let meta = object.meta_mut();
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.creation_timestamp = Some(now);
        meta.generation = 1;
    }
    kinds::strategy(info).initialize(&mut object, now);
    let attempt = admission::Attempt::new(store, &state.classes).by(admission::Requester {
        rbac: &state.rbac,
        subject: &ctx.identity.subject,
        namespace: ns,
    });
    admission::default(&attempt, &mut object).await?;
    admission::validate(&attempt, &object).await?;
    let bytes = object.to_vec();
    let key = objects::key(info, ns, &name);
    let mut object_ref = audit::object_ref(info.kind, ns, &name);
    let uid = object.meta().uid.clone();
    object_ref.uid = Some(uid.clone());
    let payload = Record {
        actor: &ctx.actor(),
        verb: "create",
        object: object_ref,
        code: 201,
        reason: None,
        before: None,
        after: Some(&bytes),
        node: None,
    }
    .payload(now);
    let decoded: Option<Arc<dyn std::any::Any + Send + Sync>> = match object {
        TypedObject::Claim(claim) => Some(Arc::new(claim)),
        _ => None,
    };
    Ok(PreparedCreate {
        name,
        key,
        stored: bytes::Bytes::from(bytes),
        payload,
        decoded,
        uid,
    })
}

/// Whether the request asks for `Prefer: return=minimal` (RFC 7240): a batch create then
/// answers each item's name, uid and resource version instead of the whole object.
fn prefers_minimal(headers: &http::HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"))
}

/// `POST …/<plural>:batchCreate` (Google AIP-233): `{"items": [object, …]}`, each admitted
/// and audited as a single create would be, all written in one transaction or none.
pub use infraos_api::path::BATCH_CREATE;
/// Most objects one batch create accepts.
pub const MAX_BATCH_ITEMS: usize = 1000;

pub(super) async fn batch_create(
    state: &AppState,
    ctx: &Ctx,
    info: &'static KindInfo,
    ns: Option<&str>,
    request: Request,
    name_out: &mut String,
) -> Result<Response, ApiError> {
    user_writable(info)?;
    let minimal = prefers_minimal(request.headers());
    let (bytes, format) = read_bytes(state, request).await?;
    let items = batch_items(info, &bytes, format)?;
    // Claims' selectors compile while parsing: off the async workers (crate::offload).
    let (items, parsed) = if crate::offload::may_hold_selectors(info, &bytes) {
        crate::offload::run("parsing selectors", move || {
            let parsed: Vec<_> = items
                .iter()
                .map(|item| TypedObject::parse_slice(info, item, false))
                .collect();
            (items, parsed)
        })
        .await?
    } else {
        let parsed = items
            .iter()
            .map(|item| TypedObject::parse_slice(info, item, false))
            .collect();
        (items, parsed)
    };
    let mut prepared: Vec<PreparedCreate> = Vec::with_capacity(items.len());
    let mut names = std::collections::HashSet::with_capacity(items.len());
    let reads = infraos_store::ReadMemo::new(Arc::clone(&state.store));
    for (i, (item, parsed)) in items.iter().zip(parsed).enumerate() {
        let object = parsed.map_err(|e| {
            let name = serde_json::from_slice::<serde_json::Value>(item)
                .ok()
                .and_then(|v| v.pointer("/metadata/name")?.as_str().map(str::to_string))
                .unwrap_or_default();
            at_item(i, ApiError::invalid(info.kind, &name, &e))
        })?;
        name_out.clone_from(&object.meta().name);
        if !names.insert(object.meta().name.clone()) {
            return Err(ApiError::bad_request(format!(
                "items[{i}]: {} {:?} appears twice in the batch",
                info.kind,
                bounded(&object.meta().name, ERROR_STRING_MAX)
            )));
        }
        prepared.push(
            prepare_create(state, &reads, ctx, info, ns, object)
                .await
                .map_err(|e| at_item(i, e))?,
        );
    }
    let mut txn = Txn::new();
    for p in &mut prepared {
        txn = txn
            .when(Compare::absent(p.key.clone()))
            .put_decoded(p.key.clone(), p.stored.clone(), p.decoded.take())
            .append(std::mem::take(&mut p.payload));
    }
    let out = state.store.txn(txn).await?;
    if !out.succeeded {
        // Name the first that exists (the transaction does not say which compare failed).
        for (i, p) in prepared.iter().enumerate() {
            if state.store.get(&p.key).await?.is_some() {
                name_out.clone_from(&p.name);
                return Err(at_item(i, ApiError::already_exists(info.kind, &p.name)));
            }
        }
        return Err(ApiError::conflict(
            info.kind,
            "",
            "an object of the batch was created concurrently; nothing was written",
        ));
    }
    let mut body =
        Vec::with_capacity(prepared.iter().map(|p| p.stored.len() + 32).sum::<usize>() + 64);
    body.extend_from_slice(
        format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}List\",\"metadata\":{{\"resourceVersion\":\"{}\"}},\"items\":[",
            infraos_api::API_VERSION,
            info.kind,
            out.revision
        )
        .as_bytes(),
    );
    for (i, p) in prepared.iter().enumerate() {
        observe(state, info, ns, &p.name, out.revision, Some(&p.stored));
        if i > 0 {
            body.push(b',');
        }
        if minimal {
            let meta = serde_json::json!({"metadata": {
                "name": p.name, "namespace": ns, "uid": p.uid,
                "resourceVersion": out.revision.to_string(),
            }});
            body.extend_from_slice(meta.to_string().as_bytes());
        } else {
            body.extend_from_slice(&objects::with_revision(&p.stored, out.revision));
        }
    }
    body.extend_from_slice(b"]}");
    let mut response = json_bytes(bytes::Bytes::from(body));
    *response.status_mut() = StatusCode::CREATED;
    if minimal {
        response.headers_mut().insert(
            "preference-applied",
            http::HeaderValue::from_static("return=minimal"),
        );
    }
    Ok(response)
}

/// The items of a batch create body, each as JSON bytes: `{"items": […]}`, with an optional
/// `apiVersion` and `kind: <Kind>List`.
fn batch_items(
    info: &KindInfo,
    bytes: &[u8],
    format: BodyFormat,
) -> Result<Vec<Vec<u8>>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Body<'a> {
        #[serde(default)]
        api_version: Option<String>,
        #[serde(default)]
        kind: Option<String>,
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct OwnedBody {
        #[serde(default)]
        api_version: Option<String>,
        #[serde(default)]
        kind: Option<String>,
        items: Vec<serde_json::Value>,
    }
    let bad = |e: String| ApiError::bad_request(format!("batch create body: {e}"));
    let (api_version, kind, items) = match format {
        BodyFormat::Yaml => {
            let b: OwnedBody = serde_norway::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            let items = b
                .items
                .iter()
                .map(serde_json::to_vec)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            (b.api_version, b.kind, items)
        }
        _ => {
            let b: Body<'_> = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            let items = b
                .items
                .iter()
                .map(|r| r.get().as_bytes().to_vec())
                .collect();
            (b.api_version, b.kind, items)
        }
    };
    if let Some(v) = api_version
        && v != infraos_api::API_VERSION
    {
        return Err(bad(format!(
            "apiVersion {v:?} is not {:?}",
            infraos_api::API_VERSION
        )));
    }
    let list_kind = format!("{}List", info.kind);
    if let Some(k) = kind
        && k != list_kind
    {
        return Err(bad(format!("kind {k:?} is not {list_kind:?}")));
    }
    if items.is_empty() {
        return Err(bad("items is empty".into()));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::too_large(format!(
            "a batch create takes at most {MAX_BATCH_ITEMS} objects, not {}",
            items.len()
        )));
    }
    Ok(items)
}

/// Names the batch item an error is about.
fn at_item(index: usize, mut e: ApiError) -> ApiError {
    e.message = format!("items[{index}]: {}", e.message);
    e
}
