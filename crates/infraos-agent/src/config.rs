//! The agent's configuration, from `infraos agent` flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use infraos_api::Quantity;

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
        }
    }

    pub fn identity_dir(&self) -> PathBuf {
        self.data_dir.join("identity")
    }

    pub fn workloads_dir(&self) -> PathBuf {
        self.data_dir.join("workloads")
    }
}
