//! Processes: detaching the workload shim from the agent, isolating a workload as it starts
//! (cgroup, namespaces, rlimits, credentials), and watching processes the agent did not
//! start itself (pidfds), which is how a restarted agent re-adopts its workloads.
//!
//! ```text
//!  agent ──spawn──► shim ──fork──► shim (setsid, reparented to init; outlives the agent)
//!                                   │ unshare(PID)
//!                                   └─spawn──► workload = PID 1 of its namespace
//!                                              pre_exec: join cgroup, unshare(NS|UTS|IPC|CGROUP[|NET]),
//!                                              read-only view, /proc, hostname, rlimits,
//!                                              bounding set, groups/gid/uid, capabilities,
//!                                              user namespace, no_new_privs, seccomp
//! ```
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};

use crate::SysError;
use crate::caps::{self, Capability};
use crate::mounts::{MountView, PreparedView};
use crate::seccomp::Filter;
use crate::users::Credentials;

/// Opens a pidfd for `pid`: readable once the process has exited, whoever its parent is.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, SysError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1; no
    // memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(SysError::Call {
            call: "pidfd_open",
            source: std::io::Error::last_os_error(),
        });
    }
    let fd = RawFd::try_from(fd).map_err(|_| SysError::Unsupported("pidfd out of range".into()))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves when the process behind `pidfd` has exited.
pub async fn exited(pidfd: OwnedFd) -> Result<(), SysError> {
    // SAFETY: the AsyncFd owns the descriptor for as long as it is registered, so it is
    // neither closed nor reused while the reactor watches it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| SysError::Call {
        call: "epoll_ctl(pidfd)",
        source: e.into(),
    })?;
    let _ready = registered.readable().await.map_err(|e| SysError::Call {
        call: "pidfd readiness",
        source: e,
    })?;
    Ok(())
}

/// When the process started, in clock ticks since boot (`/proc/<pid>/stat` field 22): with
/// the pid, it names a process unambiguously across pid reuse.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `ticks` still exists (and is not a zombie).
pub fn is_alive(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let started = fields.get(19).and_then(|s| s.parse::<u64>().ok());
    started == Some(ticks) && state != "Z" && state != "X"
}

pub enum Forked {
    Parent { child: i32 },
    Child,
}

/// Forks and, in the child, starts a new session: the child outlives its parent and is
/// re-parented to init (or the nearest subreaper). Call only while single-threaded.
pub fn fork_detached() -> Result<Forked, SysError> {
    // SAFETY: the caller (the shim's entry point) is single-threaded, so the child does not
    // inherit locks held by other threads.
    match unsafe { nix::unistd::fork() }.map_err(|e| SysError::call("fork", e))? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent {
            child: child.as_raw(),
        }),
        nix::unistd::ForkResult::Child => {
            nix::unistd::setsid().map_err(|e| SysError::call("setsid", e))?;
            Ok(Forked::Child)
        }
    }
}

/// Makes the caller's next children start in a new PID namespace (the first one is its
/// PID 1). The caller itself stays where it is.
pub fn unshare_pid_namespace() -> Result<(), SysError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| SysError::call("unshare(CLONE_NEWPID)", e))
}

/// How a workload is confined as it starts.
#[derive(Clone, Debug, Default)]
pub struct Isolation {
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// New mount, UTS and IPC namespaces (and a fresh /proc, for the PID namespace).
    pub namespaces: bool,
    /// A new network namespace with only loopback (brought up).
    pub new_network: bool,
    pub hostname: Option<String>,
    pub rlimits: Vec<(Resource, u64)>,
    /// Drop to these ids (after everything that needs root).
    pub credentials: Option<Credentials>,
    /// Confinement beyond namespaces and ids (needs `namespaces`).
    pub containment: Option<Containment>,
    /// The working directory, entered after the mount view is in place and the ids dropped
    /// (std's `current_dir` would enter it before, in the host's view, and a run could keep a
    /// handle on a directory its view hides).
    pub cwd: Option<PathBuf>,
}

/// The contained defaults (issue 16): a read-only view of the host with the agent's secrets
/// hidden, no capabilities beyond a grant, no new privileges, the default seccomp filter, a
/// cgroup namespace, and a user namespace where the kernel allows one.
#[derive(Clone, Debug, Default)]
pub struct Containment {
    pub mount_view: MountView,
    /// Capabilities kept (a privileged grant); none by default.
    pub capabilities: Vec<Capability>,
    /// Enter a user namespace mapping only the workload's own ids (non-root workloads
    /// without capabilities; the agent probes whether the kernel allows it).
    pub user_namespace: bool,
    pub seccomp: bool,
}

/// Whether a process of an ordinary user may create a user namespace here (sysctls, LSMs and
/// container runtimes may forbid it). Forks a child that drops to `nobody` and tries.
pub fn user_namespaces_supported() -> bool {
    // SAFETY: the child makes only system calls and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: plain system calls in the forked child.
            let code = unsafe {
                if libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    2
                } else if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    1
                } else {
                    0
                }
            };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => matches!(
            nix::sys::wait::waitpid(child, None),
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
        ),
        Err(_) => false,
    }
}

