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
    /// Run the server only, without the local agent.
    #[arg(long)]
    no_agent: bool,
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
    // As `infraos server`: the connection cap stays below the open-files limit.
    config.open_files_limit = infraos_sys::process::raise_nofile_limit().ok();
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
        "InfraOS dev server {} at {url}\n  data dir: {}\n  {config_note}\n\nTry, in another terminal:\n  infraos apply -f examples/walkthrough/\n  infraos get nodes\n  infraos apply -f examples/workloads/hello.yaml\n  infraos logs hello -n ml-team -f\n  infraos get claims -n ml-team\n  infraos describe claim train-h100 -n ml-team\n  infraos audit verify\n\nCtrl-C stops the server; the data dir keeps its state.",
        if fresh {
            "initialised and running"
        } else {
            "running"
        },
        data_dir.display()
    );
    let (stop_agent, agent_stopped) = tokio::sync::watch::channel(false);
    let agent = if args.no_agent {
        None
    } else {
        Some(start_agent(&url, &data_dir, agent_stopped).await?)
    };
    super::server::wait_for_signal().await;
    let _ = stop_agent.send(true);
    if let Some(agent) = agent {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), agent).await;
    }
    server.shutdown().await;
    Ok(())
}

/// A local agent joined to this server with a one-use token, its state in `D/agent`.
async fn start_agent(
    url: &str,
    data_dir: &Path,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ca = std::fs::read(data_dir.join("ca.crt"))?;
    let token = std::fs::read_to_string(data_dir.join("admin.token"))?;
    let client = infraos_client::Client::new(&infraos_client::ClientConfig {
        server: url.to_string(),
        ca_pem: Some(ca.clone()),
        token: Some(token.trim().to_string()),
        identity: None,
    })?;
    let name = super::agent::hostname();
    let mut config =
        infraos_agent::AgentConfig::new(url.to_string(), data_dir.join("agent"), name.clone());
    config.ca_pem = Some(ca);
    // The server's data dir (CA key, admin token, store) shares this machine with workloads.
    config.extra_hidden_paths = vec![data_dir.to_path_buf()];
    if infraos_agent::identity::load(&config.identity_dir(), &name, infraos_agent::now())?.is_none()
    {
        let created: serde_json::Value = client
            .send_json(
                reqwest::Method::POST,
                "/apis/infraos.io/v1/jointokens",
                &serde_json::json!({"ttl": "10m", "uses": 1, "description": "infraos dev local agent"}),
            )
            .await
            .context("cannot mint a join token for the local agent")?;
        config.join_token = created["token"].as_str().map(str::to_string);
    }
    if !nix_is_root() {
        println!(
            "  note: not running as root, so the local agent cannot create cgroups and namespaces; workloads will fail to start"
        );
    }
    println!(
        "  local agent: node {name} (state in {})",
        config.data_dir.display()
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = infraos_agent::run(config, stopped).await {
            eprintln!("local agent stopped: {e}");
        }
    }))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
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
