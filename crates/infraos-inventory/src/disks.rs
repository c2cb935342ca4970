//! Disk facts: the block-device filesystems in the mount table, one per device, sized with
//! `statvfs`. Pseudo filesystems, loop and RAM devices and container overlays are left out:
//! the scheduler wants the machine's storage, not every view of it.

use std::collections::BTreeMap;

use infraos_api::kinds::DiskInfo;
use nix::sys::statvfs::{Statvfs, statvfs};

use crate::mounts::MountEntry;

/// Filesystem types that never hold a machine's storage even when a `/dev/` path names them.
const PSEUDO_FS: [&str; 12] = [
    "proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "overlay", "squashfs",
    "autofs", "ramfs", "nsfs",
];

/// Device prefixes of block devices that are not storage: loop-mounted images (snaps, ISOs)
/// and RAM disks.
const SKIPPED_DEVICES: [&str; 3] = ["/dev/loop", "/dev/ram", "/dev/zram"];

/// The mounts worth reporting, one per device: the one with the shortest mount point (so a
/// bind mount of `/` into `/var/lib/docker` is reported as `/`), sorted by mount point.
pub fn select_disks(mounts: &[MountEntry]) -> Vec<&MountEntry> {
    let mut by_device: BTreeMap<&str, &MountEntry> = BTreeMap::new();
    for entry in mounts.iter().filter(|m| is_storage(m)) {
        by_device
            .entry(&entry.device)
            .and_modify(|kept| {
                if (entry.mount.len(), &entry.mount) < (kept.mount.len(), &kept.mount) {
                    *kept = entry;
                }
            })
            .or_insert(entry);
    }
    let mut disks: Vec<_> = by_device.into_values().collect();
    disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    disks
}

fn is_storage(entry: &MountEntry) -> bool {
    entry.device.starts_with("/dev/")
        && !SKIPPED_DEVICES.iter().any(|p| entry.device.starts_with(p))
        && !PSEUDO_FS.contains(&entry.fstype.as_str())
}

/// Sizes the selected mounts. A mount point that `statvfs` cannot reach (say, the mount table
/// was read from another mount namespace) is still listed, with zero sizes. Only local block
/// devices get here, so no call can hang on an unreachable network filesystem.
pub fn collect(mounts: &[MountEntry]) -> Vec<DiskInfo> {
    select_disks(mounts)
        .into_iter()
        .map(|entry| {
            let (size_bytes, free_bytes) = match statvfs(entry.mount.as_str()) {
                Ok(stat) => sizes(&stat),
                Err(errno) => {
                    tracing::debug!(mount = %entry.mount, error = %errno, "statvfs failed");
                    (0, 0)
                }
            };
            DiskInfo {
                mount: entry.mount.clone(),
                device: entry.device.clone(),
                filesystem: entry.fstype.clone(),
                size_bytes,
                free_bytes,
            }
        })
        .collect()
}

/// Total and available bytes: blocks count in fragment-size units, and "available" is what
/// an unprivileged writer may still use (the root reserve excluded).
// `c_ulong` and `fsblkcnt_t` are u64 here but u32 on some 32-bit targets; keep the `from`s.
#[allow(clippy::useless_conversion)]
fn sizes(stat: &Statvfs) -> (u64, u64) {
    let fragment = u64::from(stat.fragment_size());
    (
        u64::from(stat.blocks()).saturating_mul(fragment),
        u64::from(stat.blocks_available()).saturating_mul(fragment),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::{HOST_MOUNTS, parse_mounts};

    #[test]
    fn keeps_real_devices_once_at_their_shortest_mount() {
        let mounts = parse_mounts(HOST_MOUNTS);
        let picked: Vec<_> = select_disks(&mounts)
            .into_iter()
            .map(|m| (m.device.as_str(), m.mount.as_str(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            picked,
            vec![
                ("/dev/nvme0n1p2", "/", "ext4"),
                ("/dev/nvme0n1p1", "/boot/efi", "vfat"),
                ("/dev/mapper/vg0-home", "/home", "xfs"),
                ("/dev/sdb1", "/mnt/backup disk", "ext4"),
            ]
        );
    }

    /// Inside a container the root device shows up only on bind-mounted files; the shortest
    /// of them wins, and ties go to the first in byte order so the choice is stable.
    #[test]
    fn container_bind_mounts_dedupe_deterministically() {
        let mounts = parse_mounts(
            "overlay / overlay rw,relatime,lowerdir=/a,upperdir=/b,workdir=/c 0 0\n\
             /dev/vda1 /etc/resolv.conf ext4 rw,relatime 0 0\n\
             /dev/vda1 /etc/hostname ext4 rw,relatime 0 0\n\
             /dev/vda1 /etc/hosts ext4 rw,relatime 0 0\n\
             /dev/vda1 /etc/hostx ext4 rw,relatime 0 0\n",
        );
        let picked = select_disks(&mounts);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].mount, "/etc/hosts");
    }

    #[test]
    fn sizes_the_root_filesystem_of_this_machine() {
        let mounts = vec![MountEntry {
            device: "/dev/fake".into(),
            mount: "/".into(),
            fstype: "ext4".into(),
            options: "rw".into(),
        }];
        let disks = collect(&mounts);
        assert_eq!(disks.len(), 1);
        assert!(disks[0].size_bytes > 0);
        assert!(disks[0].free_bytes <= disks[0].size_bytes);
    }

    #[test]
    fn unreachable_mount_is_listed_with_zero_sizes() {
        let mounts = vec![MountEntry {
            device: "/dev/sdz1".into(),
            mount: "/nonexistent/infraos-test-mount".into(),
            fstype: "ext4".into(),
            options: "rw".into(),
        }];
        let disks = collect(&mounts);
        assert_eq!(disks.len(), 1);
        assert_eq!((disks[0].size_bytes, disks[0].free_bytes), (0, 0));
        assert_eq!(disks[0].device, "/dev/sdz1");
    }
}
