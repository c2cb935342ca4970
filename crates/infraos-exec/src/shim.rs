//! The workload shim: `infraos __shim <task dir>`. One per workload run, it detaches from
//! the agent (so agent restarts do not touch workloads), starts the workload confined by
//! `infraos_sys`, copies its output to rotating log files, and records how it ended.
//! It is a plain single-threaded program: no async runtime, nothing shared.
//!
//! Files in the task dir, each written atomically:
//! ```text
//!   shim.json     {pid, ticks}           the shim (for re-adoption after an agent restart)
//!   started.json  {pid, atMs}            the workload started
//!   failed.json   {reason}               it could not be started
//!   exit.json     {code|signal, atMs}    it ended
//!   deadline.json {stopAtMs, graceMs}    written by the agent: the lease bound (see below)
//! ```
//! The shim enforces the lease bound itself: at `stopAtMs` it sends SIGTERM to the workload's
//! processes and SIGKILL `graceMs` later, so a workload whose agent died for good still ends
//! with its lease, before the control plane may place the claim elsewhere.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::logs::{RotatingFile, log_path};

pub const SPEC: &str = "spec.json";
pub const SHIM: &str = "shim.json";
pub const STARTED: &str = "started.json";
pub const FAILED: &str = "failed.json";
pub const EXIT: &str = "exit.json";
pub const DEADLINE: &str = "deadline.json";

/// How often the shim looks at its deadline while the workload is quiet.
const DEADLINE_CHECK_MS: u16 = 250;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub cgroup_procs: Vec<PathBuf>,
    pub namespaces: bool,
    pub new_network: bool,
    pub hostname: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    pub nofile: u64,
    pub log_max_bytes: u64,
    /// The contained defaults (absent only in specs written by older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<ShimContainment>,
}

/// How the workload is contained (see `infraos_sys::process::Containment`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimContainment {
    pub hidden: Vec<PathBuf>,
    pub scratch: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<PathBuf>,
    /// Capability names kept (a privileged grant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    pub user_namespace: bool,
    pub seccomp: bool,
}

