//! Node inventory: what an agent finds on its machine (CPU, memory, disks, NICs, GPUs, OS and
//! runtimes), gathered into [`Inventory`] for the Node's status.
//!
//! Every source is read below a root taken from [`Options`] (`/proc`, `/sys`, `/etc`, `/dev`,
//! `PATH`), so tests and containerised agents can point the collector elsewhere. Each part is
//! split the same way: a pure parser over the text the kernel or a tool prints, tested on
//! fixtures beside it, and a thin reader that feeds it.
//!
//! ```text
//!   /proc /sys /etc /dev PATH ──read──▶ text ──parse_*()──▶ facts ──▶ Inventory
//!                (probe.rs)                 (pure, tested)
//! ```
//!
//! Collection never fails as a whole and never panics: a part that cannot be read is left
//! empty or zero and the reason is logged at `debug`, because a half-known machine is still
//! worth reporting and the agent must not stop over a missing file.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod disks;
pub mod fingerprint;
pub mod gpus;
pub mod memory;
pub mod mounts;
pub mod nics;
pub mod os;
pub mod probe;
pub mod runtimes;

use std::ffi::OsString;
use std::path::PathBuf;

pub use fingerprint::fingerprint;
pub use infraos_api::kinds::{
    CpuInfo, DiskInfo, GpuInfo, Inventory, MemoryInfo, NicInfo, OsInfo, RuntimeInfo,
};

/// Where [`collect`] looks. [`Options::default`] is the real machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// procfs, normally `/proc`.
    pub proc_root: PathBuf,
    /// sysfs, normally `/sys`.
    pub sys_root: PathBuf,
    /// Configuration, normally `/etc` (for `os-release`).
    pub etc_root: PathBuf,
    /// Device nodes, normally `/dev` (for `kvm`).
    pub dev_root: PathBuf,
    /// The search path for `crun`, `runc` and `nvidia-smi`; `None` finds nothing.
    pub path_env: Option<OsString>,
    /// Whether the agent has a Wasm runtime built in; reported as is.
    pub wasm: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            etc_root: PathBuf::from("/etc"),
            dev_root: PathBuf::from("/dev"),
            path_env: std::env::var_os("PATH"),
            wasm: false,
        }
    }
}

