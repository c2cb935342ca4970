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
//! all read that one result ([`Parsed`], [`Params`]), so what is authorized is what is
//! served however the request spells it. A handler or the authorizer that refuses a request
//! answers [`refused`]; [`audit_refusals`] writes the audit record before the answer leaves.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infraos_api::audit::AuditObjectRef;
use infraos_api::path::{ApiPath, ApiRequest, PathError, Resource, Target};
use infraos_api::{KindInfo, LabelSelector};
use serde::Deserialize;

use crate::error::ApiError;
use crate::identity::Identity;
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

/// Query parameters, decoded once at the border into `T`. A query that does not decode (a
/// parameter given twice, a bad escape) is a 400 Status naming the problem, like every other
/// error, instead of axum's plain-text rejection.
#[derive(Clone, Debug, Default)]
pub struct Params<T>(pub T);

/// Decodes a query string (percent escapes and `+` undone) into `T`.
pub fn decode_query<T: serde::de::DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Decoded already by a middleware that needed it (authorization: list or watch).
        if let Some(Params(decoded)) = parts.extensions.get::<Params<T>>() {
            return Ok(Params(decoded.clone()));
        }
        decode_query(parts.uri.query()).map(Params)
    }
}

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
        let params: ListParams = decode_query(request.uri().query())?;
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
            decode_query(parts.uri.query())?
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