impl ShimContainment {
    fn to_sys(&self) -> Result<infraos_sys::process::Containment, String> {
        let capabilities = self
            .capabilities
            .iter()
            .map(|name| {
                infraos_sys::caps::Capability::parse(name)
                    .ok_or_else(|| format!("unknown capability {name:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(infraos_sys::process::Containment {
            mount_view: infraos_sys::mounts::MountView {
                hidden: self.hidden.clone(),
                scratch: self.scratch.clone(),
                writable: self.writable.clone(),
            },
            capabilities,
            user_namespace: self.user_namespace,
            seccomp: self.seccomp,
        })
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimProcess {
    pub pid: i32,
    pub ticks: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub pid: i32,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failed {
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub at_ms: i64,
    /// The shim stopped it because its lease bound passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease_expired: bool,
}

pub fn read<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(file)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn put<T: Serialize>(dir: &Path, file: &str, value: &T) {
    if let Ok(bytes) = serde_json::to_vec(value) {
        let _ = crate::write_atomic(&dir.join(file), &bytes, 0o644);
    }
}

fn now_ms() -> i64 {
    crate::now_ms()
}

/// The shim's entry point; returns the process exit code. Call before any thread starts.
pub fn main(dir: &Path) -> i32 {
    let spec: ShimSpec = match read(dir, SPEC) {
        Some(s) => s,
        None => {
            eprintln!("infraos shim: cannot read {}", dir.join(SPEC).display());
            return 2;
        }
    };
    match infraos_sys::process::fork_detached() {
        Ok(infraos_sys::process::Forked::Parent { .. }) => return 0,
        Ok(infraos_sys::process::Forked::Child) => {}
        Err(e) => {
            put(
                dir,
                FAILED,
                &Failed {
                    reason: format!("cannot detach: {e}"),
                },
            );
            return 1;
        }
    }
    let me = std::process::id() as i32;
    put(
        dir,
        SHIM,
        &ShimProcess {
            pid: me,
            ticks: infraos_sys::process::start_ticks(me).unwrap_or(0),
        },
    );
    run(dir, &spec)
}

fn run(dir: &Path, spec: &ShimSpec) -> i32 {
    let fail = |reason: String| {
        put(dir, FAILED, &Failed { reason });
        1
    };
    let mut stdout_log = match RotatingFile::open(log_path(dir, "stdout"), spec.log_max_bytes) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open the stdout log: {e}")),
    };
    let mut stderr_log = match RotatingFile::open(log_path(dir, "stderr"), spec.log_max_bytes) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open the stderr log: {e}")),
    };
    if spec.namespaces
        && let Err(e) = infraos_sys::process::unshare_pid_namespace()
    {
        return fail(format!("cannot create a PID namespace: {e}"));
    }
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let credentials = spec.uid.map(|uid| infraos_sys::users::Credentials {
        uid,
        gid: spec.gid.unwrap_or(uid),
        groups: spec.groups.clone(),
    });
    let containment = match spec.containment.as_ref().map(ShimContainment::to_sys) {
        Some(Ok(c)) => Some(c),
        Some(Err(reason)) => return fail(reason),
        None => None,
    };
    let isolation = infraos_sys::process::Isolation {
        cgroup_procs: spec.cgroup_procs.clone(),
        namespaces: spec.namespaces,
        new_network: spec.new_network,
        hostname: Some(spec.hostname.clone()),
        rlimits: vec![
            // Never above our own hard limit: raising it needs CAP_SYS_RESOURCE, which
            // hardened hosts drop even for root.
            (
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                nofile_limit(spec.nofile),
            ),
            (nix::sys::resource::Resource::RLIMIT_CORE, 0),
        ],
        credentials,
        containment,
        cwd: Some(spec.cwd.clone()),
    };
    if let Err(e) = infraos_sys::process::isolate(&mut command, isolation) {
        return fail(format!("cannot prepare isolation: {e}"));
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", spec.program.display())),
    };
    put(
        dir,
        STARTED,
        &Started {
            pid: child.id() as i32,
            at_ms: now_ms(),
        },
    );
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let mut buf = vec![0u8; 64 * 1024];
    let workload = child.id() as i32;
    let mut enforcer = DeadlineEnforcer::default();
    while out.is_some() || err.is_some() {
        enforcer.check(dir, workload, &spec.cgroup_procs);
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = Vec::new();
        if let Some(o) = &out {
            fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
        }
        if let Some(e) = &err {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::from(DEADLINE_CHECK_MS)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut index = 0;
        if out.is_some() {
            if ready[index] {
                drain(&mut out, &mut stdout_log, &mut buf);
            }
            index += 1;
        }
        if err.is_some() && ready[index] {
            drain(&mut err, &mut stderr_log, &mut buf);
        }
    }
    // Its output is closed; it may still run (a daemon closes its descriptors).
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {
                enforcer.check(dir, workload, &spec.cgroup_procs);
                std::thread::sleep(std::time::Duration::from_millis(u64::from(
                    DEADLINE_CHECK_MS,
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("cannot wait for the workload: {e}")),
        }
    };
    use std::os::unix::process::ExitStatusExt;
    put(
        dir,
        EXIT,
        &Exit {
            code: status.code(),
            signal: status.signal(),
            at_ms: now_ms(),
            lease_expired: enforcer.stopped(),
        },
    );
    0
}

/// Stops the workload when its lease bound passes: SIGTERM, then SIGKILL after the grace.
#[derive(Default)]
struct DeadlineEnforcer {
    terminated_at_ms: Option<i64>,
    killed: bool,
    /// The bound last read: if the file goes away (the agent's data dir wiped, a reinstall),
    /// the lease still ends the workload — only the agent can move it, by writing the file.
    last: Option<crate::driver::Deadline>,
}

impl DeadlineEnforcer {
    fn check(&mut self, dir: &Path, workload: i32, cgroup_procs: &[PathBuf]) {
        if self.killed {
            return;
        }
        if let Some(read) = read::<crate::driver::Deadline>(dir, DEADLINE) {
            self.last = Some(read);
        }
        let Some(deadline) = self.last else {
            return;
        };
        let now = now_ms();
        match self.terminated_at_ms {
            None if now >= deadline.stop_at_ms => {
                signal_all(workload, cgroup_procs, nix::sys::signal::Signal::SIGTERM);
                self.terminated_at_ms = Some(now);
            }
            Some(at) if now >= at.saturating_add(i64::try_from(deadline.grace_ms).unwrap_or(0)) => {
                signal_all(workload, cgroup_procs, nix::sys::signal::Signal::SIGKILL);
                self.killed = true;
            }
            _ => {}
        }
    }

    fn stopped(&self) -> bool {
        self.terminated_at_ms.is_some()
    }
}

/// Signals the workload and every process of its cgroup.
fn signal_all(workload: i32, cgroup_procs: &[PathBuf], signal: nix::sys::signal::Signal) {
    let _ = infraos_sys::process::signal(workload, signal);
    for procs in cgroup_procs {
        for pid in std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            let _ = infraos_sys::process::signal(pid, signal);
        }
    }
}

fn nofile_limit(wanted: u64) -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(wanted, |(_, hard)| wanted.min(hard))
}

/// Copies what is readable from a pipe to its log; closes the pipe at end of file.
fn drain<R: Read>(pipe: &mut Option<R>, log: &mut RotatingFile, buf: &mut [u8]) {
    let Some(reader) = pipe.as_mut() else { return };
    match reader.read(buf) {
        Ok(0) => *pipe = None,
        Ok(n) => {
            let _ = log.write(&buf[..n]);
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
        Err(_) => *pipe = None,
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn a_vanished_deadline_file_still_ends_the_workload() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let soon = now_ms() + 50;
        put(
            dir.path(),
            DEADLINE,
            &crate::driver::Deadline {
                stop_at_ms: soon,
                grace_ms: 1000,
            },
        );
        let mut enforcer = DeadlineEnforcer::default();
        enforcer.check(dir.path(), pid, &[]);
        assert!(!enforcer.stopped(), "not before the bound");
        std::fs::remove_file(dir.path().join(DEADLINE)).unwrap();
        while now_ms() < soon {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        enforcer.check(dir.path(), pid, &[]);
        assert!(enforcer.stopped(), "the remembered bound still applies");
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was ended by SIGTERM: {status:?}");
    }
}