/// Collects the inventory of the machine `options` points at. Blocks for as long as the
/// reads take plus, where `nvidia-smi` is on the path, up to [`gpus::NVIDIA_SMI_TIMEOUT`];
/// async callers should run it on a blocking thread.
pub fn collect(options: &Options) -> Inventory {
    let mounts = probe::read_text(&options.proc_root.join("self/mounts"))
        .map(|text| mounts::parse_mounts(&text))
        .unwrap_or_default();
    Inventory {
        cpu: cpu::collect(&options.proc_root, &options.sys_root),
        memory: memory::collect(&options.proc_root),
        disks: disks::collect(&mounts),
        nics: nics::collect(&options.sys_root),
        gpus: gpus::collect(options.path_env.as_deref(), &options.sys_root),
        os: os::collect(&options.proc_root, &options.etc_root),
        runtimes: runtimes::collect(&mounts, options),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Guards against a collector that compiles but reads nothing on a real Linux machine.
    #[test]
    fn collect_on_this_machine_finds_the_basics() {
        let inv = collect(&Options::default());
        assert!(inv.cpu.cores >= 1, "cores: {:?}", inv.cpu);
        assert!(
            inv.cpu.sockets >= 1 && inv.cpu.numa_nodes >= 1,
            "{:?}",
            inv.cpu
        );
        assert!(inv.memory.total_bytes > 0, "{:?}", inv.memory);
        assert!(inv.memory.available_bytes <= inv.memory.total_bytes);
        assert!(!inv.os.kernel.is_empty());
        assert!(!inv.os.hostname.is_empty());
        assert_eq!(inv.os.arch, std::env::consts::ARCH);
        assert!(
            ["v1", "v2", "hybrid", "none"].contains(&inv.runtimes.cgroup.as_str()),
            "cgroup: {}",
            inv.runtimes.cgroup
        );
        assert!(inv.nics.iter().all(|n| n.name != "lo"));
        assert!(inv.nics.windows(2).all(|w| w[0].name < w[1].name));
        for disk in &inv.disks {
            assert!(disk.device.starts_with("/dev/"), "{disk:?}");
            assert!(disk.free_bytes <= disk.size_bytes, "{disk:?}");
        }
        println!("{}", serde_json::to_string_pretty(&inv).unwrap());
    }

    /// A machine with nothing readable still yields an inventory, with zeros and `none`.
    #[test]
    fn collect_with_missing_roots_is_empty_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            proc_root: dir.path().join("proc"),
            sys_root: dir.path().join("sys"),
            etc_root: dir.path().join("etc"),
            dev_root: dir.path().join("dev"),
            path_env: None,
            wasm: true,
        };
        let inv = collect(&options);
        assert_eq!(inv.cpu.cores, 0);
        assert_eq!(inv.memory, MemoryInfo::default());
        assert!(inv.disks.is_empty() && inv.nics.is_empty() && inv.gpus.is_empty());
        assert_eq!(inv.os.kernel, "");
        assert_eq!(inv.os.arch, std::env::consts::ARCH);
        assert_eq!(inv.runtimes.cgroup, "none");
        assert!(inv.runtimes.oci.is_empty());
        assert!(!inv.runtimes.kvm);
        assert!(inv.runtimes.wasm);
    }

    /// A whole fake machine under a temp dir: every part reads through the options' roots.
    #[test]
    fn collect_reads_through_the_given_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\n\
             processor\t: 1\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\n",
        );
        write(
            "proc/meminfo",
            "MemTotal:  2048 kB\nMemFree: 512 kB\nMemAvailable: 1024 kB\n",
        );
        write(
            "proc/self/mounts",
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
        );
        write("proc/sys/kernel/osrelease", "6.1.0-test\n");
        write("proc/sys/kernel/hostname", "fake-host\n");
        write("etc/os-release", "PRETTY_NAME=\"Fake OS 1\"\n");
        write("sys/devices/system/node/node0/cpulist", "0-1\n");
        write("sys/devices/system/node/node1/cpulist", "\n");
        write("sys/class/net/lo/operstate", "unknown\n");
        write("sys/class/net/eth9/operstate", "up\n");
        write("sys/class/net/eth9/address", "52:54:00:12:34:56\n");
        write("sys/class/net/eth9/speed", "10000\n");
        write("bin/runc", "#!/bin/sh\n");
        let runc = root.join("bin/runc");
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();

        let inv = collect(&Options {
            proc_root: root.join("proc"),
            sys_root: root.join("sys"),
            etc_root: root.join("etc"),
            dev_root: root.join("dev"),
            path_env: Some(root.join("bin").into_os_string()),
            wasm: false,
        });
        assert_eq!(
            inv.cpu,
            CpuInfo {
                model: "Test CPU".into(),
                cores: 2,
                physical_cores: Some(1),
                sockets: 1,
                numa_nodes: 2,
            }
        );
        assert_eq!(inv.memory.total_bytes, 2048 * 1024);
        assert_eq!(inv.memory.available_bytes, 1024 * 1024);
        assert_eq!(inv.os.kernel, "6.1.0-test");
        assert_eq!(inv.os.hostname, "fake-host");
        assert_eq!(inv.os.os, "Fake OS 1");
        assert_eq!(inv.nics.len(), 1);
        assert_eq!(inv.nics[0].name, "eth9");
        assert_eq!(inv.nics[0].mac, "52:54:00:12:34:56");
        assert_eq!(inv.nics[0].speed_mbps, Some(10000));
        assert!(inv.nics[0].up);
        assert_eq!(inv.runtimes.cgroup, "v2");
        assert_eq!(inv.runtimes.oci, vec!["runc".to_string()]);
    }
}
