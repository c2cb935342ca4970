//! Authentication and the node authorizer.
//!
//! Users send a bearer token: an API token (the store keeps only its SHA-256) or, when the
//! server trusts an OIDC issuer, a JWT from it (see `oidc.rs`). Agents present a client
//! certificate from the cluster CA naming `node:<name>`; nodes are confined by [`node_may`]
//! to their own objects. What users may do is RBAC's business (`authz.rs`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::identity::{Identity, TokenRecord, hash_token, token_key};
use crate::state::AppState;

/// What a node may do, by path: its own Node, Resources and Allocations, and the agent API.
/// Lists and watches must select `infraos.io/node=<name>`, so they return nothing else.
/// Decodes the query and the path as the border does; the server itself calls
/// [`node_may_parsed`] with the border's one decoding.
pub fn node_may(
    node: &str,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Result<(), String> {
    let params: crate::border::ListParams = crate::border::decode_query(query).unwrap_or_default();
    let parsed = crate::border::Parsed::of(method, path, params.is_watch());
    node_may_parsed(
        node,
        method,
        path,
        &parsed,
        params.label_selector.as_deref(),
    )
}

/// [`node_may`] over a request parsed once at the border: `label_selector` is the decoded
/// query's (regression: 45677b8, the node authorizer read the query undecoded).
pub fn node_may_parsed(
    node: &str,
    method: &http::Method,
    path: &str,
    parsed: &crate::border::Parsed,
    label_selector: Option<&str>,
) -> Result<(), String> {
    use infraos_api::path::{Resource, Target};
    if matches!(&*parsed.0, Ok(Target::Agent)) {
        return Ok(());
    }
    let deny = |what: &str| Err(format!("node:{node} may not {what}"));
    if method != http::Method::GET {
        return deny(&format!("{method} {path}: agents write through /agent/v1"));
    }
    let Some(request) = parsed.api() else {
        return deny(&format!("read {path}"));
    };
    let p = &request.path;
    let plural = match p.resource {
        Resource::Kind(info) if p.subresource.is_none() && !p.batch => info.plural,
        _ => return deny(&format!("read {path}")),
    };
    match (plural, p.name.as_deref()) {
        ("nodes", Some(n)) if n == node => Ok(()),
        ("allocations" | "resources", None) => {
            let pinned = label_selector
                .unwrap_or_default()
                .parse::<infraos_api::LabelSelector>()
                .map(|s| {
                    s.requirements().iter().any(|r| {
                        matches!(r, infraos_api::labels::Requirement::Equals(k, v)
                            if k == infraos_api::kinds::NODE_LABEL && v == node)
                    })
                })
                .unwrap_or(false);
            if pinned {
                Ok(())
            } else {
                deny(&format!(
                    "list {plural} without labelSelector={}={node}",
                    infraos_api::kinds::NODE_LABEL
                ))
            }
        }
        _ => deny(&format!("read {path}")),
    }
}

/// Why a bearer token was refused; what the caller reads in the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the bearer token is not valid (unknown or revoked)")]
    Unknown,
    #[error("the bearer token expired at {0}")]
    Expired(infraos_api::Time),
}

/// Looks a token up: in the authorizer's view (fed by watches), else in the store, so a
/// token minted a moment ago on another replica works at once.
async fn lookup_token(
    state: &AppState,
    token: &str,
) -> Result<Result<Identity, TokenProblem>, ApiError> {
    let hash = hash_token(token);
    let hex_hash = hex::encode(hash);
    let record = match state.rbac.token(&hex_hash) {
        Some(r) => r,
        None => {
            let key = token_key(&hash);
            let Some(kv) = state.store.get(&key).await? else {
                return Ok(Err(TokenProblem::Unknown));
            };
            state.rbac.observe(&key, kv.mod_revision, Some(&kv.value));
            Arc::new(
                serde_json::from_slice::<TokenRecord>(&kv.value)
                    .map_err(|e| ApiError::internal(format!("token record is corrupt: {e}")))?,
            )
        }
    };
    if let Some(expires) = record.expires
        && state.clock.now() >= expires
    {
        return Ok(Err(TokenProblem::Expired(expires)));
    }
    Ok(Ok(Identity {
        subject: format!("user:{}", record.subject),
        groups: record.groups.clone(),
        token: (!record.id.is_empty()).then(|| record.id.clone()),
    }))
}

