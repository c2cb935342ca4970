//! `infraos explain claim NAME [--revision N] [-o json]`: replays the scheduler's decision for
//! a claim on the cluster as it was at the recorded snapshot revision, and says whether the
//! replay reaches the same result.

use std::path::Path;

use clap::Args;
use serde_json::Value;

use crate::NamespaceArg;
use crate::output;

#[derive(Args)]
pub struct ExplainArgs {
    /// Only `claim` (decisions are made for claims).
    kind: String,
    name: String,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Decide afresh on the store as it was at this revision instead of replaying the
    /// recorded decision.
    #[arg(long)]
    revision: Option<u64>,
    /// `text` (default) or `json`.
    #[arg(short, long, default_value = "text")]
    output: String,
}

pub async fn run(config: Option<&Path>, args: ExplainArgs) -> anyhow::Result<()> {
    let info = super::kind(&args.kind)?;
    if info.kind != "Claim" {
        anyhow::bail!(
            "explain: only claims have scheduling decisions to replay (got {:?})",
            args.kind
        );
    }
    if !matches!(args.output.as_str(), "text" | "json") {
        anyhow::bail!("--output: must be text or json");
    }
    let ns = super::require_namespace(info, &args.ns.namespace)?
        .ok_or_else(|| anyhow::anyhow!("claims are namespaced: pass -n PROJECT"))?;
    let client = super::client(config)?;
    let mut path = format!(
        "/apis/infraos.io/v1/namespaces/{ns}/claims/{}/explain",
        args.name
    );
    if let Some(r) = args.revision {
        path.push_str(&format!("?revision={r}"));
    }
    let replay = client
        .get_path(&path)
        .await
        .map_err(|e| anyhow::anyhow!("claim {:?}: {e}", args.name))?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&replay)?);
        return Ok(());
    }
    print!("{}", render(&replay));
    Ok(())
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// The replay as text: what was recorded, what the replay decided, and whether they agree.
pub fn render(replay: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!("Claim:      {}\n", s(replay, "/claim")));
    out.push_str(&format!(
        "Revision:   {} (the store as the scheduler saw it)\n",
        replay
            .get("revision")
            .map(Value::to_string)
            .unwrap_or_default()
    ));
    let assumed: Vec<&str> = replay
        .get("assumed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let elsewhere = replay
        .get("assumedElsewhere")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if !assumed.is_empty() || elsewhere > 0 {
        let mut named = assumed.join(", ");
        if elsewhere > 0 {
            if !named.is_empty() {
                named.push_str(", and ");
            }
            named.push_str(&format!("{elsewhere} of other projects"));
        }
        out.push_str(&format!(
            "Assumed:    {} allocation(s) the scheduler had just committed: {named}\n",
            assumed.len() as u64 + elsewhere,
        ));
    }
    if let Some(recorded) = replay.get("recorded") {
        out.push_str("Recorded:\n");
        out.push_str(&decision(recorded));
    }
    out.push_str("Replayed:\n");
    out.push_str(&decision(replay.get("replayed").unwrap_or(&Value::Null)));
    match replay.get("matches").and_then(Value::as_bool) {
        Some(true) => out.push_str("Result:     the replay reaches the recorded decision\n"),
        Some(false) => out.push_str(&format!(
            "Result:     the replay DIFFERS from the recorded decision: {}\n",
            s(replay, "/note")
        )),
        None => {}
    }
    out
}

fn decision(d: &Value) -> String {
    match s(d, "/outcome") {
        "placed" => {
            let node = Some(s(d, "/node"))
                .filter(|n| !n.is_empty())
                .unwrap_or("<pool>");
            let score = d.get("score").unwrap_or(&Value::Null);
            let mut text = format!(
                "  Node:       {node}\n  Score:      {} ({}) among {} feasible candidate(s)\n",
                score.get("total").map(Value::to_string).unwrap_or_default(),
                output::key_values(score.get("plugins"), ", ", "<none>"),
                score
                    .get("feasible")
                    .map(Value::to_string)
                    .unwrap_or_default()
            );
            match d.get("runnerUp") {
                Some(r) => text.push_str(&format!(
                    "  Runner-up:  {} with {}\n",
                    Some(s(r, "/node"))
                        .filter(|n| !n.is_empty())
                        .unwrap_or("<pool>"),
                    r.get("total").map(Value::to_string).unwrap_or_default()
                )),
                None => text.push_str("  Runner-up:  none (the only feasible candidate)\n"),
            }
            text
        }
        _ => {
            let mut text = format!("  Pending:    {}: {}\n", s(d, "/reason"), s(d, "/message"));
            if let Some(reasons) = d
                .pointer("/unschedulable/reasons")
                .and_then(Value::as_object)
            {
                let mut reasons: Vec<(&String, u64)> = reasons
                    .iter()
                    .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                    .collect();
                reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
                for (reason, count) in reasons {
                    text.push_str(&format!("    {count:>6}  {reason}\n"));
                }
            }
            text
        }
    }
}
