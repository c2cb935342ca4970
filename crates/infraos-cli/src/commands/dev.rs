//! `infraos dev`: the zero-config way to try InfraOS on one machine. Initialises a data dir,
//! writes the client config so the next `infraos get` just works, and runs the server on the
//! embedded store until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use infraos_server::{Server, ServerConfig, SystemClock};

#[derive(Args)]
pub struct DevArgs {
    /// Data dir (default ~/.local/share/infraos/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = infraos_server::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Do not write ~/.config/infraos/config.yaml.
    #[arg(long)]
    no_client_config: bool,
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("infraos").join("dev")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let fresh = !infraos_server::init::is_initialised(&data_dir);
    infraos_server::init::init_data_dir(&data_dir, &[])
        .await
        .with_context(|| format!("cannot initialise {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let mut config = ServerConfig::load(&data_dir)?;
    config.listen = args.listen;
    let server = Server::start(config, Arc::new(SystemClock)).await?;
    let url = format!("https://{}", server.local_addr());
    let config_note = if args.no_client_config {
        format!(
            "export INFRAOS_SERVER={url} INFRAOS_CA={}/ca.crt INFRAOS_TOKEN=$(cat {}/admin.token)",
            data_dir.display(),
            data_dir.display()
        )
    } else {
        let path = write_client_config(&url, &data_dir)?;
        format!("client config written to {}", path.display())
    };
    println!(
        "InfraOS dev server {} at {url}\n  data dir: {}\n  {config_note}\n\nTry, in another terminal:\n  infraos apply -f examples/walkthrough/\n  infraos get claims -n ml-team\n  infraos describe claim train-h100 -n ml-team\n  infraos audit verify\n\nCtrl-C stops the server; the data dir keeps its state.",
        if fresh {
            "initialised and running"
        } else {
            "running"
        },
        data_dir.display()
    );
    super::server::wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

/// Writes the client config pointing at this dev server; an existing config for another server
/// is kept as `config.yaml.bak`.
fn write_client_config(url: &str, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = infraos_client::config::default_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let file = infraos_client::config::ConfigFile {
        server: url.to_string(),
        ca: data_dir.join("ca.crt"),
        token: None,
        token_file: Some(data_dir.join("admin.token")),
    };
    let text = format!(
        "# written by `infraos dev`\n{}",
        serde_norway::to_string(&file)?
    );
    if let Ok(existing) = std::fs::read_to_string(&path)
        && existing != text
        && !existing.starts_with("# written by `infraos dev`")
    {
        std::fs::copy(&path, path.with_extension("yaml.bak"))
            .with_context(|| format!("cannot back up {}", path.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
