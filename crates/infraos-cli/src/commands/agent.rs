//! `infraos agent`: the node agent. The first start joins with a token; later starts reuse the
//! identity in the data dir.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use infraos_agent::AgentConfig;

#[derive(Args)]
pub struct AgentArgs {
    /// The control plane, e.g. https://10.0.0.1:7443.
    #[arg(long, env = "INFRAOS_SERVER")]
    pub server: String,
    /// A join token from `infraos join-token create` (needed for the first start only).
    #[arg(long, env = "INFRAOS_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// The cluster CA certificate, to trust the server on the first join.
    #[arg(long, env = "INFRAOS_CA")]
    pub ca: Option<PathBuf>,
    #[arg(long, default_value = "/var/lib/infraos/agent")]
    pub data_dir: PathBuf,
    /// The node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Node labels, `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Where the agent serves logs to the control plane.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The address the server should dial, if not the listen address.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// CPU kept for the system, e.g. 500m.
    #[arg(long, default_value = "0")]
    pub reserve_cpu: String,
    /// Memory kept for the system, e.g. 512Mi.
    #[arg(long, default_value = "0")]
    pub reserve_memory: String,
    /// Drivers this node agrees to run (comma-separated).
    #[arg(long, default_value = "process")]
    pub drivers: String,
}

pub fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--labels: {pair:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    infraos_api::labels::validate_labels(&labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    Ok(labels)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

pub fn config_from(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    let name = args.name.unwrap_or_else(hostname);
    if let Some(problem) = infraos_api::names::object_name_problem(&name) {
        anyhow::bail!("--name {name:?}: {problem}");
    }
    let mut config = AgentConfig::new(args.server, args.data_dir, name);
    config.labels = parse_labels(&args.labels)?;
    config.join_token = args.join_token;
    config.ca_pem = match args.ca {
        Some(path) => {
            Some(std::fs::read(&path).with_context(|| format!("--ca {}", path.display()))?)
        }
        None => None,
    };
    config.listen = args.listen;
    config.advertise = args.advertise;
    config.reserve_cpu = args
        .reserve_cpu
        .parse()
        .map_err(|e| anyhow::anyhow!("--reserve-cpu: {e}"))?;
    config.reserve_memory = args
        .reserve_memory
        .parse()
        .map_err(|e| anyhow::anyhow!("--reserve-memory: {e}"))?;
    config.drivers = args
        .drivers
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    Ok(config)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = config_from(args)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(infraos_agent::run(config, stopped));
    tokio::select! {
        result = agent => result.context("the agent task failed")??,
        _ = super::server::wait_for_signal() => {
            let _ = stop.send(true);
        }
    }
    Ok(())
}
