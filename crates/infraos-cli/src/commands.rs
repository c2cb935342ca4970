//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod audit;
pub mod delete;
pub mod describe;
pub mod dev;
pub mod explain;
pub mod get;
pub mod join_token;
pub mod lease;
pub mod logs;
pub mod node;
pub mod server;
pub mod token;
pub mod version;

use std::path::Path;

use anyhow::Context;
use infraos_client::{Client, ClientConfig};

/// A client from the config file and environment.
pub fn client(config: Option<&Path>) -> anyhow::Result<Client> {
    let cfg = ClientConfig::load(config)?;
    Client::new(&cfg).context("cannot set up the API client")
}

/// Sends a request that answers with no object worth printing (revocations, reinstatements),
/// failing with `what` and the server's message.
pub async fn send_checked(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let bytes = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let content_type = body.map(|_| "application/json");
    let (code, answer) = client.raw(method, path, content_type, bytes, None).await?;
    if code >= 300 {
        anyhow::bail!(
            "{what}: {}",
            answer["message"].as_str().unwrap_or("refused")
        );
    }
    Ok(answer)
}

/// Resolves a kind name as typed on the command line.
pub fn kind(name: &str) -> anyhow::Result<&'static infraos_api::KindInfo> {
    infraos_api::object::kind_by_any_name(name).ok_or_else(|| {
        let known: Vec<&str> = infraos_api::object::kinds()
            .iter()
            .map(|k| k.plural)
            .collect();
        anyhow::anyhow!("unknown kind {name:?} (known: {})", known.join(", "))
    })
}

/// The namespace for a namespaced kind, required for single-object commands.
pub fn require_namespace<'a>(
    info: &infraos_api::KindInfo,
    ns: &'a Option<String>,
) -> anyhow::Result<Option<&'a str>> {
    if !info.namespaced {
        return Ok(None);
    }
    ns.as_deref()
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("{} are namespaced: pass -n PROJECT", info.plural))
}
