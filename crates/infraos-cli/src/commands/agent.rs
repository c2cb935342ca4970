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
    /// A path no workload may see, besides the agent's data dir, /etc/infraos and
    /// /var/lib/infraos (repeatable): a co-located server's data dir, keys kept elsewhere.
    #[arg(long = "hide", value_name = "PATH")]
    pub hide: Vec<PathBuf>,
    /// The unprivileged uids workloads run as, one per allocation: BASE:COUNT.
    #[arg(long, default_value = "1000000000:65536", value_name = "BASE:COUNT")]
    pub workload_uids: String,
}

/// `BASE:COUNT`, with the whole range inside 1..2^32-1 and clear of root.
fn parse_uid_range(text: &str) -> anyhow::Result<(u32, u32)> {
    let (base, count) = text
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--workload-uids {text:?}: expected BASE:COUNT"))?;
    let base: u32 = base
        .parse()
        .map_err(|_| anyhow::anyhow!("--workload-uids {text:?}: BASE is not a uid"))?;
    let count: u32 = count
        .parse()
        .map_err(|_| anyhow::anyhow!("--workload-uids {text:?}: COUNT is not a number"))?;
    if base == 0 || count == 0 || base.checked_add(count).is_none_or(|end| end == u32::MAX) {
        anyhow::bail!(
            "--workload-uids {text:?}: the range must start above 0, hold at least one uid and \
             end below 4294967295"
        );
    }
    Ok((base, count))
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
    config.extra_hidden_paths = args.hide;
    for system in ["/etc/infraos", "/var/lib/infraos"] {
        config.extra_hidden_paths.push(PathBuf::from(system));
    }
    (config.workload_uid_base, config.workload_uid_count) = parse_uid_range(&args.workload_uids)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_are_checked() {
        assert_eq!(
            parse_uid_range("1000000000:65536").unwrap(),
            (1_000_000_000, 65_536)
        );
        for bad in ["0:10", "5:0", "x:1", "4294967290:10", "100"] {
            assert!(parse_uid_range(bad).is_err(), "{bad}");
        }
    }
}
