//! Runtime facts: the cgroup layout (which decides how executors must place workloads), the
//! OCI runtimes on the path, whether KVM is usable, and whether Wasm is built in.

use std::path::Path;

use infraos_api::kinds::RuntimeInfo;

use crate::Options;
use crate::mounts::MountEntry;
use crate::probe;

/// Where systemd and every container runtime expect the cgroup hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// OCI runtimes looked for on the path, in order of preference.
const OCI_RUNTIMES: [&str; 2] = ["crun", "runc"];

/// The cgroup layout the mount table shows, in [`RuntimeInfo::cgroup`]'s words:
///
/// * `v2`: a `cgroup2` filesystem at `/sys/fs/cgroup` (the unified layout), or a `cgroup2`
///   somewhere with no v1 hierarchy beside it;
/// * `hybrid`: v1 `cgroup` hierarchies plus a `cgroup2` elsewhere (systemd's
///   `/sys/fs/cgroup/unified`);
/// * `v1`: only v1 hierarchies;
/// * `none`: no cgroup filesystem mounted.
pub fn cgroup_mode(mounts: &[MountEntry]) -> &'static str {
    let v2_at_root = mounts
        .iter()
        .any(|m| m.fstype == "cgroup2" && m.mount == CGROUP_ROOT);
    let any_v2 = mounts.iter().any(|m| m.fstype == "cgroup2");
    let any_v1 = mounts.iter().any(|m| m.fstype == "cgroup");
    match (v2_at_root, any_v1, any_v2) {
        (true, _, _) => "v2",
        (false, true, true) => "hybrid",
        (false, true, false) => "v1",
        (false, false, true) => "v2",
        (false, false, false) => "none",
    }
}

/// Whether `<dev_root>/kvm` opens read-write, which is what a VMM needs of it.
pub fn kvm_usable(dev_root: &Path) -> bool {
    let path = dev_root.join("kvm");
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(_) => true,
        Err(source) => {
            probe::log(probe::ProbeError::Read { path, source });
            false
        }
    }
}

/// Reads the runtime facts: `mounts` is the parsed mount table, the rest comes from options.
pub fn collect(mounts: &[MountEntry], options: &Options) -> RuntimeInfo {
    RuntimeInfo {
        cgroup: cgroup_mode(mounts).to_string(),
        oci: OCI_RUNTIMES
            .iter()
            .filter(|name| probe::find_executable(options.path_env.as_deref(), name).is_some())
            .map(|name| (*name).to_string())
            .collect(),
        kvm: kvm_usable(&options.dev_root),
        wasm: options.wasm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::{HOST_MOUNTS, parse_mounts};

    /// Debian 10 / Ubuntu 20.04 with systemd's default hybrid layout.
    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
";

    /// CentOS 7: v1 only.
    const LEGACY: &str = "\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
";

    #[test]
    fn the_four_layouts() {
        assert_eq!(cgroup_mode(&parse_mounts(HOST_MOUNTS)), "v2");
        assert_eq!(cgroup_mode(&parse_mounts(HYBRID)), "hybrid");
        assert_eq!(cgroup_mode(&parse_mounts(LEGACY)), "v1");
        assert_eq!(
            cgroup_mode(&parse_mounts(
                "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
            )),
            "none"
        );
    }

    #[test]
    fn cgroup2_outside_the_usual_place_without_v1_is_still_v2() {
        let mounts = parse_mounts("none /run/cgroup2 cgroup2 rw 0 0\n");
        assert_eq!(cgroup_mode(&mounts), "v2");
    }

    #[test]
    fn kvm_absent_is_false() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!kvm_usable(dir.path()));
    }

    #[test]
    fn kvm_is_a_read_write_open() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, "").unwrap();
        assert!(kvm_usable(dir.path()));
        let mut perms = std::fs::metadata(&kvm).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&kvm, perms).unwrap();
        // Root ignores file modes, so the read-only case only proves something as a user.
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        if euid == 0 {
            return;
        }
        assert!(!kvm_usable(dir.path()));
    }
}
