//! The HTTP API: Kubernetes-shaped paths under `/apis/infraos.io/v1`.
//!
//! ```text
//!  /apis/infraos.io/v1/<plural>[/<name>[/status]]                       cluster-scoped kinds
//!  /apis/infraos.io/v1/namespaces/<ns>/<plural>[/<name>[/<sub>]]         namespaced kinds
//!  /apis/infraos.io/v1/auditrecords[/head]                              the audit chain, its signed head
//!  /apis/infraos.io/v1/signingkey                                       the server's public key
//!  /healthz /readyz /version /apis /apis/infraos.io/v1   unauthenticated meta
//!  /openapi/v3                                              the OpenAPI document (authenticated)
//! ```
//! Every request passes authentication (a tower layer), then its handler parses the request
//! into a typed command at the border: body size-capped, JSON or YAML, decoded into the kind's
//! closed type with field-path errors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::routing::{get, post};
use infraos_api::KindInfo;

use crate::audit::Actor;
use crate::error::ApiError;
use crate::identity::Identity;
use crate::state::AppState;

pub(crate) mod agent;
mod approvals;
mod audit_records;
mod claims;
mod explain;
mod join;
mod join_tokens;
mod logs;
mod meta;
mod objects;
pub use crate::border::{self, ListParams, Params, decode_query};
pub use objects::{BATCH_CREATE, MAX_BATCH_ITEMS};
pub(crate) mod revocations;
mod signing_key;
mod tokens;
mod watch;

pub use infraos_api::path::PREFIX;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/auditrecords", get(audit_records::list))
        .route("/auditrecords/head", get(audit_records::head))
        .route("/signingkey", get(signing_key::get))
        .route(
            "/jointokens",
            get(join_tokens::list).post(join_tokens::create),
        )
        .route(
            "/jointokens/{id}",
            axum::routing::delete(join_tokens::revoke),
        )
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/nodes/{name}/revocation",
            post(revocations::revoke).delete(revocations::reinstate),
        )
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/namespaces/{ns}/claims/{name}/log", get(logs::claim_log))
        .route(
            "/namespaces/{ns}/claims/{name}/explain",
            get(explain::claim),
        )
        // The generic object routes: one handler per verb, whatever the scope; each reads
        // the path parsed at the border (border::parse), never the route's captures.
        .route(
            "/namespaces/{ns}/{plural}",
            get(objects::list).post(objects::create),
        )
        .route(
            "/namespaces/{ns}/{plural}/{name}",
            get(objects::get)
                .put(objects::update)
                .patch(objects::patch)
                .delete(objects::delete),
        )
        .route(
            "/namespaces/{ns}/{plural}/{name}/{sub}",
            get(objects::get)
                .put(objects::update)
                .patch(objects::patch)
                .post(claims::action),
        )
        .route("/{plural}", get(objects::list).post(objects::create))
        .route(
            "/{plural}/{name}",
            get(objects::get)
                .put(objects::update)
                .patch(objects::patch)
                .delete(objects::delete),
        )
        .route(
            "/{plural}/{name}/{sub}",
            get(objects::get).put(objects::update).patch(objects::patch),
        );
    let agent_v1 = Router::new()
        .route("/heartbeat", post(agent::heartbeat))
        .route("/certificate", post(agent::certificate))
        .route("/status", axum::routing::put(agent::report))
        .route(
            "/namespaces/{ns}/allocations/{name}/workload",
            axum::routing::put(agent::workload),
        )
        .route(
            "/namespaces/{ns}/allocations/{name}/renew",
            post(agent::renew),
        );
    let authenticated = Router::new()
        .nest(PREFIX, v1)
        .nest("/agent/v1", agent_v1)
        .route("/openapi/v3", get(meta::openapi))
        // Layers wrap what is above them: authentication runs first, then the limits, the
        // parse of the request (once, for all that follows), the audit of refusals, and
        // authorization.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::authz::authorize,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            border::audit_refusals,
        ))
        .route_layer(axum::middleware::from_fn(border::parse))
        .route_layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            crate::limits::limit,
        ))
        .route_layer(axum::middleware::from_fn(
            crate::connections::mark_authenticated,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    Router::new()
        .merge(authenticated)
        .route("/agent/v1/join", post(join::join))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/leader", get(meta::leader))
        .route("/version", get(meta::version))
        .route("/apis", get(meta::api_groups))
        .route(PREFIX, get(meta::api_resources))
        .fallback(|| async {
            ApiError::no_route("the server could not find the requested resource")
        })
        .with_state(state)
}

/// The caller of a request: its identity and network address.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub identity: Arc<Identity>,
    pub source: Option<SocketAddr>,
}

impl Ctx {
    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.identity.subject.clone(),
            source: self.source.map(|s| s.to_string()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let identity = parts
            .extensions
            .get::<Arc<Identity>>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("not authenticated"))?;
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Ctx { identity, source })
    }
}

/// Resolves a URL's plural to a kind, checking it is served at this scope.
pub fn kind_for(plural: &str, namespaced_path: bool) -> Result<&'static KindInfo, ApiError> {
    let info =
        infraos_api::object::kind_by_plural(plural).ok_or_else(|| border::unserved(plural))?;
    border::check_scope(info, namespaced_path)?;
    Ok(info)
}

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    MergePatch,
    Yaml,
}

/// Reads a request body up to the configured cap, with its format from the content type.
pub async fn read_bytes(
    state: &AppState,
    request: Request,
) -> Result<(bytes::Bytes, BodyFormat), ApiError> {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/json" | "" => BodyFormat::Json,
        "application/merge-patch+json" => BodyFormat::MergePatch,
        "application/yaml" | "application/x-yaml" | "text/yaml" => BodyFormat::Yaml,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "content type {other:?} is not supported; use application/json, application/merge-patch+json or application/yaml"
            )));
        }
    };
    let limit = state.config.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request body exceeds the {limit}-byte limit")))?;
    Ok((bytes, format))
}

/// Parses a body as a JSON object; syntax errors are 400s.
pub fn parse_value(bytes: &[u8], format: BodyFormat) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = match format {
        BodyFormat::Json | BodyFormat::MergePatch => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?,
        BodyFormat::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
            serde_norway::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("request body is not valid YAML: {e}"))
            })?
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

/// Reads a request body up to the configured cap and parses it as JSON or YAML.
pub async fn read_body(
    state: &AppState,
    request: Request,
) -> Result<(serde_json::Value, BodyFormat), ApiError> {
    let (bytes, format) = read_bytes(state, request).await?;
    Ok((parse_value(&bytes, format)?, format))
}
