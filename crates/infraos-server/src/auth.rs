//! Authentication: every API request carries a bearer token; the store keeps only its SHA-256.
//! (RBAC, OIDC and agent certificates come with the security work; today every valid token
//! is an administrator.)

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
    /// `user:NAME`, later also `node:NAME`.
    pub subject: String,
    pub groups: Vec<String>,
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

/// The tower middleware: rejects requests without a valid bearer token with 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
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
    fn tokens_are_random_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("ios_") && a.len() > 40);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert!(!token_key(&hash_token(&a)).contains(&a));
    }
}
