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

use super::{BodyFormat, Ctx, parse_value, read_body, read_bytes};
use crate::admission;
use crate::audit::{self, Record};
use crate::authz::{self, ListFilter, lifecycle};
use crate::border::{ListParams, ObjectPath, refused};
use crate::error::ApiError;
use crate::kinds;
use crate::objects::{self, Stored, decode_stored, encode_for_store, set_revision};
use crate::state::AppState;

mod create;
mod list;
mod removal;
mod replace;

pub use create::{BATCH_CREATE, MAX_BATCH_ITEMS};
use create::{batch_create, create_one};
use list::{get_one, list_or_watch};
pub(crate) use removal::delete_object;
use removal::scope_leftovers;
use replace::write;

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

/// A 200 response with a JSON body already rendered.
fn json_bytes(body: bytes::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
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
