//! `infraos logs CLAIM [-f] [--stderr] [--tail N]`: a claim's workload output, streamed from
//! its node's agent through the server.

use std::io::Write;
use std::path::Path;

use clap::Args;
use futures::StreamExt;

use crate::NamespaceArg;

#[derive(Args)]
pub struct LogsArgs {
    pub claim: String,
    #[command(flatten)]
    pub ns: NamespaceArg,
    /// Keep streaming until the workload ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Show standard error instead of standard output.
    #[arg(long)]
    pub stderr: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
}

pub async fn run(config: Option<&Path>, args: LogsArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let ns = args
        .ns
        .namespace
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("claims are namespaced: pass -n PROJECT"))?;
    let mut path = format!(
        "/apis/infraos.io/v1/namespaces/{ns}/claims/{}/log?follow={}&stream={}",
        args.claim,
        args.follow,
        if args.stderr { "stderr" } else { "stdout" }
    );
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    let mut stream = client
        .get_stream(&path)
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.claim))?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("the log stream broke: {e}"))?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}