/// The credentials of an `Authorization: Bearer …` header. Auth schemes are case-insensitive
/// (RFC 9110 §11.1): `bearer` and `BEARER` are the same scheme.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The tower middleware: a client certificate naming a node, or a valid bearer token; 401
/// otherwise. (A node reaching beyond its own objects gets its 403 from the authorizer.)
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let node = request
        .extensions()
        .get::<crate::tls::PeerCertificate>()
        .and_then(|c| c.common_name.strip_prefix(crate::pki::NODE_PREFIX))
        .map(str::to_string);
    if let Some(node) = node {
        if state.rbac.node_revoked(&node) {
            let e = ApiError::unauthorized(format!(
                "node:{node} has been revoked: its certificate is no longer accepted \
                 (an administrator may reinstate it with `infraos node reinstate {node}`)"
            ));
            return unauthenticated(&state, &request, &format!("node:{node}"), e).await;
        }
        // What the node may reach is decided by the authorizer (authz.rs, [`node_may`]),
        // behind the rate limits, so its refusals are throttled and audited like any other.
        request
            .extensions_mut()
            .insert(Arc::new(Identity::for_node(&node)));
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(bearer_token) else {
        let e = ApiError::unauthorized("a bearer token is required (Authorization: Bearer TOKEN)");
        return unauthenticated(&state, &request, "anonymous", e).await;
    };
    let found = if crate::oidc::looks_like_jwt(token) {
        match &state.oidc {
            Some(oidc) => oidc.validate(token).await.map_err(|e| e.to_string()),
            None => Err(
                "the bearer token is a JWT, but this server trusts no OIDC issuer \
                         (set `oidc:` in the server config)"
                    .to_string(),
            ),
        }
    } else {
        match lookup_token(&state, token).await {
            Ok(found) => found.map_err(|e| e.to_string()),
            Err(e) => return e.into_response(),
        }
    };
    match found {
        Ok(identity) => {
            request.extensions_mut().insert(Arc::new(identity));
            next.run(request).await
        }
        Err(why) => {
            unauthenticated(&state, &request, "anonymous", ApiError::unauthorized(why)).await
        }
    }
}

/// A refused sign-in leaves an audit record (never the token), then the 401.
fn unauthenticated(
    state: &AppState,
    request: &Request,
    subject: &str,
    error: ApiError,
) -> impl Future<Output = Response> + Send + use<> {
    let actor = crate::audit::Actor {
        subject: subject.to_string(),
        source: request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.to_string()),
    };
    let mut object = crate::audit::object_ref("", None, request.uri().path());
    object.subresource = Some(request.method().as_str().to_ascii_lowercase());
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let state = state.clone();
    async move {
        // Failed sign-ins are audited up to a rate per address; a flood of them gets 429s
        // instead of filling the audit chain.
        if let Some(ip) = ip
            && let Err(retry) = state.limits.anonymous_allowed(ip)
        {
            return ApiError::too_many_requests(
                format!("too many failed sign-ins from {ip}"),
                retry,
            )
            .into_response();
        }
        crate::audit::refusal(
            &*state.store,
            state.clock.now(),
            &actor,
            "authenticate",
            object,
            &error,
        )
        .await;
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer t1", "bearer t1", "BEARER t1", "Bearer   t1 "] {
            assert_eq!(bearer_token(h), Some("t1"), "{h}");
        }
        for h in ["Basic t1", "Bearer", "Bearer ", "Bearert1", "t1"] {
            assert_eq!(bearer_token(h), None, "{h}");
        }
    }

    #[test]
    fn nodes_reach_only_their_own_objects() {
        let get = http::Method::GET;
        let may = |path: &str, query: Option<&str>| node_may("a", &get, path, query).is_ok();
        assert!(may("/apis/infraos.io/v1/nodes/a", None));
        assert!(!may("/apis/infraos.io/v1/nodes/b", None));
        assert!(!may("/apis/infraos.io/v1/nodes", None));
        assert!(may(
            "/apis/infraos.io/v1/allocations",
            Some("watch=true&labelSelector=infraos.io%2Fnode%3Da")
        ));
        assert!(may(
            "/apis/infraos.io/v1/resources",
            Some("labelSelector=infraos.io/node=a,x=y")
        ));
        assert!(!may(
            "/apis/infraos.io/v1/allocations",
            Some("labelSelector=infraos.io/node=b")
        ));
        assert!(!may(
            "/apis/infraos.io/v1/allocations",
            Some("labelSelector=infraos.io/node!=b")
        ));
        assert!(!may("/apis/infraos.io/v1/allocations", None));
        assert!(!may("/apis/infraos.io/v1/namespaces/p/claims/c", None));
        assert!(!may("/apis/infraos.io/v1/namespaces/p/allocations/c", None));
        assert!(!may("/apis/infraos.io/v1/auditrecords", None));
        assert!(may("/agent/v1/heartbeat", None));
        assert!(
            node_may(
                "a",
                &http::Method::DELETE,
                "/apis/infraos.io/v1/nodes/a",
                None
            )
            .is_err()
        );
    }

    /// Regression (45677b8): the node authorizer reads the query and the path as the border
    /// decoded them for the handler, never a spelling of its own.
    #[test]
    fn the_node_authorizer_reads_the_border_decoding() {
        let get = http::Method::GET;
        let path = "/apis/infraos.io/v1/allocations";
        let parsed = crate::border::Parsed::of(&get, path, true);
        assert!(node_may_parsed("a", &get, path, &parsed, Some("infraos.io/node=a")).is_ok());
        // The raw spelling is no selector: only the decoded one counts.
        assert!(node_may_parsed("a", &get, path, &parsed, Some("infraos.io%2Fnode%3Da")).is_err());
        // A name escaped in the path is the name the handler serves.
        let path = "/apis/infraos.io/v1/nodes/%61";
        let parsed = crate::border::Parsed::of(&get, path, false);
        assert!(node_may_parsed("a", &get, path, &parsed, None).is_ok());
        let path = "/apis/infraos.io/v1/nodes/%62";
        let parsed = crate::border::Parsed::of(&get, path, false);
        assert!(node_may_parsed("a", &get, path, &parsed, None).is_err());
    }
}
