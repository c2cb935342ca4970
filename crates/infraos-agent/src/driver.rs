//! The executor contract (Nomad's driver plugin, STYLE §7): every way of running a workload
//! — process today; OCI, VM and Wasm next — implements [`Driver`]. `recover` is the one that
//! matters most: after an agent restart it re-attaches to what is still running.

use std::path::PathBuf;
use std::time::Duration;

use infraos_api::kinds::WorkloadSpec;
use serde::{Deserialize, Serialize};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod process;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The spec cannot run here (missing binary, unknown user, limits beyond the
    /// allocation…): nothing was started.
    #[error("{0}")]
    Refused(String),
    /// Starting failed part-way; whatever was created was cleaned up.
    #[error("{0}")]
    Failed(String),
}

/// What a driver needs to start one run of a workload.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    /// Unique per allocation (its uid) — names the cgroup and the task dir.
    pub id: String,
    pub spec: WorkloadSpec,
    pub limits: infraos_sys::cgroup::Limits,
    pub dir: PathBuf,
    pub hostname: String,
    /// The unprivileged uid (and gid) this run gets unless its spec names a user: one per
    /// allocation, so runs cannot signal or read each other (see `Reconciler::workload_uid`).
    pub workload_uid: u32,
    /// When the run must start stopping even if the agent is gone: the lease's end less the
    /// stop grace, so that it is over by the time the control plane may place it elsewhere.
    pub deadline: Deadline,
}

/// The lease bound a run carries with it (a dead man's switch): whatever supervises the
/// workload stops it at `stop_at_ms` (TERM, then KILL after `grace_ms`) unless the agent moved
/// the deadline on (a renewal). An agent that crashed for good cannot leave a workload running
/// past its lease while the control plane places the claim on another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadline {
    pub stop_at_ms: i64,
    pub grace_ms: u64,
}

/// Enough to find a running task again, persisted in the agent's state dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskHandle {
    pub id: String,
    pub driver: String,
    pub dir: PathBuf,
    /// The supervising process (the shim) and its start time, proof against pid reuse.
    pub shim_pid: i32,
    pub shim_ticks: u64,
    /// The workload's pid on the host.
    pub pid: i32,
    pub started_at_ms: i64,
    /// The uid it runs as on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub at_ms: i64,
    /// The supervisor stopped it because its lease bound passed (see [`Deadline`]).
    #[serde(default)]
    pub lease_expired: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Exited(ExitResult),
    /// Neither running nor with a recorded end (the shim was killed).
    Lost,
}

#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a run; returns once the workload process exists.
    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError>;
    /// Resolves when the run has ended.
    async fn wait(&self, handle: &TaskHandle) -> TaskState;
    /// SIGTERM to everything in the task, SIGKILL after `grace`; returns when nothing is left.
    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError>;
    /// What the task is doing now, without waiting.
    fn inspect(&self, handle: &TaskHandle) -> TaskState;
    /// After an agent restart: the task's state, re-attached if it still runs.
    fn recover(&self, handle: &TaskHandle) -> TaskState {
        self.inspect(handle)
    }
    /// Moves the run's deadline (after a renewal).
    fn set_deadline(&self, handle: &TaskHandle, deadline: Deadline) -> Result<(), DriverError>;
    /// Removes what the task left on the host (its cgroup); its logs stay.
    fn cleanup(&self, id: &str);
}
