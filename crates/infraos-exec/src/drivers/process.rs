//! The `process` driver: a host process in its own cgroup (limits from the allocation) and
//! its own PID, mount, UTS, IPC, cgroup and network namespaces, with rlimits, supervised by a
//! detached shim (see `shim.rs`).
//!
//! Contained by default (docs/security.md, "Workload containment"): an unprivileged uid of
//! its own, no capabilities, `no_new_privs`, the default seccomp filter, a read-only view of
//! the host with the agent's state hidden, private scratch dirs, a user namespace where the
//! kernel allows one. Root, the host network, capabilities and writable host paths are
//! privileged requests, which the agent runs only with the tiers and an approval (checked by
//! the reconciler before `start`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infraos_api::kinds::{
    DriverFingerprint, PROCESS_DRIVER, ResourceLimits, UserSpec, WorkloadSpec, parse_user,
};
use infraos_sys::cgroup::{Cgroup, Hierarchy};
use infraos_sys::mounts::MountView;
use infraos_sys::users::Credentials;
use serde::{Deserialize, Serialize};

use crate::driver::{
    Capabilities, Deadline, Driver, DriverError, ExitResult, Isolation, Signal, TaskConfig,
    TaskHandle, TaskState, TaskStats,
};
use crate::shim::{self, ShimContainment, ShimSpec};

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProcessDriver {
    hierarchy: Option<Hierarchy>,
    shim_program: PathBuf,
    log_max_bytes: u64,
    /// Paths no workload may see (the agent's and server's state).
    hidden: Vec<PathBuf>,
    /// Whether the kernel lets an ordinary user create a user namespace (probed once).
    user_namespaces: bool,
}

impl ProcessDriver {
    pub fn new(shim_program: PathBuf, log_max_bytes: u64) -> ProcessDriver {
        let hierarchy = Hierarchy::detect()
            .inspect_err(|e| tracing::warn!(error = %e, "no cgroups: workloads run without limits"))
            .ok();
        let user_namespaces = infraos_sys::process::user_namespaces_supported();
        if !user_namespaces {
            tracing::warn!(
                "this kernel does not let ordinary users create user namespaces: workloads run \
                 contained without one (their own uid, no capabilities, seccomp, read-only view)"
            );
        }
        ProcessDriver {
            hierarchy,
            shim_program,
            log_max_bytes,
            hidden: Vec::new(),
            user_namespaces,
        }
    }

    /// Hides these paths from every workload (the agent's data dir, a co-located server's).
    pub fn with_hidden_paths(mut self, paths: Vec<PathBuf>) -> ProcessDriver {
        self.hidden = paths;
        self
    }

    /// Whether workloads get a user namespace on this node.
    pub fn user_namespaces(&self) -> bool {
        self.user_namespaces
    }

    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.hierarchy.as_ref()
    }

    fn cgroup(&self, id: &str) -> Option<Cgroup> {
        self.hierarchy.as_ref().map(|h| Cgroup::open(h, id))
    }
}

/// The process driver's part of a [`TaskHandle`]: the supervising process (the shim) and its
/// start time, proof against pid reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessState {
    pub shim_pid: i32,
    pub shim_ticks: u64,
}

impl ProcessState {
    /// The state in `handle`, if it is one of ours.
    pub fn of(handle: &TaskHandle) -> Option<ProcessState> {
        serde_json::from_value(handle.driver_state.clone()).ok()
    }
}

/// The API's limits as this driver enforces them: a cgroup's.
pub fn cgroup_limits(limits: &ResourceLimits) -> infraos_sys::cgroup::Limits {
    infraos_sys::cgroup::Limits {
        cpu_millis: limits.cpu_millis,
        memory_bytes: limits.memory_bytes,
        pids: limits.pids,
    }
}

/// Finds the program: an absolute path as given, or a name on PATH.
pub fn resolve_program(command: &str, path_env: Option<&str>) -> Result<PathBuf, DriverError> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        if !p.is_absolute() {
            return Err(DriverError::Refused(format!(
                "command {command:?}: give an absolute path or a bare name found on PATH"
            )));
        }
        return if executable(&p) {
            Ok(p)
        } else {
            Err(DriverError::Refused(format!(
                "command {command:?} does not exist or is not executable on this node"
            )))
        };
    }
    let search = path_env.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    search
        .split(':')
        .map(|dir| Path::new(dir).join(command))
        .find(|p| executable(p))
        .ok_or_else(|| {
            DriverError::Refused(format!("command {command:?} is not on PATH ({search})"))
        })
}

