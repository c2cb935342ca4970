//! `infraos renew CLAIM [--duration D]`, `infraos release CLAIM`, and for claims that wait
//! for approval `infraos approve CLAIM [--comment C]` and `infraos refuse CLAIM --reason R`.

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

#[derive(Args)]
pub struct ApproveArgs {
    claim: String,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Kept with the approval and in the audit trail.
    #[arg(long, default_value = "")]
    comment: String,
}

#[derive(Args)]
pub struct RefuseArgs {
    claim: String,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Why: required, shown on the claim and kept in the audit trail.
    #[arg(long)]
    reason: String,
}

pub async fn approve(config: Option<&Path>, args: ApproveArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let ns = namespace(&args.ns)?;
    let body = serde_json::json!({"comment": args.comment});
    let claim = client
        .claim_action(ns, &args.claim, "approve", Some(&body))
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.claim))?;
    println!(
        "claim/{} approved: {} ({})",
        args.claim,
        claim
            .pointer("/status/message")
            .and_then(|v| v.as_str())
            .unwrap_or_default(),
        claim
            .pointer("/status/phase")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    );
    Ok(())
}

pub async fn refuse(config: Option<&Path>, args: RefuseArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let ns = namespace(&args.ns)?;
    let body = serde_json::json!({"reason": args.reason});
    client
        .claim_action(ns, &args.claim, "refuse", Some(&body))
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.claim))?;
    println!("claim/{} refused", args.claim);
    Ok(())
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
