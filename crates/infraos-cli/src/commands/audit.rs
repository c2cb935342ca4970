//! `infraos audit verify|export|public-key`: checks the audit chain's hashes and the server's
//! signatures, online or offline from an export, and names the first bad record.
//!
//! An export is JSON Lines: one `AuditRecord` per line, oldest first, then one `AuditHead`
//! line the server signed when the export began. `verify --from FILE --public-key KEY` needs
//! nothing else: no server, no token.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use infraos_api::audit::{AuditHead, AuditRecord, HEAD_KIND, SignedChainVerifier, Verified};
use infraos_api::signature::PublicKey;
use infraos_client::Client;

const PAGE: usize = 5000;
const HEAD_PATH: &str = "/apis/infraos.io/v1/auditrecords/head";
const KEY_PATH: &str = "/apis/infraos.io/v1/signingkey";

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check hashes, links, checkpoint signatures and the signed head; names the first bad
    /// record. Online (from the server) unless --from is given.
    Verify {
        /// An export file (`infraos audit export`) to verify offline; needs a pinned key.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write the chain as JSON Lines, ending with a head the server signs now.
    Export {
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the server's public signing key (ALGORITHM:BASE64), to pin for verification.
    PublicKey,
}

#[derive(Args)]
struct KeyArgs {
    /// The server's public key, ALGORITHM:BASE64 (as in its data dir's signing.pub).
    #[arg(long, conflicts_with = "public_key_file")]
    public_key: Option<String>,
    /// A file holding the public key (e.g. a copy of signing.pub).
    #[arg(long)]
    public_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The pinned key, if one was given.
    fn pinned(&self) -> anyhow::Result<Option<PublicKey>> {
        if let Some(text) = &self.public_key {
            return Ok(Some(
                text.parse().context("--public-key is not a public key")?,
            ));
        }
        if let Some(path) = &self.public_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--public-key-file {}", path.display()))?;
            return Ok(Some(text.parse().with_context(|| {
                format!("--public-key-file {}", path.display())
            })?));
        }
        Ok(None)
    }
}

pub async fn run(config: Option<&Path>, args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify {
            from: Some(file),
            key,
        } => {
            let key = key.pinned()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--from verifies offline and needs the server's public key: pass --public-key KEY or --public-key-file FILE"
                )
            })?;
            let verified = verify_file(&file, key.clone())?;
            report(&verified, &key, "pinned");
            Ok(())
        }
        AuditCommand::Verify { from: None, key } => {
            let client = super::client(config)?;
            let (key, whence) = match key.pinned()? {
                Some(k) => (k, "pinned"),
                None => (server_key(&client).await?, "from the server, not pinned"),
            };
            let verified = verify_online(&client, key.clone()).await?;
            report(&verified, &key, whence);
            Ok(())
        }
        AuditCommand::Export { output } => export(config, output.as_deref()).await,
        AuditCommand::PublicKey => {
            let client = super::client(config)?;
            println!("{}", server_key(&client).await?);
            Ok(())
        }
    }
}

async fn server_key(client: &Client) -> anyhow::Result<PublicKey> {
    let answer = client.get_path(KEY_PATH).await?;
    answer["publicKey"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .context("the server's signing key")
}

async fn signed_head(client: &Client) -> anyhow::Result<AuditHead> {
    let value = client.get_path(HEAD_PATH).await?;
    serde_json::from_value(value).context("the server's signed head")
}

/// Calls `each` on every record up to and including the head's, oldest first.
async fn for_each_record(
    client: &Client,
    head: &AuditHead,
    mut each: impl FnMut(&AuditRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut from = 1;
    while from <= head.seq {
        let page = client.audit_records(from, PAGE).await?;
        for record in page.items.iter().take_while(|r| r.seq <= head.seq) {
            each(record)?;
        }
        match (page.metadata.next, page.items.last()) {
            (Some(n), Some(last)) if last.seq < head.seq => from = n,
            _ => break,
        }
    }
    Ok(())
}

fn broken(e: infraos_api::audit::ChainError) -> anyhow::Error {
    anyhow::anyhow!("audit chain broken at {e}")
}

async fn verify_online(client: &Client, key: PublicKey) -> anyhow::Result<Verified> {
    let head = signed_head(client).await?;
    let mut verifier = SignedChainVerifier::new(key);
    for_each_record(client, &head, |r| verifier.push(r).map_err(broken)).await?;
    verifier.finish(Some(&head)).map_err(broken)
}

/// Verifies an export: record lines, then exactly one head line, last.
fn verify_file(path: &Path, key: PublicKey) -> anyhow::Result<Verified> {
    let file = std::fs::File::open(path).with_context(|| format!("--from {}", path.display()))?;
    let mut verifier = SignedChainVerifier::new(key);
    let mut head: Option<(usize, AuditHead)> = None;
    let mut last = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}: line {n}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        if let Some((at, h)) = &head {
            anyhow::bail!(
                "audit chain broken after audit record {}: line {n} follows the signed head on line {at}, which must be last",
                h.seq
            );
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {n} is not JSON", path.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some(HEAD_KIND) {
            let h: AuditHead = serde_json::from_value(value)
                .with_context(|| format!("{}: line {n}: the signed head", path.display()))?;
            head = Some((n, h));
            continue;
        }
        let record: AuditRecord = serde_json::from_value(value)
            .with_context(|| format!("{}: line {n} is not an audit record", path.display()))?;
        verifier.push(&record).map_err(broken)?;
        last = record.seq;
    }
    let Some((_, head)) = head else {
        anyhow::bail!(
            "audit chain broken after audit record {last}: the export has no signed head line (it was truncated, or is not from `infraos audit export`)"
        );
    };
    verifier.finish(Some(&head)).map_err(broken)
}

fn report(v: &Verified, key: &PublicKey, whence: &str) {
    println!(
        "audit chain verified: {} records, head {}",
        v.records, v.head_hash
    );
    println!(
        "signed by {} key {} ({whence}): {} checkpoints, the last covering records 1-{}",
        key.algorithm(),
        key.key_id(),
        v.checkpoints,
        v.signed_through
    );
    if v.unsigned_tail > 0 {
        let by = v
            .head_time
            .map(|t| format!("vouched for only by the head signed at {t}"))
            .unwrap_or_else(|| "not signed".into());
        println!(
            "unsigned tail of {} records after the last checkpoint ({by})",
            v.unsigned_tail
        );
    }
}

async fn export(config: Option<&Path>, output: Option<&Path>) -> anyhow::Result<()> {
    let client = super::client(config)?;
    // The head first: the records exported are exactly the ones it vouches for.
    let head = signed_head(&client).await?;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("-o {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut count = 0u64;
    for_each_record(&client, &head, |r| {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
        count += 1;
        Ok(())
    })
    .await?;
    serde_json::to_writer(&mut out, &head)?;
    out.write_all(b"\n")?;
    out.flush()?;
    if let Some(path) = output {
        println!(
            "exported {count} audit records and the head signed at {} to {}",
            head.time,
            path.display()
        );
    }
    Ok(())
}
