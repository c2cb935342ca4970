//! The InfraOS node agent (DESIGN §5): joins the control plane with a token and then speaks
//! mTLS only, heartbeats, publishes inventory, and runs the workloads of the allocations on
//! its node — and keeps running them, within their leases, when the control plane is away.
#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod reconcile;
pub mod resources;
pub mod runner;
pub mod serve;
pub mod workloads;

pub use config::AgentConfig;
/// The workload shim (`infraos __shim`), which the `infraos` binary runs for the process
/// driver; it lives with the drivers in `infraos-exec`.
pub use infraos_exec::shim;
pub use runner::{run, run_with};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("join: {0}")]
    Join(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Client(#[from] infraos_client::ClientError),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Driver(#[from] infraos_exec::DriverError),
}

impl AgentError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &std::path::Path, contents: &[u8], mode: u32) -> Result<(), AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| AgentError::io(&tmp, e))?;
    f.write_all(contents).map_err(|e| AgentError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))
}

/// The system clock's now, for callers outside a running agent (the CLI's `dev`, which checks
/// an identity before starting one); a running agent reads its [`infraos_api::time::Clock`].
pub fn now() -> infraos_api::Time {
    use infraos_api::time::Clock as _;
    infraos_api::time::SystemClock.now()
}
