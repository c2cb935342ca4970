//! Authentication and the node authorizer.
//!
//! Users send a bearer token (the store keeps only its SHA-256); agents present a client
//! certificate from the cluster CA naming `node:<name>`. Every valid user token is an
//! administrator until RBAC lands; nodes are confined by [`node_may`] to their own objects.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ServerError;
use crate::error::ApiError;
use crate::state::AppState;

pub const TOKEN_PREFIX: &str = "/infraos/tokens/";

/// What the store keeps for a token: never the token itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `user:NAME` or `node:NAME`.
    pub subject: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The node an agent's certificate names, for node identities.
    pub fn node(&self) -> Option<&str> {
        self.subject.strip_prefix(crate::pki::NODE_PREFIX)
    }

    pub fn for_node(name: &str) -> Identity {
        Identity {
            subject: format!("{}{name}", crate::pki::NODE_PREFIX),
            groups: vec!["system:nodes".into()],
        }
    }
}

/// What a node may do, by path: its own Node, Resources and Allocations, and the agent API.
/// Lists and watches must select `infraos.io/node=<name>`, so they return nothing else.
pub fn node_may(
    node: &str,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Result<(), String> {
    if path.starts_with("/agent/v1/") {
        return Ok(());
    }
    let deny = |what: &str| Err(format!("node:{node} may not {what}"));
    if method != http::Method::GET {
        return deny(&format!("{method} {path}: agents write through /agent/v1"));
    }
    let Some(rest) = path.strip_prefix(crate::api::PREFIX) else {
        return deny(&format!("read {path}"));
    };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let (plural, name) = match parts.as_slice() {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(*name)),
        ["namespaces", _, plural] => (*plural, None),
        ["namespaces", _, plural, name] => (*plural, Some(*name)),
        _ => return deny(&format!("read {path}")),
    };
    match (plural, name) {
        ("nodes", Some(n)) if n == node => Ok(()),
        ("allocations" | "resources", None) => {
            let selector = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "labelSelector")
                .map(|(_, v)| percent_decode(v))
                .unwrap_or_default();
            let pinned = selector
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn token_key(hash: &[u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(hash))
}

/// 256 random bits, URL-safe base64, prefixed so leaked tokens are recognisable by scanners.
pub fn generate_token() -> Result<String, ServerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ServerError::Cert(format!("no randomness: {e}")))?;
    Ok(format!(
        "ios_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Token hashes known to this server, filled from the store on demand.
#[derive(Default)]
pub struct TokenCache {
    known: RwLock<HashMap<[u8; 32], Arc<Identity>>>,
}

impl TokenCache {
    async fn lookup(
        &self,
        state: &AppState,
        token: &str,
    ) -> Result<Option<Arc<Identity>>, ApiError> {
        let hash = hash_token(token);
        if let Some(id) = self.known.read().get(&hash) {
            return Ok(Some(Arc::clone(id)));
        }
        let Some(kv) = state.store.get(&token_key(&hash)).await? else {
            return Ok(None);
        };
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("token record is corrupt: {e}")))?;
        let identity = Arc::new(Identity {
            subject: format!("user:{}", record.subject),
            groups: record.groups,
        });
        self.known.write().insert(hash, Arc::clone(&identity));
        Ok(Some(identity))
    }
}

/// The tower middleware: a client certificate naming a node, or a valid bearer token; 401
/// otherwise, and 403 for a node reaching beyond its own objects.
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
        if let Err(why) = node_may(
            &node,
            request.method(),
            request.uri().path(),
            request.uri().query(),
        ) {
            return ApiError::forbidden(why).into_response();
        }
        request
            .extensions_mut()
            .insert(Arc::new(Identity::for_node(&node)));
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return ApiError::unauthorized("a bearer token is required (Authorization: Bearer TOKEN)")
            .into_response();
    };
    match state.tokens.lookup(&state, token).await {
        Ok(Some(identity)) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Ok(None) => ApiError::unauthorized("the bearer token is not valid").into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ios_") && a.len() > 40);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert!(!token_key(&hash_token(&a)).contains(&a));
    }
}
