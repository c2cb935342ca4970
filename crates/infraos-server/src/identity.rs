//! Who a request's caller is ([`Identity`]) and what the store keeps of an API token
//! ([`TokenRecord`], keyed by the token's hash). A leaf: the limits, the authorizer, OIDC and
//! the join tokens name these without reaching the authentication middleware (`auth.rs`),
//! which needs the whole `AppState`.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ServerError;

pub const TOKEN_PREFIX: &str = "/infraos/tokens/";

/// What the store keeps for a token: never the token itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The user the token signs in as.
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The first 12 hex digits of the hash: names the token in lists, revocations and
    /// role bindings (subject kind `Token`). Empty for the administrator token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<infraos_api::Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// None: valid until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<infraos_api::Time>,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `user:NAME` or `node:NAME`.
    pub subject: String,
    pub groups: Vec<String>,
    /// The API token's id, when signed in with one.
    pub token: Option<String>,
}

impl Identity {
    /// The user name, for user identities.
    pub fn user(&self) -> Option<&str> {
        self.subject.strip_prefix("user:")
    }

    /// The node an agent's certificate names, for node identities.
    pub fn node(&self) -> Option<&str> {
        self.subject.strip_prefix(crate::pki::NODE_PREFIX)
    }

    pub fn for_node(name: &str) -> Identity {
        Identity {
            subject: format!("{}{name}", crate::pki::NODE_PREFIX),
            groups: vec!["system:nodes".into()],
            token: None,
        }
    }
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
