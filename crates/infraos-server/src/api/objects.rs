//! Create, read, update, patch, delete and list for every kind, generically.
//!
//! Writes follow one path: parse → strip what the server owns → decode and validate into the
//! kind's type → admission → compare-and-swap in the store, with the audit record in the same
//! transaction. A refused write changes nothing and still leaves an audit record.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use infraos_api::path::Verb;
use infraos_api::text::{ERROR_STRING_MAX, bounded};
use infraos_api::{KindInfo, LabelSelector, TypedObject};
use infraos_store::{Compare, Store, Txn};
use serde::Deserialize;

use super::border::{ObjectPath, refused};
use super::{BodyFormat, Ctx, parse_value, read_body, read_bytes};
use crate::admission;
use crate::audit::{self, Record};
use crate::authz::{self, ListFilter, lifecycle};
use crate::error::ApiError;
use crate::kinds;
use crate::objects::{self, Stored, decode_stored, encode_for_store, set_revision};
use crate::state::AppState;

/// Query parameters of list and watch requests. All strings, parsed here so that bad values
/// get a Status body that names them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub timeout_seconds: Option<String>,
}

/// How a boolean parameter is switched on: `true`, `1`, or present without a value. Read
/// from the decoded query only, so `watch=%74rue` is a watch for authorization too.
fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

impl ListParams {
    pub fn selector(&self) -> Result<Option<LabelSelector>, ApiError> {
        match self.label_selector.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}"))),
        }
    }

    pub fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("resourceVersion: {v:?} is not a revision number"))
            }),
        }
    }

    pub fn is_watch(&self) -> bool {
        truthy(&self.watch)
    }

    pub fn bookmarks(&self) -> bool {
        truthy(&self.allow_watch_bookmarks)
    }

    pub fn timeout(&self) -> Result<Option<std::time::Duration>, ApiError> {
        match self.timeout_seconds.as_deref() {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(|s| Some(std::time::Duration::from_secs(s)))
                .map_err(|_| {
                    ApiError::bad_request(format!("timeoutSeconds: {v:?} is not a number"))
                }),
        }
    }
}

fn labels_of<'a>(value: &'a serde_json::Value) -> impl Fn(&str) -> Option<&'a str> + Copy + 'a {
    move |k: &str| {
        value
            .pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(|v| v.as_str())
    }
}

pub fn selector_matches(selector: Option<&LabelSelector>, value: &serde_json::Value) -> bool {
    selector.is_none_or(|s| s.matches_with(labels_of(value)))
}

// ---- handlers: one per verb, over the path parsed at the border (super::border) ---------

pub async fn list(
    State(state): State<AppState>,
    filter: Option<Extension<ListFilter>>,
    path: ObjectPath,
    super::Params(params): super::Params<ListParams>,
) -> Result<Response, ApiError> {
    // Namespaced kinds are listed across all projects at cluster scope, as Kubernetes does.
    let (info, p) = path.resolve(true, false)?;
    let ns = p.namespace().map(str::to_string);
    list_or_watch(state, info, ns, params, filter.map(|f| f.0)).await
}

pub async fn get(State(state): State<AppState>, path: ObjectPath) -> Result<Response, ApiError> {
    let (info, p) = path.resolve(false, true)?;
    get_one(
        &state,
        info,
        p.namespace(),
        p.name.as_deref().unwrap_or_default(),
    )
    .await
}

pub async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ObjectPath,
    request: Request,
) -> Result<Response, ApiError> {
    let (info, p) = path.resolve(false, false)?;
    let ns = p.namespace();
    let mut name = String::new();
    let result = if p.batch {
        batch_create(&state, &ctx, info, ns, request, &mut name).await
    } else {
        create_one(&state, &ctx, info, ns, request, &mut name).await
    };
    Ok(result.unwrap_or_else(|e| refused("create", audit::object_ref(info.kind, ns, &name), e)))
}

pub async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ObjectPath,
    request: Request,
) -> Result<Response, ApiError> {
    write(state, ctx, path, Verb::Update, request).await
}

pub async fn patch(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ObjectPath,
    request: Request,
) -> Result<Response, ApiError> {
    write(state, ctx, path, Verb::Patch, request).await
}

