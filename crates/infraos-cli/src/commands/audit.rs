//! `infraos audit verify`: walks the whole audit chain from the server and checks every link.

use std::path::Path;

use clap::{Args, Subcommand};
use infraos_api::audit::ChainVerifier;

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check hashes and links of every record; names the first bad record.
    Verify,
}

pub async fn run(config: Option<&Path>, args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify => verify(config).await,
    }
}

async fn verify(config: Option<&Path>) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let mut verifier = ChainVerifier::new();
    let mut from = 1;
    let mut head = None;
    loop {
        let page = client.audit_records(from, 5000).await?;
        head.get_or_insert((page.metadata.head_seq, page.metadata.head_hash.clone()));
        for record in &page.items {
            verifier
                .push(record)
                .map_err(|e| anyhow::anyhow!("audit chain broken at {e}"))?;
        }
        match page.metadata.next {
            Some(n) if !page.items.is_empty() => from = n,
            _ => break,
        }
    }
    let (head_seq, head_hash) = head.unwrap_or_default();
    if verifier.checked() < head_seq {
        anyhow::bail!(
            "audit chain broken at audit record {}: the chain ends after {} records but the head says {head_seq} (records were removed)",
            verifier.checked() + 1,
            verifier.checked()
        );
    }
    if verifier.checked() == head_seq && verifier.checked() > 0 && verifier.head_hash() != head_hash
    {
        anyhow::bail!(
            "audit chain broken at audit record {head_seq}: the last record does not match the stored head"
        );
    }
    println!(
        "audit chain verified: {} records, head {}",
        verifier.checked(),
        verifier.head_hash()
    );
    Ok(())
}
