//! `infraos join-token create|list|revoke`: tokens agents join with.

use std::path::Path;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct JoinTokenArgs {
    #[command(subcommand)]
    command: JoinTokenCommand,
}

#[derive(Subcommand)]
enum JoinTokenCommand {
    /// Mint a token; it is printed once.
    Create {
        /// How long the token can be used, e.g. 1h, 30m.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many joins it allows (default: any number until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// Capability tiers it grants (inventory, execute, network, storage).
        #[arg(long, default_value = "inventory,execute")]
        tiers: String,
        /// Labels every node joining with it gets, `k=v,…`.
        #[arg(long, default_value = "")]
        labels: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Mint it for this node name only: it may then join under that name even where a
        /// Node already holds it (a reinstalled machine, an operator-declared Node). One use
        /// unless --uses says otherwise.
        #[arg(long)]
        node: Option<String>,
    },
    /// List tokens (without their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

pub async fn run(config: Option<&Path>, args: JoinTokenArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    match args.command {
        JoinTokenCommand::Create {
            ttl,
            uses,
            tiers,
            labels,
            description,
            node,
        } => {
            let tiers: Vec<&str> = tiers
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            for t in &tiers {
                if infraos_api::kinds::Tier::parse(t).is_none() {
                    anyhow::bail!(
                        "--tiers: {t:?} is not a tier (inventory, execute, network, storage)"
                    );
                }
            }
            let body = serde_json::json!({
                "ttl": ttl,
                "uses": uses,
                "tiers": tiers,
                "labels": super::agent::parse_labels(&labels)?,
                "description": description,
                "node": node,
            });
            let created: serde_json::Value = client
                .send_json(
                    reqwest::Method::POST,
                    "/apis/infraos.io/v1/jointokens",
                    &body,
                )
                .await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "join token {} expires {} (uses: {}, tiers: {}{})",
                created["id"].as_str().unwrap_or_default(),
                created["expires"].as_str().unwrap_or_default(),
                created["uses"]
                    .as_u64()
                    .map_or("unlimited".to_string(), |u| u.to_string()),
                created["tiers"],
                created["node"]
                    .as_str()
                    .map(|n| format!(", node: {n}"))
                    .unwrap_or_default()
            );
        }
        JoinTokenCommand::List => {
            let list = client.get_path("/apis/infraos.io/v1/jointokens").await?;
            println!(
                "{:<14} {:<26} {:<8} {:<22} DESCRIPTION",
                "ID", "EXPIRES", "USED", "TIERS"
            );
            for t in list["items"].as_array().into_iter().flatten() {
                let used = match t["uses"].as_u64() {
                    Some(u) => format!("{}/{u}", t["used"]),
                    None => format!("{}", t["used"]),
                };
                let tiers: Vec<&str> = t["tiers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                let description = match t["node"].as_str() {
                    Some(node) => format!(
                        "[node {node}] {}",
                        t["description"].as_str().unwrap_or_default()
                    ),
                    None => t["description"].as_str().unwrap_or_default().to_string(),
                };
                println!(
                    "{:<14} {:<26} {:<8} {:<22} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["expires"].as_str().unwrap_or_default(),
                    used,
                    tiers.join(","),
                    description.trim_end()
                );
            }
        }
        JoinTokenCommand::Revoke { id } => {
            super::send_checked(
                &client,
                reqwest::Method::DELETE,
                &format!("/apis/infraos.io/v1/jointokens/{id}"),
                None,
                &format!("join token {id}"),
            )
            .await?;
            println!("join token {id} revoked");
        }
    }
    Ok(())
}
