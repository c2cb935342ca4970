//! `infraos delete KIND NAME... [-n NS]` or `infraos delete -f FILE`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::NamespaceArg;

#[derive(Args)]
pub struct DeleteArgs {
    kind: Option<String>,
    names: Vec<String>,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Delete the objects named in these manifests instead.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
}

pub async fn run(config: Option<&Path>, args: DeleteArgs) -> anyhow::Result<()> {
    let client = super::client(config)?;
    let mut targets = Vec::new();
    if !args.files.is_empty() {
        // Reverse file order: what depends on something goes before it.
        for (source, object) in super::apply::read_manifests(&args.files)?.into_iter().rev() {
            let (info, ns, name) =
                infraos_client::target_of(&object).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            targets.push((info, ns, name));
        }
    } else {
        let kind = args
            .kind
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("give KIND NAME, or -f FILE"))?;
        let info = super::kind(kind)?;
        if args.names.is_empty() {
            anyhow::bail!("give the name of the {} to delete", info.singular);
        }
        let ns = super::require_namespace(info, &args.ns.namespace)?.map(str::to_string);
        for name in args.names {
            targets.push((info, ns.clone(), name));
        }
    }
    for (info, ns, name) in targets {
        match client.delete(info, ns.as_deref(), &name).await {
            Ok(v)
                if v.pointer("/metadata/deletionTimestamp").is_some()
                    && v.pointer("/metadata/finalizers").is_some() =>
            {
                println!(
                    "{}/{name} deleting (releasing what it holds)",
                    info.singular
                )
            }
            Ok(_) => println!("{}/{name} deleted", info.singular),
            Err(e) if e.is_not_found() && !args.files.is_empty() => {
                println!("{}/{name} not found", info.singular)
            }
            Err(e) => anyhow::bail!("{} {name:?}: {e}", info.singular),
        }
    }
    Ok(())
}
