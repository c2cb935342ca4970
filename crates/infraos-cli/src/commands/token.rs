//! `infraos token create|list|revoke`: API tokens users sign in with.

use std::path::Path;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for a user; it is printed once.
    Create {
        /// The user the token signs in as (role bindings name this user).
        #[arg(long)]
        subject: String,
        /// Groups the token's user is in, `a,b` (role bindings may name groups).
        #[arg(long, default_value = "")]
        groups: String,
        /// How long the token is valid, e.g. 12h, 30d (default 30 days, at most 366 days).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (without their secrets).
    List,
    /// Revoke a token by id, or every token of a user.
    Revoke {
        id: Option<String>,
        /// Revoke all tokens of this user.
        #[arg(long, conflicts_with = "id")]
        subject: Option<String>,
    },
}

const PATH: &str = "/apis/infraos.io/v1/tokens";

pub async fn run(config: Option<&Path>, args: TokenArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    match args.command {
        TokenCommand::Create {
            subject,
            groups,
            ttl,
            description,
        } => {
            let groups: Vec<&str> = groups
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .collect();
            let mut body = serde_json::json!({
                "subject": subject,
                "groups": groups,
                "description": description,
            });
            if let Some(ttl) = ttl {
                body["ttl"] = ttl.into();
            }
            let created: serde_json::Value =
                client.send_json(reqwest::Method::POST, PATH, &body).await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} for user {} expires {}",
                created["id"].as_str().unwrap_or_default(),
                created["subject"].as_str().unwrap_or_default(),
                created["expires"].as_str().unwrap_or("never"),
            );
        }
        TokenCommand::List => {
            let list = client.get_path(PATH).await?;
            println!(
                "{:<14} {:<20} {:<24} {:<26} DESCRIPTION",
                "ID", "SUBJECT", "GROUPS", "EXPIRES"
            );
            for t in list["items"].as_array().into_iter().flatten() {
                let groups: Vec<&str> = t["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                println!(
                    "{:<14} {:<20} {:<24} {:<26} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["subject"].as_str().unwrap_or_default(),
                    groups.join(","),
                    t["expires"].as_str().unwrap_or("never"),
                    t["description"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id, subject } => {
            let ids: Vec<String> = match (id, subject) {
                (Some(id), None) => vec![id],
                (None, Some(subject)) => {
                    let list = client.get_path(PATH).await?;
                    let ids: Vec<String> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|t| t["subject"].as_str() == Some(subject.as_str()))
                        .filter_map(|t| t["id"].as_str().map(str::to_string))
                        .collect();
                    if ids.is_empty() {
                        anyhow::bail!("--subject: user {subject:?} has no tokens");
                    }
                    ids
                }
                _ => anyhow::bail!("name a token id, or --subject USER for all of theirs"),
            };
            for id in ids {
                super::send_checked(
                    &client,
                    reqwest::Method::DELETE,
                    &format!("{PATH}/{id}"),
                    None,
                    &format!("token {id}"),
                )
                .await?;
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}