/// Writes `bytes` to the NUL-terminated `path`; async-signal-safe.
fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: open/write/close on a path and buffer we own; the descriptor is closed here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != bytes.len() {
            return Err(err);
        }
    }
    Ok(())
}

/// What the child needs of a [`Containment`], computed before fork.
struct PreparedContainment {
    view: PreparedView,
    keep: u64,
    last_cap: u32,
    /// `uid_map` and `gid_map` contents when entering a user namespace.
    user_maps: Option<(Vec<u8>, Vec<u8>)>,
    filter: Option<Filter>,
}

/// Arranges for `command`'s child to confine itself, between fork and exec.
pub fn isolate(command: &mut Command, isolation: Isolation) -> Result<(), SysError> {
    // Everything that allocates or opens files happens here, before the fork.
    let mut procs: Vec<OwnedFd> = Vec::new();
    for path in &isolation.cgroup_procs {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| SysError::io(path, e))?;
        procs.push(OwnedFd::from(file));
    }
    let groups: Vec<Gid> = isolation
        .credentials
        .as_ref()
        .map(|c| c.groups.iter().map(|g| Gid::from_raw(*g)).collect())
        .unwrap_or_default();
    let contained = match &isolation.containment {
        Some(c) if !isolation.namespaces => {
            return Err(SysError::Unsupported(format!(
                "containment needs namespaces ({c:?})"
            )));
        }
        Some(c) => {
            let keep = caps::mask(&c.capabilities);
            let uid = isolation.credentials.as_ref().map_or(0, |c| c.uid);
            let gid = isolation.credentials.as_ref().map_or(0, |c| c.gid);
            let user_maps = (c.user_namespace && uid != 0 && keep == 0).then(|| {
                (
                    format!("{uid} {uid} 1\n").into_bytes(),
                    format!("{gid} {gid} 1\n").into_bytes(),
                )
            });
            Some(PreparedContainment {
                view: PreparedView::prepare(&c.mount_view)?,
                keep,
                last_cap: caps::last_cap(),
                user_maps,
                filter: c.seccomp.then(|| Filter::default_for(&c.capabilities)),
            })
        }
        None => None,
    };
    let cwd = match &isolation.cwd {
        Some(dir) => Some(
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
                .map_err(|_| SysError::Unsupported(format!("{}: a NUL byte", dir.display())))?,
        ),
        None => None,
    };
    let hostname = isolation.hostname.clone();
    let rlimits = isolation.rlimits.clone();
    let credentials = isolation.credentials.clone();
    let (namespaces, new_network) = (isolation.namespaces, isolation.new_network);
    let procs_raw: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // The descriptors must stay open until the child has used them; they close (CLOEXEC in
    // the child, dropped in the parent) once the command has spawned.
    let keep = std::sync::Arc::new(procs);
    let closure = move || -> std::io::Result<()> {
        let _keep = &keep;
        if namespaces {
            let mut flags =
                CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
            if new_network {
                flags |= CloneFlags::CLONE_NEWNET;
            }
            nix::sched::unshare(flags).map_err(std::io::Error::from)?;
            use nix::mount::{MsFlags, mount};
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            if let Some(c) = &contained {
                c.view.apply()?;
            }
            mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            if let Some(name) = &hostname {
                nix::unistd::sethostname(name).map_err(std::io::Error::from)?;
            }
            if new_network {
                loopback_up()?;
            }
        }
        for (resource, limit) in &rlimits {
            nix::sys::resource::setrlimit(*resource, *limit, *limit)
                .map_err(std::io::Error::from)?;
        }
        // Joined only now, as the view is in place: the setup above is the agent's work, not
        // the workload's, and under a small CPU quota (10m is 1 ms per 100 ms) it would wait
        // several periods (runc, too, applies limits once init's setup is done).
        for fd in &procs_raw {
            // SAFETY: writing two bytes from a static buffer to a descriptor we own.
            let n = unsafe { libc::write(*fd, b"0\n".as_ptr().cast(), 2) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if contained.is_some() {
            // Its own cgroup is the root of what it sees (joined first: from inside a cgroup
            // namespace the cgroup would be out of reach).
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(std::io::Error::from)?;
        }
        let uid = credentials.as_ref().map_or(0, |c| c.uid);
        if let Some(c) = &contained {
            // While still root: nothing outside the grant can come back, whatever runs next.
            caps::limit_bounding_set(c.keep, c.last_cap)?;
            if uid != 0 && c.keep != 0 {
                caps::keep_across_setuid()?;
            }
        }
        if let Some(c) = &credentials {
            nix::unistd::setgroups(&groups).map_err(std::io::Error::from)?;
            let gid = Gid::from_raw(c.gid);
            let uid = Uid::from_raw(c.uid);
            nix::unistd::setresgid(gid, gid, gid).map_err(std::io::Error::from)?;
            nix::unistd::setresuid(uid, uid, uid).map_err(std::io::Error::from)?;
        }
        if let Some(dir) = &cwd {
            // SAFETY: chdir to a NUL-terminated path we own.
            if unsafe { libc::chdir(dir.as_ptr()) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(c) = &contained {
            if uid != 0 {
                // Exactly the grant (usually nothing) in every set, ambient included.
                caps::set_exact(c.keep)?;
            }
            if let Some((uid_map, gid_map)) = &c.user_maps {
                // Changing ids made the process non-dumpable, which makes /proc/self owned by
                // root: make it ours again, or the maps below cannot be written (exec resets
                // the flag by its own rules).
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from)?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", uid_map)?;
                write_file(c"/proc/self/gid_map", gid_map)?;
                // A new user namespace starts with every capability in it: give them up.
                caps::limit_bounding_set(0, c.last_cap)?;
                caps::set_exact(0)?;
            }
            crate::seccomp::set_no_new_privs()?;
            if let Some(filter) = &c.filter {
                filter.install()?;
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec. The shim that spawns
    // workloads is single-threaded, so no lock can be held by a vanished thread; the closure
    // allocates nothing and makes only system calls.
    unsafe {
        command.pre_exec(closure);
    }
    Ok(())
}

/// Brings `lo` up in a fresh network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket call; the descriptor is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    if result < 0 { Err(err) } else { Ok(()) }
}

/// Sends a signal to one process.
pub fn signal(pid: i32, signal: nix::sys::signal::Signal) -> Result<(), SysError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| SysError::call("kill", e))
}

/// Raises this process's open-file soft limit to its hard limit and returns the new limit: a
/// server holding one connection per agent, or a load generator playing thousands of agents,
/// needs more than the usual soft default of 1,024.
pub fn raise_nofile_limit() -> Result<u64, SysError> {
    let call = |call: &'static str| {
        move |e: nix::Error| SysError::Call {
            call,
            source: std::io::Error::from(e),
        }
    };
    let (soft, hard) =
        nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).map_err(call("getrlimit"))?;
    if soft < hard {
        nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(call("setrlimit"))?;
    }
    Ok(hard)
}

