//! `infraos apply -f FILE|DIR|-`: create or update every object in the given manifests, in
//! file order (so a class comes before the resources that use it).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use infraos_client::Applied;

#[derive(Args)]
pub struct ApplyArgs {
    /// Files, directories (their .yaml, .yml and .json files, sorted) or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

/// Reads every document of the given paths, labelled with where it came from.
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            push_docs(&mut out, "stdin", &text)?;
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            files.sort();
            for f in files {
                read_file(&mut out, &f)?;
            }
        } else {
            read_file(&mut out, path)?;
        }
    }
    Ok(out)
}

fn read_file(out: &mut Vec<(String, serde_json::Value)>, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    push_docs(out, &path.display().to_string(), &text)
}

fn push_docs(
    out: &mut Vec<(String, serde_json::Value)>,
    source: &str,
    text: &str,
) -> anyhow::Result<()> {
    let docs =
        infraos_api::object::parse_documents(text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    out.extend(docs.into_iter().map(|d| (source.to_string(), d)));
    Ok(())
}

pub async fn run(config: Option<&Path>, args: ApplyArgs) -> anyhow::Result<()> {
    let manifests = read_manifests(&args.files)?;
    if manifests.is_empty() {
        anyhow::bail!("no objects found in the given files");
    }
    let client = super::client(config)?;
    for (source, object) in manifests {
        let (info, _, name) =
            infraos_client::target_of(&object).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        let (outcome, _) = client
            .apply(&object)
            .await
            .map_err(|e| anyhow::anyhow!("{source}: {} {name:?}: {e}", info.singular))?;
        let verb = match outcome {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        };
        println!("{}/{name} {verb}", info.singular);
    }
    Ok(())
}
