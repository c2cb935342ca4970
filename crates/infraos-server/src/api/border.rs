//! The border of the API: a request parsed once, and refusals audited in one place.
//!
//! ```text
//!  authenticate → limits → parse ──────────→ audit refusals → authorize → handler
//!                           │ query decoded (ListParams)         │ refused(verb, object, e)
//!                           │ path → infraos_api::path::Target   │ puts a Refused on the
//!                           └ both into the request's extensions  └ response; the layer
//!                                                                    records it
//! ```
//! [`parse`] decodes the query and the path once; the node authorizer, RBAC and the handlers
//! all read that one result ([`Parsed`], [`super::Params`]), so what is authorized is what is
//! served however the request spells it. A handler or the authorizer that refuses a request
//! answers [`refused`]; [`audit_refusals`] writes the audit record before the answer leaves.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infraos_api::KindInfo;
use infraos_api::audit::AuditObjectRef;
use infraos_api::path::{ApiPath, ApiRequest, PathError, Resource, Target};

use super::{ListParams, Params};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::state::AppState;

/// A request's path, parsed once: what every layer after [`parse`] reads.
#[derive(Clone, Debug)]
pub struct Parsed(pub Arc<Result<Target, PathError>>);

impl Parsed {
    /// Parses a request's method and path; `watch` is the decoded query's.
    pub fn of(method: &http::Method, path: &str, watch: bool) -> Parsed {
        Parsed(Arc::new(ApiRequest::parse(method.as_str(), path, watch)))
    }

    /// The API request, when the path is one.
    pub fn api(&self) -> Option<&ApiRequest> {
        match &*self.0 {
            Ok(Target::Api(r)) => Some(r),
            _ => None,
        }
    }
}

/// Decodes the query (of a GET: list and watch parameters) and parses the path, once, into
/// the request's extensions. A query that does not decode is a 400, before anything else
/// looks at the request.
pub async fn parse(mut request: Request, next: Next) -> Response {
    if let Err(e) = parse_into(&mut request) {
        return e.into_response();
    }
    next.run(request).await
}

/// What [`parse`] does, for callers that may run without it; a no-op when done already.
pub fn parse_into(request: &mut Request) -> Result<Parsed, ApiError> {
    if let Some(parsed) = request.extensions().get::<Parsed>() {
        return Ok(parsed.clone());
    }
    let mut watch = false;
    if request.method() == http::Method::GET {
        let params: ListParams = super::decode_query(request.uri().query())?;
        watch = params.is_watch();
        request.extensions_mut().insert(Params(params));
    }
    let parsed = Parsed::of(request.method(), request.uri().path(), watch);
    request.extensions_mut().insert(parsed.clone());
    Ok(parsed)
}

impl<S: Send + Sync> FromRequestParts<S> for Parsed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(parsed) = parts.extensions.get::<Parsed>() {
            return Ok(parsed.clone());
        }
        let params: ListParams = if parts.method == http::Method::GET {
            super::decode_query(parts.uri.query())?
        } else {
            ListParams::default()
        };
        Ok(Parsed::of(
            &parts.method,
            parts.uri.path(),
            params.is_watch(),
        ))
    }
}

/// An object path as a handler of the generic object routes needs it: the kind, checked
/// against the scope of the URL, with the faults named in the order the handlers always
/// named them (the subresource, then the plural, then the scope).
#[derive(Clone, Debug)]
pub struct ObjectPath(pub Parsed);

impl<S: Send + Sync> FromRequestParts<S> for ObjectPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Parsed::from_request_parts(parts, state)
            .await
            .map(ObjectPath)
    }
}

impl ObjectPath {
    /// The path, its kind resolved and checked against the URL's scope. `any_scope`: a list
    /// at cluster scope, which serves namespaced kinds across projects as Kubernetes does.
    /// `status_only`: the route takes a subresource, which must be `status`.
    pub fn resolve(
        &self,
        any_scope: bool,
        sub_is_status: bool,
    ) -> Result<(&'static KindInfo, &ApiPath), ApiError> {
        let path = match &*self.0.0 {
            Ok(Target::Api(r)) => &r.path,
            Err(PathError::UnknownResource {
                plural,
                subresource,
            }) => {
                if sub_is_status {
                    check_status_sub(subresource.as_deref())?;
                }
                return Err(unserved(plural));
            }
            _ => {
                return Err(ApiError::no_route(
                    "the server could not find the requested resource",
                ));
            }
        };
        if sub_is_status {
            check_status_sub(path.subresource.as_deref())?;
        }
        let Resource::Kind(info) = path.resource else {
            return Err(unserved(path.resource.plural()));
        };
        let namespaced_path = path.namespace().is_some();
        // A cluster-scoped list serves every kind; anything else, only at the kind's scope.
        if namespaced_path || !any_scope {
            check_scope(info, namespaced_path)?;
        }
        Ok((info, path))
    }
}

fn check_status_sub(sub: Option<&str>) -> Result<(), ApiError> {
    match sub {
        Some("status") | None => Ok(()),
        Some(sub) => Err(ApiError::no_route(format!("unknown subresource {sub:?}"))),
    }
}

/// The 404 of a plural the server does not serve, listing those it does.
pub fn unserved(plural: &str) -> ApiError {
    ApiError::no_route(format!(
        "the server does not serve {plural:?} in infraos.io/v1 (known: {})",
        infraos_api::object::kinds()
            .iter()
            .map(|k| k.plural)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The 404 of a kind asked for at the wrong scope, saying where it is served.
pub fn check_scope(info: &KindInfo, namespaced_path: bool) -> Result<(), ApiError> {
    if info.namespaced == namespaced_path {
        return Ok(());
    }
    let scope = if info.namespaced {
        "namespaced: use /apis/infraos.io/v1/namespaces/<project>/"
    } else {
        "cluster-scoped: use /apis/infraos.io/v1/"
    };
    Err(ApiError::no_route(format!(
        "{} is {scope}{}",
        info.kind, info.plural
    )))
}

/// A refusal to be recorded in the audit trail: carried on the response from whoever refused
/// to [`audit_refusals`].
#[derive(Clone, Debug)]
pub struct Refused {
    pub verb: String,
    pub object: AuditObjectRef,
    pub error: ApiError,
}

/// The answer to a refused request, marked for the audit layer.
pub fn refused(verb: &str, object: AuditObjectRef, error: ApiError) -> Response {
    let mut response = error.clone().into_response();
    response.extensions_mut().insert(Refused {
        verb: verb.to_string(),
        object,
        error,
    });
    response
}

/// Records every refusal marked by [`refused`] before the answer goes out: the audit of a
/// refusal is this one layer, whichever handler or authorizer refused.
pub async fn audit_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let subject = request
        .extensions()
        .get::<Arc<Identity>>()
        .map(|i| i.subject.clone());
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string());
    let mut response = next.run(request).await;
    if let (Some(refused), Some(subject)) = (response.extensions_mut().remove::<Refused>(), subject)
    {
        let actor = crate::audit::Actor { subject, source };
        crate::audit::refusal(
            &*state.store,
            state.clock.now(),
            &actor,
            &refused.verb,
            refused.object,
            &refused.error,
        )
        .await;
    }
    response
}
