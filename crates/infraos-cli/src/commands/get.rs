//! `infraos get KIND [NAME] [-n NS] [-l SELECTOR] [-o FORMAT] [-w]`.

use std::path::Path;

use clap::Args;
use futures::StreamExt;

use crate::NamespaceArg;
use crate::output::{self, Format};

#[derive(Args)]
pub struct GetArgs {
    kind: String,
    name: Option<String>,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Label selector, e.g. `zone in (a,b),!legacy`.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    output: Format,
    /// After listing, watch for changes.
    #[arg(short = 'w', long = "watch")]
    watch: bool,
}

pub async fn run(config: Option<&Path>, args: GetArgs) -> anyhow::Result<()> {
    let info = super::kind(&args.kind)?;
    if let Some(sel) = &args.selector {
        sel.parse::<infraos_api::LabelSelector>()
            .map_err(|e| anyhow::anyhow!("--selector: {e}"))?;
    }
    let client = super::client(config)?;
    let ns = args.ns.namespace.as_deref().filter(|_| info.namespaced);
    let all_namespaces = info.namespaced && ns.is_none();
    let wide = args.output == Format::Wide;
    if let Some(name) = &args.name {
        let ns = super::require_namespace(info, &args.ns.namespace)?;
        let object = client
            .get(info, ns, name)
            .await
            .map_err(|e| anyhow::anyhow!("{} {name:?}: {e}", info.singular))?;
        match args.output {
            Format::Table | Format::Wide => {
                output::print_table(info, std::slice::from_ref(&object), wide, false)
            }
            f => output::print_structured(&object, f)?,
        }
        if !args.watch {
            return Ok(());
        }
    }
    let (items, revision) = client.list(info, ns, args.selector.as_deref()).await?;
    let items: Vec<_> = match &args.name {
        Some(n) => items
            .into_iter()
            .filter(|i| i.pointer("/metadata/name").and_then(|v| v.as_str()) == Some(n))
            .collect(),
        None => items,
    };
    if args.name.is_none() {
        match args.output {
            Format::Table | Format::Wide => {
                if items.is_empty() && !args.watch {
                    match ns {
                        Some(ns) => eprintln!("No {} found in project {ns}.", info.plural),
                        None => eprintln!("No {} found.", info.plural),
                    }
                } else {
                    output::print_table(info, &items, wide, all_namespaces);
                }
            }
            f => output::print_structured(
                &serde_json::json!({"apiVersion": infraos_api::API_VERSION, "kind": format!("{}List", info.kind), "items": items}),
                f,
            )?,
        }
    }
    if !args.watch {
        return Ok(());
    }
    let mut events = client
        .watch(info, ns, args.selector.as_deref(), Some(revision))
        .await?;
    while let Some(event) = events.next().await {
        let event = event?;
        match event.type_.as_str() {
            "BOOKMARK" => continue,
            "ERROR" => anyhow::bail!(
                "watch ended: {}",
                event
                    .object
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("error")
            ),
            _ => {}
        }
        if let Some(name) = &args.name
            && event
                .object
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                != Some(name)
        {
            continue;
        }
        match args.output {
            Format::Table | Format::Wide => {
                output::print_row(info, &event.object, wide, all_namespaces, false)
            }
            f => output::print_structured(
                &serde_json::json!({"type": event.type_, "object": event.object}),
                f,
            )?,
        }
    }
    Ok(())
}
