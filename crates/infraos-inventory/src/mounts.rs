//! The mount table (`/proc/self/mounts`), parsed once and shared by the disk collector and the
//! cgroup-mode check.

/// One line of the mount table, with the kernel's octal escapes decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub device: String,
    pub mount: String,
    pub fstype: String,
    pub options: String,
}

/// Parses `/proc/*/mounts` (fstab format: device, mount point, type, options, dump, pass).
/// Lines with fewer than four fields are skipped.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let device = fields.next()?;
            let mount = fields.next()?;
            let fstype = fields.next()?;
            let options = fields.next()?;
            Some(MountEntry {
                device: unescape_octal(device),
                mount: unescape_octal(mount),
                fstype: unescape_octal(fstype),
                options: options.to_string(),
            })
        })
        .collect()
}

/// Decodes the `\ooo` escapes the kernel writes for space, tab, newline and backslash in
/// mount table fields (`/mnt/my\040disk` is `/mnt/my disk`). A backslash not followed by
/// three octal digits is kept as is; bytes that are not UTF-8 are replaced.
pub fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Test fixture: a Debian host with systemd, a separate /home, a bind mount and a path with a space.
#[cfg(test)]
pub(crate) const HOST_MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
udev /dev devtmpfs rw,nosuid,relatime,size=16330132k,nr_inodes=4082533,mode=755 0 0
tmpfs /run tmpfs rw,nosuid,nodev,noexec,relatime,size=3271564k,mode=755 0 0
/dev/nvme0n1p2 / ext4 rw,relatime,errors=remount-ro 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
/dev/nvme0n1p1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=ascii 0 0
/dev/mapper/vg0-home /home xfs rw,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota 0 0
/dev/nvme0n1p2 /var/lib/docker ext4 rw,relatime,errors=remount-ro 0 0
/dev/loop3 /snap/core22/1380 squashfs ro,nodev,relatime 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw,relatime,lowerdir=/x,upperdir=/y 0 0
/dev/sdb1 /mnt/backup\\040disk ext4 rw,relatime 0 0
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_decodes_escapes() {
        let mounts = parse_mounts(HOST_MOUNTS);
        assert_eq!(mounts.len(), 12);
        assert_eq!(
            mounts[4],
            MountEntry {
                device: "/dev/nvme0n1p2".into(),
                mount: "/".into(),
                fstype: "ext4".into(),
                options: "rw,relatime,errors=remount-ro".into(),
            }
        );
        assert_eq!(mounts[11].mount, "/mnt/backup disk");
        assert_eq!(mounts[5].fstype, "cgroup2");
    }

    #[test]
    fn skips_short_and_blank_lines() {
        let mounts = parse_mounts("\n/dev/sda1 /\n/dev/sda1 / ext4 rw 0 0\n");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount, "/");
    }

    #[test]
    fn unescape_handles_all_kernel_escapes_and_leaves_others() {
        assert_eq!(unescape_octal(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape_octal(r"plain"), "plain");
        assert_eq!(unescape_octal(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape_octal(r"not\089octal"), r"not\089octal");
        assert_eq!(unescape_octal(r"\777"), r"\777", "above 255 is not a byte");
        assert_eq!(unescape_octal(r"caf\303\251"), "café");
    }
}
