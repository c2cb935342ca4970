//! Join tokens: what an agent shows once to get its first certificate.
//!
//! The store keeps `/infraos/jointokens/<sha256 of the token>` with the token's expiry, its use
//! count and the tiers and labels it grants; never the token itself. A join consumes one use
//! in the same transaction that registers the node, so a token for N uses joins at most N
//! nodes whatever the concurrency.
//!
//! A token is generic (any free node name) or minted for one node name (`node`): only such a
//! token may join under a name that an existing Node already holds, other than by that
//! node's own key rejoining (see `api::agent::join`).

use std::collections::BTreeMap;

use infraos_api::Time;
use infraos_api::kinds::Tier;
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "/infraos/jointokens/";
pub const TOKEN_PREFIX: &str = "iojoin_";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    /// The first 12 hex digits of the hash: names the token in lists and revocations.
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created: Time,
    pub created_by: String,
    pub expires: Time,
    /// How many joins it allows; `None` for any number until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    #[serde(default)]
    pub used: u32,
    pub tiers: Vec<Tier>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The one node name the token may join, replacing the key that name was bound to (a
    /// reinstalled machine, an operator-declared Node); `None` for any name no Node holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a join token was refused. The messages are what the agent's operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error(
        "the join token is not known to this server (mistyped, revoked, or from another cluster)"
    )]
    Unknown,
    #[error("the join token expired at {0}")]
    Expired(Time),
    #[error("the join token has been used {0} of {0} times")]
    UsedUp(u32),
}

impl JoinTokenRecord {
    /// Whether a join may use the token now.
    pub fn check(&self, now: Time) -> Result<(), TokenProblem> {
        if now >= self.expires {
            return Err(TokenProblem::Expired(self.expires));
        }
        if let Some(uses) = self.uses
            && self.used >= uses
        {
            return Err(TokenProblem::UsedUp(uses));
        }
        Ok(())
    }
}

pub fn key_for(token: &str) -> (String, String) {
    let hash = hex::encode(crate::identity::hash_token(token));
    let id = hash[..12].to_string();
    (format!("{PREFIX}{hash}"), id)
}

/// Serialises joins that use the same token within this server: a fleet booting with one
/// token would otherwise race on its use count, and all but one join per commit would lose
/// the compare-and-swap. Striped by the token's key, so there is nothing to clean up.
pub struct JoinLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Default for JoinLocks {
    fn default() -> Self {
        JoinLocks {
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl JoinLocks {
    pub async fn lock(&self, token_key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        token_key.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[index].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uses: Option<u32>, used: u32) -> JoinTokenRecord {
        JoinTokenRecord {
            id: "abc".into(),
            description: String::new(),
            created: Time::from_unix_millis(0),
            created_by: "user:admin".into(),
            expires: Time::from_unix_millis(10_000),
            uses,
            used,
            tiers: vec![Tier::Inventory],
            labels: BTreeMap::new(),
            node: None,
        }
    }

    #[test]
    fn tokens_expire_and_run_out() {
        let early = Time::from_unix_millis(5_000);
        assert_eq!(record(Some(2), 1).check(early), Ok(()));
        assert_eq!(
            record(Some(2), 2).check(early),
            Err(TokenProblem::UsedUp(2))
        );
        assert_eq!(record(None, 99).check(early), Ok(()));
        assert!(matches!(
            record(None, 0).check(Time::from_unix_millis(10_000)),
            Err(TokenProblem::Expired(_))
        ));
    }

    #[test]
    fn the_key_never_contains_the_token() {
        let (key, id) = key_for("iojoin_secret");
        assert!(!key.contains("secret"));
        assert!(key.ends_with(&format!("{id}{}", &key[PREFIX.len() + 12..])));
    }
}
