//! The default seccomp filter for workloads: a classic-BPF program that refuses (`EPERM`) the
//! system calls a contained workload has no business making — loading kernel modules,
//! mounting, entering or creating namespaces, tracing other processes, changing the clock,
//! rebooting, kexec, BPF, keyrings, `perf_event_open`, `userfaultfd`, io_uring — and lets
//! everything else through, in the spirit of Docker's and Kubernetes' `RuntimeDefault`.
//!
//! ```text
//!  arch != native ─────────────────────────────► KILL_PROCESS  (no i386/x32 side doors)
//!  nr ≥ 0x4000_0000 (x32 ABI) ─────────────────► ERRNO(EPERM)
//!  nr == clone && flags & CLONE_NEW* ──────────► ERRNO(EPERM)
//!  nr == clone3 ───────────────────────────────► ERRNO(ENOSYS) (libc falls back to clone)
//!  nr ∈ denied (less what a granted cap allows) ► ERRNO(EPERM)
//!  otherwise ──────────────────────────────────► ALLOW
//! ```
//! A deny list rather than an allow list, so a new libc or language runtime does not break
//! on a syscall nobody listed; the cost is that a new dangerous syscall must be added here.
//! Groups a granted capability legitimately needs (`SYS_ADMIN` → mount, `SYS_PTRACE` →
//! ptrace…) are let through for workloads granted it, as Docker's profile does.
//!
//! Written here rather than taken from a crate: the x32 check, the clone flag check and the
//! capability-conditional groups are the whole point, and the program is ~100 instructions
//! of stable kernel ABI.
#![allow(unsafe_code)]

use crate::SysError;
use crate::caps::Capability;

/// A compiled filter, built before fork so the child only has to install it.
#[derive(Clone, Debug)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

