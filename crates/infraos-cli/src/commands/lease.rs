//! `infraos renew CLAIM [--duration D]` and `infraos release CLAIM`.

use std::path::Path;

use clap::Args;

use crate::NamespaceArg;

#[derive(Args)]
pub struct RenewArgs {
    claim: String,
    #[command(flatten)]
    ns: NamespaceArg,
    /// New lease length from now (default: the claim's lease duration).
    #[arg(long)]
    duration: Option<infraos_api::Duration>,
}

#[derive(Args)]
pub struct ReleaseArgs {
    claim: String,
    #[command(flatten)]
    ns: NamespaceArg,
}

fn namespace(ns: &NamespaceArg) -> anyhow::Result<&str> {
    ns.namespace
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("claims are namespaced: pass -n PROJECT"))
}

pub async fn renew(config: Option<&Path>, args: RenewArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let ns = namespace(&args.ns)?;
    let body = args
        .duration
        .map(|d| serde_json::json!({"duration": d.to_string()}));
    let claim = client
        .claim_action(ns, &args.claim, "renew", body.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.claim))?;
    let expires = claim
        .pointer("/status/expireTime")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    println!("claim/{} renewed until {expires}", args.claim);
    Ok(())
}

pub async fn release(config: Option<&Path>, args: ReleaseArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let ns = namespace(&args.ns)?;
    client
        .claim_action(ns, &args.claim, "release", None)
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.claim))?;
    println!("claim/{} released", args.claim);
    Ok(())
}