/// As [`raise_nofile_limit`], and beyond the hard limit up to `want` where the process may
/// (root, or CAP_SYS_RESOURCE; at most `fs.nr_open`). A load generator holding tens of
/// thousands of connections needs it; the server keeps to the limit it was given.
pub fn raise_nofile_limit_to(want: u64) -> Result<u64, SysError> {
    let hard = raise_nofile_limit()?;
    if want <= hard {
        return Ok(hard);
    }
    match nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, want, want) {
        Ok(()) => Ok(want),
        // Not privileged: what we have.
        Err(_) => Ok(hard),
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (0 to 19): CPU-heavy work that
/// can wait (TLS handshakes under a flood) then yields the cores to the threads serving
/// established connections. Raising one's own nice value needs no privilege.
pub fn lower_thread_priority(nice: i32) -> Result<(), SysError> {
    let tid = nix::unistd::gettid().as_raw();
    let tid = libc::id_t::try_from(tid)
        .map_err(|_| SysError::Unsupported(format!("thread id {tid} out of range")))?;
    // SAFETY: setpriority takes plain integers and changes the priority of thread `tid`, this
    // one; no memory is shared with the kernel.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if rc != 0 {
        return Err(SysError::Call {
            call: "setpriority",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Gives SIGPIPE back its default action, ending the process quietly when it writes to a
/// pipe whose reader has gone, as command-line tools do (`infraos audit verify | head -1`).
/// Rust ignores SIGPIPE, so otherwise every later print fails and `println!` panics. Only
/// for short-lived client commands: sockets are written with MSG_NOSIGNAL and never raise it,
/// but a server or agent must never die of a peer closing a pipe.
pub fn default_sigpipe() -> Result<(), SysError> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs the default disposition, no handler of ours: nothing can run in signal
    // context, so there is no async-signal-safety to uphold.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map(drop)
        .map_err(|e| SysError::Call {
            call: "signal(SIGPIPE)",
            source: std::io::Error::from(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_identified_by_start_time() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert!(is_alive(me, ticks));
        assert!(
            !is_alive(me, ticks + 1),
            "a different start time is another process"
        );
        assert!(!is_alive(i32::MAX - 1, ticks));
    }

    #[test]
    fn a_thread_can_lower_its_own_priority() {
        std::thread::spawn(|| {
            lower_thread_priority(10).unwrap();
            let tid = nix::unistd::gettid().as_raw();
            let nice = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // Field 19 (after the command name) is the nice value.
            let fields: Vec<&str> = nice
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            assert_eq!(fields[16], "10", "{nice}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pidfds_open_for_live_processes_only() {
        assert!(pidfd_open(std::process::id() as i32).is_ok());
        assert!(pidfd_open(i32::MAX - 1).is_err());
    }
}
