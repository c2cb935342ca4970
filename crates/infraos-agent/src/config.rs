//! The agent's configuration, from `infraos agent` flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use infraos_api::Quantity;

/// The first uid given to workloads (systemd's DynamicUser and Kubernetes' user namespaces
/// keep below 2^31 too; this range is clear of both).
pub const DEFAULT_WORKLOAD_UID_BASE: u32 = 1_000_000_000;
pub const DEFAULT_WORKLOAD_UID_COUNT: u32 = 65_536;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub server: String,
    pub data_dir: PathBuf,
    /// The node name; defaults to the host name.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Needed for the first join only; later the agent's own identity is used.
    pub join_token: Option<String>,
    /// The CA that signed the server's certificate (PEM), for the first join.
    pub ca_pem: Option<Vec<u8>>,
    /// Where the agent serves logs to the control plane.
    pub listen: SocketAddr,
    /// What the agent tells the server to dial (defaults to the bound listen address).
    pub advertise: Option<SocketAddr>,
    /// Taken out of the node's capacity for the system itself.
    pub reserve_cpu: Quantity,
    pub reserve_memory: Quantity,
    /// Drivers this agent agrees to run, whatever the server asks.
    pub drivers: Vec<String>,
    /// How often inventory is collected again.
    pub inventory_interval: Duration,
    /// The program that runs `__shim` (the `infraos` binary itself).
    pub shim_program: PathBuf,
    /// Largest size of one log file before it is rotated.
    pub log_max_bytes: u64,
    /// Paths hidden from every workload besides the agent's own data dir (a co-located
    /// server's data dir, keys kept elsewhere).
    pub extra_hidden_paths: Vec<PathBuf>,
    /// The range of unprivileged uids workloads get, one per allocation: `base..base+count`.
    /// Far above any real user's, so a run owns nothing on the host.
    pub workload_uid_base: u32,
    pub workload_uid_count: u32,
}

impl AgentConfig {
    pub fn new(server: String, data_dir: PathBuf, name: String) -> AgentConfig {
        AgentConfig {
            server,
            data_dir,
            name,
            labels: BTreeMap::new(),
            join_token: None,
            ca_pem: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            reserve_cpu: Quantity::from_milli(0),
            reserve_memory: Quantity::from_milli(0),
            drivers: vec!["process".into()],
            inventory_interval: Duration::from_secs(60),
            shim_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("infraos")),
            log_max_bytes: 10 * 1024 * 1024,
            extra_hidden_paths: Vec::new(),
            workload_uid_base: DEFAULT_WORKLOAD_UID_BASE,
            workload_uid_count: DEFAULT_WORKLOAD_UID_COUNT,
        }
    }

    /// Everything workloads must not see: this agent's data dir (its key, certificates,
    /// workload state) and the extra paths.
    pub fn hidden_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![
            self.data_dir
                .canonicalize()
                .unwrap_or_else(|_| self.data_dir.clone()),
        ];
        for p in &self.extra_hidden_paths {
            paths.push(p.canonicalize().unwrap_or_else(|_| p.clone()));
        }
        paths.sort();
        paths.dedup();
        paths
    }

    pub fn identity_dir(&self) -> PathBuf {
        self.data_dir.join("identity")
    }

    pub fn workloads_dir(&self) -> PathBuf {
        self.data_dir.join("workloads")
    }
}
