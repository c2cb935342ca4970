//! A workload's view of the host's filesystem, set up in its own mount namespace between fork
//! and exec:
//!
//! ```text
//!  /                  every mount read-only and nosuid (mount_setattr, recursively)
//!  /tmp, /var/tmp,    fresh tmpfs, private to the run (writes count against its memory)
//!  /dev/shm
//!  hidden paths       an empty read-only tmpfs over each directory, /dev/null over each
//!                     file: the agent's and server's data dirs, keys, tokens
//!  writable paths     bind-mounted on themselves and made writable again (privileged only)
//!  /proc              a fresh procfs for the run's PID namespace
//! ```
//! Everything is prepared before fork (paths as C strings), so the child only makes system
//! calls.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::SysError;

/// What the workload sees of the host's filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountView {
    /// Paths covered by something empty (data dirs, keys, tokens).
    pub hidden: Vec<PathBuf>,
    /// Directories that get a fresh writable tmpfs.
    pub scratch: Vec<PathBuf>,
    /// Host paths left writable (a privileged grant).
    pub writable: Vec<PathBuf>,
}

impl MountView {
    /// The default scratch directories.
    pub fn default_scratch() -> Vec<PathBuf> {
        ["/tmp", "/var/tmp", "/dev/shm"]
            .into_iter()
            .map(PathBuf::from)
            .collect()
    }
}

/// A [`MountView`] as C strings, ready for the child.
#[derive(Debug)]
pub struct PreparedView {
    hidden: Vec<(CString, bool)>,
    scratch: Vec<CString>,
    writable: Vec<CString>,
}

fn c_path(path: &Path) -> Result<CString, SysError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::Unsupported(format!("{}: a NUL byte in the path", path.display())))
}

impl PreparedView {
    /// Resolves which paths exist and what they are; missing ones are left out.
    pub fn prepare(view: &MountView) -> Result<PreparedView, SysError> {
        let mut hidden = Vec::new();
        for path in &view.hidden {
            match std::fs::metadata(path) {
                Ok(meta) => hidden.push((c_path(path)?, meta.is_dir())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SysError::io(path, e)),
            }
        }
        let scratch = view
            .scratch
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| c_path(p))
            .collect::<Result<_, _>>()?;
        let mut writable = Vec::new();
        for path in &view.writable {
            if !path.is_absolute() {
                return Err(SysError::Unsupported(format!(
                    "writable path {} is not absolute",
                    path.display()
                )));
            }
            if !path.exists() {
                return Err(SysError::Unsupported(format!(
                    "writable path {} does not exist on this node",
                    path.display()
                )));
            }
            writable.push(c_path(path)?);
        }
        Ok(PreparedView {
            hidden,
            scratch,
            writable,
        })
    }

    /// Applies the view; call in a fresh mount namespace whose propagation is private.
    /// Async-signal-safe: no allocation.
    pub fn apply(&self) -> std::io::Result<()> {
        set_attr(c"/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)?;
        for dir in &self.scratch {
            mount(
                Some(c"tmpfs"),
                dir,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(c"mode=1777"),
            )?;
        }
        for (path, is_dir) in &self.hidden {
            let result = if *is_dir {
                mount(
                    Some(c"tmpfs"),
                    path,
                    Some(c"tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some(c"size=4k,mode=0"),
                )
            } else {
                mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None).and_then(|()| {
                    mount(
                        None,
                        path,
                        None,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        None,
                    )
                })
            };
            match result {
                Ok(()) => {}
                // Under a scratch tmpfs already: hidden by it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        for path in &self.writable {
            mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
            set_attr(path, 0, MOUNT_ATTR_RDONLY)?;
        }
        Ok(())
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on `path` and every mount below it (Linux 5.12).
fn set_attr(path: &std::ffi::CStr, set: u64, clear: u64) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is NUL-terminated and `attr` is a mount_attr of the size passed; the
    // kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> std::io::Result<()> {
    let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NUL-terminated or null, as mount(2) accepts; nothing is kept.
    let rc = unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel has mount_setattr (probed with an invalid call: ENOSYS means no).
pub fn read_only_views_supported() -> bool {
    // SAFETY: a null path with an invalid size fails before touching memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<MountAttr>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_hidden_paths_are_left_out_and_writable_ones_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "secret").unwrap();
        let prepared = PreparedView::prepare(&MountView {
            hidden: vec![
                dir.path().to_path_buf(),
                file.clone(),
                dir.path().join("gone"),
            ],
            scratch: MountView::default_scratch(),
            writable: vec![],
        })
        .unwrap();
        assert_eq!(prepared.hidden.len(), 2);
        assert!(prepared.hidden[0].1 && !prepared.hidden[1].1);
        let missing = PreparedView::prepare(&MountView {
            writable: vec![dir.path().join("gone")],
            ..MountView::default()
        })
        .unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let relative = PreparedView::prepare(&MountView {
            writable: vec![PathBuf::from("data")],
            ..MountView::default()
        })
        .unwrap_err();
        assert!(relative.to_string().contains("absolute"), "{relative}");
    }

    #[test]
    fn this_kernel_makes_read_only_views() {
        assert!(
            read_only_views_supported(),
            "mount_setattr (Linux 5.12) is needed"
        );
    }
}