fn credentials(user: Option<&str>) -> Result<Option<infraos_sys::users::Credentials>, DriverError> {
    let Some(user) = user else { return Ok(None) };
    let parsed = parse_user(user)
        .ok_or_else(|| DriverError::Refused(format!("user {user:?} is not valid")))?;
    let resolved = match parsed {
        UserSpec::Name(name) => infraos_sys::users::resolve(Some(&name), None, None),
        UserSpec::Id { uid, gid } => infraos_sys::users::resolve(None, Some(uid), gid),
    };
    resolved
        .map(Some)
        .map_err(|e| DriverError::Refused(format!("user {user:?}: {e}")))
}

/// The ids a run drops to: the user its spec names, or its own unprivileged uid. A name that
/// resolves to root on this node is refused unless root was asked for explicitly (a
/// privileged request, approved and signed).
fn run_as(spec: &WorkloadSpec, workload_uid: u32) -> Result<Credentials, DriverError> {
    match credentials(spec.user.as_deref())? {
        Some(c) if (c.uid == 0 || c.gid == 0) && !spec.runs_as_root() => {
            Err(DriverError::Refused(format!(
                "user {:?} is uid {} gid {} on this node: running as root is a privileged \
                 request (user: root)",
                spec.user.as_deref().unwrap_or_default(),
                c.uid,
                c.gid
            )))
        }
        Some(c) => Ok(c),
        None => Ok(Credentials {
            uid: workload_uid,
            gid: workload_uid,
            groups: vec![workload_uid],
        }),
    }
}

/// Capabilities a run keeps: none for a contained one; Docker's default set plus what it
/// asked for when it runs as root; only what it asked for otherwise.
fn capabilities_of(spec: &WorkloadSpec) -> Vec<String> {
    let mut caps: Vec<String> = Vec::new();
    if spec.runs_as_root() {
        caps.extend(
            infraos_sys::caps::ROOT_DEFAULT
                .iter()
                .map(|c| c.name().to_string()),
        );
    }
    for cap in &spec.capabilities {
        if let Some(name) = infraos_api::kinds::capability_name(cap)
            && !caps.iter().any(|c| c == name)
        {
            caps.push(name.to_string());
        }
    }
    caps
}

/// Writable host paths, refused when they would uncover a hidden one.
fn writable_paths(spec: &WorkloadSpec, hidden: &[PathBuf]) -> Result<Vec<PathBuf>, DriverError> {
    let mut out = Vec::new();
    for path in &spec.writable_paths {
        let path = PathBuf::from(path);
        if let Some(h) = hidden
            .iter()
            .find(|h| path.starts_with(h) || h.starts_with(&path))
        {
            return Err(DriverError::Refused(format!(
                "writable path {} overlaps {}, which workloads may not see",
                path.display(),
                h.display()
            )));
        }
        out.push(path);
    }
    Ok(out)
}

fn write_deadline(dir: &std::path::Path, deadline: Deadline) -> Result<(), DriverError> {
    let bytes = serde_json::to_vec(&deadline).map_err(|e| DriverError::Failed(e.to_string()))?;
    crate::write_atomic(&dir.join(shim::DEADLINE), &bytes, 0o644)
        .map_err(|e| DriverError::Failed(format!("deadline: {}: {e}", dir.display())))
}

