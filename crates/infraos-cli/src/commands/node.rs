//! `infraos node grant|revoke NODE TIER…`: change the capability tiers a node holds after
//! it joined. The agent learns the new grant with its next heartbeat; the scheduler at once.
//! `infraos node revoke NODE` (no tiers) revokes the node itself: its certificate and joins
//! are refused until `infraos node reinstate NODE`.

use std::path::Path;

use clap::{Args, Subcommand};
use infraos_api::Kind as _;
use infraos_api::kinds::{NodeSpec, Tier};

#[derive(Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Grant tiers (inventory, execute, network, storage) to a node.
    Grant { node: String, tiers: Vec<String> },
    /// Revoke tiers from a node: nothing new needing them is placed or started there; what
    /// runs keeps running until its allocation ends. Without tiers, revoke the node itself:
    /// its certificate is refused from now on, it is cordoned, and its allocations are
    /// handled as lost once their leases end.
    Revoke {
        node: String,
        tiers: Vec<String>,
        /// Why (kept in the revocation and the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a node's revocation; its agent may then join again.
    Reinstate { node: String },
}

fn parse_tiers(tiers: &[String]) -> anyhow::Result<Vec<Tier>> {
    if tiers.is_empty() {
        anyhow::bail!("name at least one tier (inventory, execute, network, storage)");
    }
    tiers
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            Tier::parse(t).ok_or_else(|| {
                anyhow::anyhow!("{t:?} is not a tier (inventory, execute, network, storage)")
            })
        })
        .collect()
}

/// The node's tiers after the change, sorted and without duplicates.
pub fn changed(current: &[Tier], change: &[Tier], grant: bool) -> Vec<Tier> {
    let mut tiers: Vec<Tier> = if grant {
        current.iter().chain(change).copied().collect()
    } else {
        current
            .iter()
            .copied()
            .filter(|t| !change.contains(t))
            .collect()
    };
    tiers.sort();
    tiers.dedup();
    tiers
}

pub async fn run(config: Option<&Path>, args: NodeArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let (node, tiers, grant) = match args.command {
        NodeCommand::Grant { node, tiers } => (node, tiers, true),
        NodeCommand::Revoke {
            node,
            tiers,
            reason,
        } if tiers.is_empty() => return revoke_node(&client, &node, &reason).await,
        NodeCommand::Revoke { node, tiers, .. } => (node, tiers, false),
        NodeCommand::Reinstate { node } => return reinstate_node(&client, &node).await,
    };
    let change = parse_tiers(&tiers)?;
    // Read, change, write with the read's resourceVersion: a concurrent writer makes the
    // write fail with a conflict, and the change is made again on the fresh object.
    for _ in 0..5 {
        let current = client
            .get(NodeSpec::INFO, None, &node)
            .await
            .map_err(|e| anyhow::anyhow!("node {node:?}: {e}"))?;
        let current_tiers: Vec<Tier> =
            serde_json::from_value(current["spec"]["tiers"].clone()).unwrap_or_default();
        let next = changed(&current_tiers, &change, grant);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": {"tiers": next},
        });
        match client
            .merge_patch(NodeSpec::INFO, None, &node, &patch)
            .await
        {
            Ok(_) => {
                let names: Vec<&str> = next.iter().map(|t| t.as_str()).collect();
                println!("node/{node} tiers: {}", names.join(","));
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => anyhow::bail!("node {node:?}: {e}"),
        }
    }
    anyhow::bail!("node {node:?}: changed by others five times in a row; try again")
}

fn revocation_path(node: &str) -> String {
    format!("/apis/infraos.io/v1/nodes/{node}/revocation")
}

async fn revoke_node(
    client: &infraos_client::Client,
    node: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"reason": reason});
    super::send_checked(
        client,
        reqwest::Method::POST,
        &revocation_path(node),
        Some(&body),
        &format!("node {node:?}"),
    )
    .await?;
    println!(
        "node/{node} revoked: its certificate and joins are refused, it is cordoned, and its \
         allocations are handled as lost once their leases end"
    );
    Ok(())
}

async fn reinstate_node(client: &infraos_client::Client, node: &str) -> anyhow::Result<()> {
    super::send_checked(
        client,
        reqwest::Method::DELETE,
        &revocation_path(node),
        None,
        &format!("node {node:?}"),
    )
    .await?;
    println!(
        "node/{node} reinstated: its agent may join again (and it is uncordoned, unless it was cordoned before)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_and_revoke_keep_the_list_sorted_and_unique() {
        let current = [Tier::Execute, Tier::Inventory];
        assert_eq!(
            changed(&current, &[Tier::Network, Tier::Execute], true),
            vec![Tier::Inventory, Tier::Execute, Tier::Network]
        );
        assert_eq!(
            changed(&current, &[Tier::Execute, Tier::Storage], false),
            vec![Tier::Inventory]
        );
    }

    #[test]
    fn bad_tiers_are_named() {
        let e = parse_tiers(&["execute,gpu".into()]).unwrap_err();
        assert!(e.to_string().contains("\"gpu\" is not a tier"), "{e}");
        assert!(parse_tiers(&[]).is_err());
    }
}
