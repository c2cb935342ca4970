//! The executor contract (Nomad's driver plugin, STYLE §7): every way of running a workload
//! — process today; OCI, VM and Wasm next — implements [`Driver`]. `recover` is the one that
//! matters most: after an agent restart it re-attaches to what is still running.
//!
//! Nothing here is shaped by one driver: a run's limits are the API's [`ResourceLimits`],
//! which each driver translates (cgroups for `process`), and a [`TaskHandle`] carries what
//! its driver needs to find the run again as an opaque `driver_state`, which only that
//! driver reads. The agent holds its drivers in a [`crate::DriverRegistry`] by name and
//! dispatches every call on a handle by the handle's `driver`.
//!
//! ```text
//!   start(TaskConfig) ─► TaskHandle {driver, driverState} ─► persisted by the agent
//!        wait / inspect / stop / signal / stats / set_deadline(handle)
//!   agent restart ─► registry.recover(handle) ─► drivers[handle.driver].recover(handle)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use infraos_api::kinds::{DriverFingerprint, ResourceLimits, WorkloadSpec};
use serde::{Deserialize, Serialize};

pub use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The spec cannot run here (missing binary, unknown user, limits beyond the
    /// allocation…): nothing was started.
    #[error("{0}")]
    Refused(String),
    /// Starting failed part-way; whatever was created was cleaned up.
    #[error("{0}")]
    Failed(String),
    /// The handle names a driver this agent does not have.
    #[error("no driver {0:?} on this node")]
    UnknownDriver(String),
    /// The driver cannot do this (see [`Capabilities`]).
    #[error("driver {driver} does not support {what}")]
    Unsupported { driver: String, what: &'static str },
}

/// What a driver needs to start one run of a workload.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    /// Unique per allocation (its uid) — names the run's resources and its task dir.
    pub id: String,
    pub spec: WorkloadSpec,
    /// What the run may use; the driver enforces it its own way.
    pub limits: ResourceLimits,
    pub dir: PathBuf,
    pub hostname: String,
    /// The unprivileged uid (and gid) this run gets unless its spec names a user: one per
    /// allocation, so runs cannot signal or read each other (see the agent's `workload_uid`).
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

/// Enough to find a running task again, persisted in the agent's state dir. Only `driver`
/// reads `driver_state`; the agent stores it as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "HandleWire")]
pub struct TaskHandle {
    pub id: String,
    /// The driver that started it: calls on the handle go to that driver.
    pub driver: String,
    pub dir: PathBuf,
    /// The workload's main process on the host, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub started_at_ms: i64,
    /// The uid it runs as on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The driver's own record of the run (the process driver: its shim's pid and start
    /// time).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub driver_state: serde_json::Value,
}

/// A handle as stored: today's, or one from before `driverState`, when the process driver's
/// shim pid and start time sat in the handle itself. The old fields become its state.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HandleWire {
    id: String,
    driver: String,
    dir: PathBuf,
    #[serde(default)]
    pid: Option<i32>,
    started_at_ms: i64,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    driver_state: serde_json::Value,
    #[serde(default)]
    shim_pid: Option<i32>,
    #[serde(default)]
    shim_ticks: Option<u64>,
}

impl From<HandleWire> for TaskHandle {
    fn from(w: HandleWire) -> TaskHandle {
        let driver_state = match (w.driver_state, w.shim_pid) {
            (serde_json::Value::Null, Some(pid)) => serde_json::json!({
                "shimPid": pid,
                "shimTicks": w.shim_ticks.unwrap_or_default(),
            }),
            (state, _) => state,
        };
        TaskHandle {
            id: w.id,
            driver: w.driver,
            dir: w.dir,
            pid: w.pid,
            started_at_ms: w.started_at_ms,
            uid: w.uid,
            driver_state,
        }
    }
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
    /// Neither running nor with a recorded end (its supervisor was killed).
    Lost,
}

/// How a driver keeps a run apart from the host and from other runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// None: a plain host process.
    None,
    /// Namespaces, cgroups and a confined view of the host (`process`, containers).
    Namespaces,
    /// Its own kernel.
    Vm,
}

/// What a driver can do, so the agent (and later the scheduler) need not guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `signal` delivers arbitrary signals.
    pub send_signals: bool,
    /// `recover` re-attaches to runs started by an earlier agent process.
    pub recover: bool,
    /// The run honours its [`Deadline`] with no agent watching.
    pub enforces_deadline: bool,
    pub isolation: Isolation,
}

/// What a run uses now, as far as its driver can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// The name workloads give in `spec.workload.driver`.
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Whether the driver can run workloads on this node now, and what it found; published
    /// in the Node's status.
    fn fingerprint(&self) -> DriverFingerprint;
    /// Starts a run; returns once the workload exists.
    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError>;
    /// Resolves when the run has ended.
    async fn wait(&self, handle: &TaskHandle) -> TaskState;
    /// SIGTERM to everything in the task, SIGKILL after `grace`; returns when nothing is left.
    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError>;
    /// Sends `signal` to everything in the task.
    fn signal(&self, handle: &TaskHandle, signal: Signal) -> Result<(), DriverError>;
    /// What the task is doing now, without waiting.
    fn inspect(&self, handle: &TaskHandle) -> TaskState;
    /// After an agent restart: the task's state, re-attached if it still runs.
    fn recover(&self, handle: &TaskHandle) -> TaskState {
        self.inspect(handle)
    }
    /// What the task uses now.
    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError>;
    /// Moves the run's deadline (after a renewal).
    fn set_deadline(&self, handle: &TaskHandle, deadline: Deadline) -> Result<(), DriverError>;
    /// Removes what the task left on the host (its cgroup); its logs stay.
    fn cleanup(&self, id: &str);
}

/// Fingerprints by driver name, as a Node's status carries them.
pub type Fingerprints = BTreeMap<String, DriverFingerprint>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_from_before_driver_state_keep_the_shim_in_it() {
        let old = serde_json::json!({
            "id": "a1", "driver": "process", "dir": "/d/a1", "shimPid": 10, "shimTicks": 99,
            "pid": 11, "startedAtMs": 5, "uid": 1000
        });
        let handle: TaskHandle = serde_json::from_value(old).unwrap();
        assert_eq!(handle.pid, Some(11));
        assert_eq!(handle.driver_state["shimPid"], 10);
        assert_eq!(handle.driver_state["shimTicks"], 99);
        let again: TaskHandle =
            serde_json::from_value(serde_json::to_value(&handle).unwrap()).unwrap();
        assert_eq!(again, handle);
    }
}