#[async_trait::async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        PROCESS_DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            send_signals: true,
            recover: true,
            enforces_deadline: true,
            isolation: Isolation::Namespaces,
        }
    }

    fn fingerprint(&self) -> DriverFingerprint {
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert(
            "cgroup".to_string(),
            self.hierarchy
                .as_ref()
                .map_or("none", |h| h.version())
                .to_string(),
        );
        attributes.insert(
            "userNamespaces".to_string(),
            self.user_namespaces.to_string(),
        );
        DriverFingerprint {
            healthy: true,
            detail: self
                .hierarchy
                .is_none()
                .then(|| "no cgroups: workloads run without limits".to_string()),
            attributes,
        }
    }

    async fn start(&self, task: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let spec = &task.spec;
        let config = spec.process_config().map_err(DriverError::Refused)?;
        let path_env = spec.env.get("PATH").cloned();
        let program = resolve_program(&config.command, path_env.as_deref())?;
        let creds = run_as(spec, task.workload_uid)?;
        let writable = writable_paths(spec, &self.hidden)?;
        let cwd = PathBuf::from(config.working_dir.as_deref().unwrap_or("/"));
        if !cwd.is_dir() {
            return Err(DriverError::Refused(format!(
                "workingDir {} does not exist on this node",
                cwd.display()
            )));
        }
        std::fs::create_dir_all(&task.dir)
            .map_err(|e| DriverError::Failed(format!("{}: {e}", task.dir.display())))?;
        for stale in [shim::SHIM, shim::STARTED, shim::FAILED, shim::EXIT] {
            let _ = std::fs::remove_file(task.dir.join(stale));
        }
        let cgroup = match &self.hierarchy {
            Some(h) => Some(
                Cgroup::create(h, &task.id, &cgroup_limits(&task.limits))
                    .map_err(|e| DriverError::Failed(format!("cgroup: {e}")))?,
            ),
            None => None,
        };
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !spec.env.contains_key("PATH") {
            env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        }
        let shim_spec = ShimSpec {
            program,
            args: config.args,
            env,
            cwd,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            namespaces: true,
            new_network: !spec.host_network,
            hostname: task.hostname.clone(),
            uid: Some(creds.uid),
            gid: Some(creds.gid),
            groups: creds.groups.clone(),
            nofile: 65_536,
            log_max_bytes: self.log_max_bytes,
            containment: Some(ShimContainment {
                hidden: self.hidden.clone(),
                scratch: MountView::default_scratch(),
                writable,
                capabilities: capabilities_of(spec),
                user_namespace: self.user_namespaces,
                seccomp: true,
            }),
        };
        let bytes =
            serde_json::to_vec(&shim_spec).map_err(|e| DriverError::Failed(e.to_string()))?;
        crate::write_atomic(&task.dir.join(shim::SPEC), &bytes, 0o600)
            .map_err(|e| DriverError::Failed(format!("{}: {e}", task.dir.display())))?;
        write_deadline(&task.dir, task.deadline)?;
        let undo = |reason: String| {
            if let Some(c) = &cgroup {
                let _ = c.kill_all(Duration::from_secs(2));
                let _ = c.remove();
            }
            DriverError::Failed(reason)
        };
        // The shim forks and its first process exits at once; the detached one carries on.
        let program = self.shim_program.clone();
        let dir = task.dir.clone();
        let launched = tokio::task::spawn_blocking(move || {
            std::process::Command::new(program)
                .arg("__shim")
                .arg(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        })
        .await;
        match launched {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => return Err(undo(format!("the shim exited with {status}"))),
            Ok(Err(e)) => {
                return Err(undo(format!(
                    "cannot run the shim {}: {e}",
                    self.shim_program.display()
                )));
            }
            Err(e) => return Err(undo(format!("cannot run the shim: {e}"))),
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_micros(500);
        loop {
            if let Some(failed) = shim::read::<shim::Failed>(&task.dir, shim::FAILED) {
                return Err(undo(failed.reason));
            }
            if let (Some(started), Some(shim_process)) = (
                shim::read::<shim::Started>(&task.dir, shim::STARTED),
                shim::read::<shim::ShimProcess>(&task.dir, shim::SHIM),
            ) {
                let state = ProcessState {
                    shim_pid: shim_process.pid,
                    shim_ticks: shim_process.ticks,
                };
                return Ok(TaskHandle {
                    id: task.id.clone(),
                    driver: self.name().into(),
                    dir: task.dir.clone(),
                    pid: Some(started.pid),
                    started_at_ms: started.at_ms,
                    uid: Some(creds.uid),
                    driver_state: serde_json::to_value(state).map_err(|e| undo(e.to_string()))?,
                });
            }
            if Instant::now() >= deadline {
                return Err(undo("the workload did not start within 10s".into()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn wait(&self, handle: &TaskHandle) -> TaskState {
        let Some(state) = ProcessState::of(handle) else {
            return self.inspect(handle);
        };
        let waited = match infraos_sys::process::pidfd_open(state.shim_pid) {
            // A pidfd turns readable when its process exits, child of ours or not.
            Ok(fd) if infraos_sys::process::is_alive(state.shim_pid, state.shim_ticks) => {
                infraos_sys::process::exited(fd).await.is_ok()
            }
            _ => false,
        };
        if !waited {
            // No pidfd (the shim is gone or pidfds are unsupported): poll.
            while infraos_sys::process::is_alive(state.shim_pid, state.shim_ticks) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        reap(state.shim_pid);
        self.inspect(handle)
    }

    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError> {
        let Some(cgroup) = self.cgroup(&handle.id) else {
            if let Some(pid) = handle.pid {
                let _ = infraos_sys::process::signal(pid, Signal::SIGKILL);
            }
            return Ok(());
        };
        cgroup.signal_all(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while !cgroup.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !cgroup.is_empty() {
            tokio::task::spawn_blocking(move || cgroup.kill_all(Duration::from_secs(5)))
                .await
                .map_err(|e| DriverError::Failed(e.to_string()))?
                .map_err(|e| DriverError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    fn inspect(&self, handle: &TaskHandle) -> TaskState {
        if let Some(exit) = shim::read::<shim::Exit>(&handle.dir, shim::EXIT) {
            return TaskState::Exited(ExitResult {
                exit_code: exit.code,
                signal: exit.signal,
                at_ms: exit.at_ms,
                lease_expired: exit.lease_expired,
            });
        }
        if ProcessState::of(handle)
            .is_some_and(|s| infraos_sys::process::is_alive(s.shim_pid, s.shim_ticks))
        {
            return TaskState::Running;
        }
        TaskState::Lost
    }

    fn signal(&self, handle: &TaskHandle, signal: Signal) -> Result<(), DriverError> {
        if let Some(cgroup) = self.cgroup(&handle.id) {
            cgroup.signal_all(signal);
            return Ok(());
        }
        let pid = handle.pid.ok_or_else(|| {
            DriverError::Failed(format!("task {} has no process to signal", handle.id))
        })?;
        infraos_sys::process::signal(pid, signal)
            .map_err(|e| DriverError::Failed(format!("signal {signal}: {e}")))
    }

    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        let cgroup = self
            .cgroup(&handle.id)
            .ok_or_else(|| DriverError::Unsupported {
                driver: PROCESS_DRIVER.to_string(),
                what: "stats without cgroups",
            })?;
        Ok(TaskStats {
            memory_bytes: cgroup.memory_current(),
            pids: u64::try_from(cgroup.pids().len()).ok(),
        })
    }

    fn set_deadline(&self, handle: &TaskHandle, deadline: Deadline) -> Result<(), DriverError> {
        write_deadline(&handle.dir, deadline)
    }

    fn cleanup(&self, id: &str) {
        if let Some(cgroup) = self.cgroup(id) {
            if let Err(e) = cgroup.kill_all(Duration::from_secs(5)) {
                tracing::warn!(task = id, error = %e, "cgroup not empty");
            }
            if let Err(e) = cgroup.remove() {
                tracing::warn!(task = id, error = %e, "cgroup not removed");
            }
        }
    }
}

/// Collects the shim's exit status if it is our child; harmless otherwise.
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_or_are_refused_by_name() {
        assert!(resolve_program("sh", None).unwrap().ends_with("sh"));
        assert!(resolve_program("/bin/sh", None).is_ok());
        let missing = resolve_program("/no/such/binary", None).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let relative = resolve_program("bin/sh", None).unwrap_err();
        assert!(relative.to_string().contains("absolute"), "{relative}");
        assert!(resolve_program("no-such-program-infraos", None).is_err());
    }

    #[test]
    fn unknown_users_are_refused() {
        assert!(credentials(Some("no-such-user-infraos")).is_err());
        assert_eq!(credentials(Some("root")).unwrap().unwrap().uid, 0);
        assert!(credentials(None).unwrap().is_none());
    }
}