// Classic BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
// Offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// Namespace flags a workload may not pass to `clone` (it may still fork and make threads).
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// Denied system calls, in groups; a group with a capability is allowed to workloads granted
/// that capability (they asked for, and an approver accepted, what it implies).
fn denied_groups() -> Vec<(Option<Capability>, Vec<libc::c_long>)> {
    use libc::*;
    let mut groups: Vec<(Option<Capability>, Vec<c_long>)> = vec![
        (
            Some(Capability::SysAdmin),
            vec![
                SYS_mount,
                SYS_umount2,
                SYS_pivot_root,
                SYS_move_mount,
                SYS_open_tree,
                SYS_fsopen,
                SYS_fsconfig,
                SYS_fsmount,
                SYS_fspick,
                SYS_mount_setattr,
                SYS_setns,
                SYS_unshare,
                SYS_quotactl,
                SYS_quotactl_fd,
                SYS_name_to_handle_at,
                SYS_lookup_dcookie,
                SYS_perf_event_open,
                SYS_fanotify_init,
                SYS_bpf,
                SYS_setdomainname,
                SYS_sethostname,
                SYS_vhangup,
            ],
        ),
        (
            Some(Capability::SysPtrace),
            vec![
                SYS_ptrace,
                SYS_process_vm_readv,
                SYS_process_vm_writev,
                SYS_kcmp,
                SYS_pidfd_getfd,
            ],
        ),
        (
            Some(Capability::SysModule),
            vec![SYS_init_module, SYS_finit_module, SYS_delete_module],
        ),
        (
            Some(Capability::SysBoot),
            vec![SYS_reboot, SYS_kexec_load, SYS_kexec_file_load],
        ),
        (
            Some(Capability::SysTime),
            vec![
                SYS_settimeofday,
                SYS_clock_settime,
                SYS_clock_adjtime,
                SYS_adjtimex,
            ],
        ),
        (Some(Capability::SysPacct), vec![SYS_acct]),
        (Some(Capability::SysAdmin), vec![SYS_swapon, SYS_swapoff]),
        (Some(Capability::Syslog), vec![SYS_syslog]),
        (Some(Capability::DacReadSearch), vec![SYS_open_by_handle_at]),
        (
            None,
            vec![
                SYS_add_key,
                SYS_request_key,
                SYS_keyctl,
                SYS_userfaultfd,
                SYS_io_uring_setup,
                SYS_io_uring_enter,
                SYS_io_uring_register,
            ],
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    groups.push((
        Some(Capability::SysRawio),
        vec![
            SYS_iopl,
            SYS_ioperm,
            SYS_uselib,
            SYS_ustat,
            SYS_sysfs,
            SYS__sysctl,
        ],
    ));
    groups
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Filter {
    /// The default filter, less the groups that `granted` capabilities need.
    pub fn default_for(granted: &[Capability]) -> Filter {
        let mut denied: Vec<u32> = denied_groups()
            .into_iter()
            .filter(|(cap, _)| cap.is_none_or(|c| !granted.contains(&c)))
            .flat_map(|(_, calls)| calls)
            .filter_map(|nr| u32::try_from(nr).ok())
            .collect();
        // `unshare` and `setns` are denied by the SysAdmin group; clone's namespace flags
        // follow the same grant.
        let clone_namespaces = !granted.contains(&Capability::SysAdmin);
        denied.sort_unstable();
        denied.dedup();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let mut p = vec![
            stmt(BPF_LD_W_ABS, OFFSET_ARCH),
            jump(BPF_JMP_JEQ_K, AUDIT_ARCH_NATIVE, 1, 0),
            stmt(BPF_RET_K, RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, OFFSET_NR),
            jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, eperm),
            // clone3 passes its flags in memory a filter cannot read: say it does not exist,
            // and libc falls back to clone, whose flags it can.
            jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
            stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32),
        ];
        if clone_namespaces {
            p.extend([
                jump(BPF_JMP_JEQ_K, libc::SYS_clone as u32, 0, 4),
                stmt(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
                jump(BPF_JMP_JSET_K, CLONE_NAMESPACES, 0, 1),
                stmt(BPF_RET_K, eperm),
                stmt(BPF_RET_K, RET_ALLOW),
            ]);
        }
        // One comparison per denied call: on a match, jump to the shared EPERM at the end.
        let count = denied.len();
        for (i, nr) in denied.iter().enumerate() {
            let to_eperm = u8::try_from(count - i).unwrap_or(u8::MAX);
            p.push(jump(BPF_JMP_JEQ_K, *nr, to_eperm, 0));
        }
        p.push(stmt(BPF_RET_K, RET_ALLOW));
        p.push(stmt(BPF_RET_K, eperm));
        Filter { program: p }
    }

    /// How many instructions the program has (the kernel takes at most 4096).
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (and what it executes). Needs
    /// `no_new_privs` set first, or CAP_SYS_ADMIN. Async-signal-safe: no allocation, one
    /// system call; meant for between fork and exec.
    pub fn install(&self) -> std::io::Result<()> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(self.program.len())
                .map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at our program, which outlives the call; the kernel copies
        // it and keeps no reference.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sets `no_new_privs`: nothing the process executes can gain privileges (setuid bits and
/// file capabilities are ignored). Async-signal-safe.
pub fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that this kernel takes seccomp filters (`Seccomp:` in /proc/self/status).
pub fn supported() -> Result<(), SysError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| SysError::io(std::path::Path::new("/proc/self/status"), e))?;
    if status.lines().any(|l| l.starts_with("Seccomp:")) {
        Ok(())
    } else {
        Err(SysError::Unsupported(
            "this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a forked child with the filter installed; returns the child's exit code.
    fn in_filtered_child(filter: &Filter, body: fn() -> i32) -> i32 {
        // SAFETY: the test child only makes system calls and exits; it never returns into
        // the test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if set_no_new_privs().is_ok() && filter.install().is_ok() {
                    body()
                } else {
                    99
                };
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child ended with {other:?}"),
                }
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn the_program_fits_the_kernel_limit() {
        let denied: usize = denied_groups().iter().map(|(_, calls)| calls.len()).sum();
        assert!(
            denied < 250,
            "jump offsets are one byte: {denied} denied calls"
        );
        let filter = Filter::default_for(&[]);
        assert!(filter.len() > 40 && filter.len() < 4096, "{}", filter.len());
        assert!(Filter::default_for(&[Capability::SysAdmin]).len() < filter.len());
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_the_rest_work() {
        let filter = Filter::default_for(&[]);
        // unshare of a user namespace needs no privilege without the filter.
        let code = in_filtered_child(&filter, || {
            // SAFETY: plain system calls in a forked test child.
            unsafe {
                if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != libc::EPERM {
                    return 1;
                }
                if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) == 0 || errno() != libc::EPERM {
                    return 2;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) == 0 || errno() != libc::ENOSYS {
                    return 3;
                }
                // x32 numbering of getpid: refused, not a side door.
                if libc::syscall(libc::SYS_getpid | 0x4000_0000) >= 0 || errno() != libc::EPERM {
                    return 4;
                }
                // Ordinary work goes on: getpid, fork (clone without namespace flags), wait.
                if libc::getpid() <= 0 {
                    return 5;
                }
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    return 6;
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                // clone with a namespace flag is refused.
                let rc = libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 || errno() != libc::EPERM {
                    return 7;
                }
            }
            0
        });
        assert_eq!(code, 0, "check {code} of the filtered child failed");
    }

    #[test]
    fn a_granted_capability_lets_its_group_through() {
        let filter = Filter::default_for(&[Capability::SysAdmin]);
        let code = in_filtered_child(&filter, || {
            // SAFETY: a plain system call in a forked test child.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
            // Root (tests run as root) may unshare once the filter lets it.
            if rc == 0 || errno() != libc::EPERM {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0);
    }
}