pub async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    path: ObjectPath,
) -> Result<Response, ApiError> {
    let (info, p) = path.resolve(false, false)?;
    let (ns, name) = (p.namespace(), p.name.as_deref().unwrap_or_default());
    Ok(delete_object(&state, &ctx, info, ns, name)
        .await
        .unwrap_or_else(|e| refused("delete", audit::object_ref(info.kind, ns, name), e)))
}

// ---- reads ---------------------------------------------------------------------------------

async fn get_one(
    state: &AppState,
    info: &KindInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let key = objects::key(info, ns, name);
    let kv = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(info.kind, name))?;
    Ok(json_bytes(objects::with_revision(
        &kv.value,
        kv.mod_revision,
    )))
}

/// A 200 response with a JSON body already rendered.
fn json_bytes(body: bytes::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

const PAGE: usize = 500;

async fn list_or_watch(
    state: AppState,
    info: &'static KindInfo,
    ns: Option<String>,
    params: ListParams,
    filter: Option<ListFilter>,
) -> Result<Response, ApiError> {
    if params.is_watch() {
        return super::watch::watch(state, info, ns, params, filter).await;
    }
    let selector = params.selector()?;
    // The store serves the newest state, which satisfies any revision up to it ("not older
    // than", as Kubernetes); a later one has never existed.
    let not_older_than = params.resource_version()?;
    let limit = match params.limit.as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: {v:?} is not a number")))?,
        ),
    };
    let prefix = objects::prefix(info, ns.as_deref());
    let mut after = match params.continue_token.as_deref() {
        None | Some("") => None,
        Some(token) => Some(decode_continue(token, &prefix)?),
    };
    let mut items: Vec<bytes::Bytes> = Vec::new();
    let mut revision = None;
    let mut next = None;
    loop {
        let want = limit.map_or(PAGE, |l| (l - items.len()).clamp(1, PAGE));
        let page = state.store.range(&prefix, after.as_deref(), want).await?;
        if revision.is_none()
            && let Some(rv) = not_older_than
        {
            super::watch::check_not_future(rv, page.revision)?;
        }
        revision.get_or_insert(page.revision);
        for kv in &page.kvs {
            let keep = filter.as_ref().is_none_or(|f| f.admits(kv))
                && match &selector {
                    None => true,
                    Some(_) => selector_matches(selector.as_ref(), &decode_stored(kv)?.value),
                };
            if keep {
                items.push(objects::with_revision(&kv.value, kv.mod_revision));
            }
            after = Some(kv.key.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let full = limit.is_some_and(|l| items.len() >= l);
        if full {
            // Whether anything follows decides if a continue token is given.
            let probe = state.store.range(&prefix, after.as_deref(), 1).await?;
            if !probe.kvs.is_empty() {
                next = after.clone();
            }
            break;
        }
        if !page.more {
            break;
        }
    }
    let mut metadata = serde_json::json!({"resourceVersion": revision.unwrap_or(0).to_string()});
    if let Some(key) = next {
        metadata["continue"] = encode_continue(&key).into();
    }
    // Assembled from the stored bytes: a list of 10,000 objects is never parsed.
    let head = serde_json::json!({
        "apiVersion": infraos_api::API_VERSION,
        "kind": format!("{}List", info.kind),
        "metadata": metadata,
    });
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop();
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(json_bytes(body.into()))
}

fn encode_continue(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn decode_continue(token: &str, prefix: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("continue: the token is not valid for this list");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok(key)
}

// ---- writes --------------------------------------------------------------------------------

async fn create_one(
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

async fn batch_create(
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

/// An update or a merge patch, of an object or of its status.
async fn write(
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
async fn scope_leftovers(
    state: &AppState,
    info: &KindInfo,
    name: &str,
) -> Result<Vec<lifecycle::Scoped>, ApiError> {
    kinds::strategy(info).leftovers(&*state.store, name).await
}

/// Tells the authorizer at once about writes to what it decides on, so the next request
/// (a new binding used straight away) does not wait for the watch.
fn observe(
    state: &AppState,
    info: &KindInfo,
    ns: Option<&str>,
    name: &str,
    revision: u64,
    value: Option<&[u8]>,
) {
    if kinds::strategy(info).informs_authorizer() {
        state
            .rbac
            .observe(&objects::key(info, ns, name), revision, value);
    }
}

#[cfg(test)]
#[path = "delete_tests.rs"]
mod delete_tests;
