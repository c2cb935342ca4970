//! Cgroups for workloads, v2 and v1.
//!
//! ```text
//!  v2 (unified):  /sys/fs/cgroup/infraos/<name>/{cgroup.procs,memory.max,cpu.max,pids.max,cgroup.kill}
//!  v1 (legacy or hybrid):
//!                 /sys/fs/cgroup/memory/infraos/<name>/memory.limit_in_bytes
//!                 /sys/fs/cgroup/cpu/infraos/<name>/cpu.cfs_{quota,period}_us
//!                 /sys/fs/cgroup/pids/infraos/<name>/pids.max
//!                 /sys/fs/cgroup/freezer/infraos/<name>/freezer.state   (to kill without races)
//! ```
//! A hybrid host (v1 controllers plus a controller-less v2 `unified` tree, as on this
//! project's CI machines) is driven through v1, where the controllers are. Killing a cgroup
//! freezes it first (v1) or uses `cgroup.kill` (v2), so a forking workload cannot escape.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::SysError;

/// The directory under each hierarchy that holds InfraOS's cgroups.
pub const PARENT: &str = "infraos";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// One unified hierarchy rooted here.
    V2 { root: PathBuf },
    /// One mount per controller; missing controllers are `None`.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
        freezer: Option<PathBuf>,
    },
}

/// Limits derived from an allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core (`500` = half a core).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// The CFS quota for a period of 100 ms, at least 1 ms.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_millis
            .map(|m| (m * CPU_PERIOD_US / 1000).max(1000))
    }
}

impl Hierarchy {
    /// Reads the mount table (`/proc/self/mounts` format).
    pub fn from_mounts(mounts: &str) -> Option<Hierarchy> {
        let mut v2_root = None;
        let (mut memory, mut cpu, mut pids, mut freezer) = (None, None, None, None);
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount, fstype, options, ..] = fields.as_slice() else {
                continue;
            };
            let path = PathBuf::from(mount);
            match *fstype {
                "cgroup2" if *mount == "/sys/fs/cgroup" => v2_root = Some(path),
                "cgroup" => {
                    let opts: Vec<&str> = options.split(',').collect();
                    if opts.contains(&"memory") {
                        memory = Some(path.clone());
                    }
                    if opts.contains(&"cpu") {
                        cpu = Some(path.clone());
                    }
                    if opts.contains(&"pids") {
                        pids = Some(path.clone());
                    }
                    if opts.contains(&"freezer") {
                        freezer = Some(path);
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2_root {
            return Some(Hierarchy::V2 { root });
        }
        if memory.is_some() || cpu.is_some() || pids.is_some() {
            return Some(Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            });
        }
        None
    }

    /// This machine's hierarchy.
    pub fn detect() -> Result<Hierarchy, SysError> {
        let path = Path::new("/proc/self/mounts");
        let mounts = std::fs::read_to_string(path).map_err(|e| SysError::io(path, e))?;
        Hierarchy::from_mounts(&mounts)
            .ok_or_else(|| SysError::Unsupported("no cgroup hierarchy is mounted".into()))
    }

    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }
}

/// One workload's cgroup (one directory per v1 controller).
#[derive(Clone, Debug)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    name: String,
}

fn write(path: &Path, value: &str) -> Result<(), SysError> {
    std::fs::write(path, value).map_err(|e| SysError::io(path, e))
}

impl Cgroup {
    /// A handle on `<parent>/<name>`, existing or not (for recovery after a restart).
    pub fn open(hierarchy: &Hierarchy, name: &str) -> Cgroup {
        Cgroup {
            hierarchy: hierarchy.clone(),
            name: name.to_string(),
        }
    }

    /// Creates the cgroup with its limits. A limit the hierarchy cannot enforce is an error:
    /// a workload never runs with less isolation than it asked for.
    pub fn create(hierarchy: &Hierarchy, name: &str, limits: &Limits) -> Result<Cgroup, SysError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(SysError::Unsupported(format!("bad cgroup name {name:?}")));
        }
        let cgroup = Cgroup::open(hierarchy, name);
        match hierarchy {
            Hierarchy::V2 { root } => {
                let parent = root.join(PARENT);
                create_dir(&parent)?;
                let wanted: Vec<&str> = [
                    limits.memory_bytes.map(|_| "memory"),
                    limits.cpu_millis.map(|_| "cpu"),
                    limits.pids.map(|_| "pids"),
                ]
                .into_iter()
                .flatten()
                .collect();
                for controller in &wanted {
                    // Delegation from the root to our parent; failures show up below.
                    let _ = write(
                        &root.join("cgroup.subtree_control"),
                        &format!("+{controller}"),
                    );
                    let _ = write(
                        &parent.join("cgroup.subtree_control"),
                        &format!("+{controller}"),
                    );
                }
                let dir = parent.join(name);
                create_dir(&dir)?;
                let set = |file: &str, value: String, controller: &str| -> Result<(), SysError> {
                    let path = dir.join(file);
                    if !path.exists() {
                        return Err(SysError::Unsupported(format!(
                            "the cgroup v2 {controller} controller is not available under {}",
                            parent.display()
                        )));
                    }
                    write(&path, &value)
                };
                if let Some(bytes) = limits.memory_bytes {
                    set("memory.max", bytes.to_string(), "memory")?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                if let Some(quota) = limits.cpu_quota_us() {
                    set("cpu.max", format!("{quota} {CPU_PERIOD_US}"), "cpu")?;
                }
                if let Some(pids) = limits.pids {
                    set("pids.max", pids.to_string(), "pids")?;
                }
            }
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => {
                let need =
                    |mount: &Option<PathBuf>, controller: &str| -> Result<PathBuf, SysError> {
                        let mount = mount.as_ref().ok_or_else(|| {
                            SysError::Unsupported(format!(
                                "the cgroup v1 {controller} controller is not mounted"
                            ))
                        })?;
                        let dir = mount.join(PARENT).join(name);
                        create_dir(&mount.join(PARENT))?;
                        create_dir(&dir)?;
                        Ok(dir)
                    };
                // Every workload gets a pids and freezer cgroup (for counting and killing),
                // memory and cpu ones when limited.
                let pids_dir = need(pids, "pids")?;
                if let Some(n) = limits.pids {
                    write(&pids_dir.join("pids.max"), &n.to_string())?;
                }
                if freezer.is_some() {
                    need(freezer, "freezer")?;
                }
                if let Some(bytes) = limits.memory_bytes {
                    let dir = need(memory, "memory")?;
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // Best effort: swap accounting is often off.
                    let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                }
                if let Some(quota) = limits.cpu_quota_us() {
                    let dir = need(cpu, "cpu")?;
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(cgroup)
    }

    /// Every directory of this cgroup that exists (one for v2, one per controller for v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let candidates: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V2 { root } => vec![root.join(PARENT).join(&self.name)],
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => [pids, memory, cpu, freezer]
                .into_iter()
                .flatten()
                .map(|m| m.join(PARENT).join(&self.name))
                .collect(),
        };
        candidates.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// The `cgroup.procs` files a process writes itself into to join (`0` = the writer).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs().into_iter().next() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills everything in the cgroup and waits (up to `timeout`) until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), SysError> {
        let deadline = Instant::now() + timeout;
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let kill = root.join(PARENT).join(&self.name).join("cgroup.kill");
                if kill.exists() {
                    write(&kill, "1")?;
                }
            }
            Hierarchy::V1 { freezer, .. } => {
                // Frozen processes cannot fork; SIGKILL is delivered when they thaw.
                let state = freezer
                    .as_ref()
                    .map(|f| f.join(PARENT).join(&self.name).join("freezer.state"))
                    .filter(|p| p.exists());
                if let Some(state) = &state {
                    let _ = write(state, "FROZEN");
                }
                self.signal_all(nix::sys::signal::Signal::SIGKILL);
                if let Some(state) = &state {
                    let _ = write(state, "THAWED");
                }
            }
        }
        loop {
            self.signal_all(nix::sys::signal::Signal::SIGKILL);
            if self.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SysError::Unsupported(format!(
                    "cgroup {} still has processes {:?} after SIGKILL",
                    self.name,
                    self.pids()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the cgroup's directories (they must be empty of processes).
    pub fn remove(&self) -> Result<(), SysError> {
        for dir in self.dirs() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // The kernel may still be tearing the last process down.
                    Err(_) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(SysError::io(&dir, e)),
                }
            }
        }
        Ok(())
    }

    /// Peak or current memory use in bytes, when the hierarchy tells.
    pub fn memory_current(&self) -> Option<u64> {
        let file = match &self.hierarchy {
            Hierarchy::V2 { root } => root.join(PARENT).join(&self.name).join("memory.current"),
            Hierarchy::V1 { memory, .. } => memory
                .as_ref()?
                .join(PARENT)
                .join(&self.name)
                .join("memory.usage_in_bytes"),
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }
}

fn create_dir(path: &Path) -> Result<(), SysError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SysError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw 0 0
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_hosts_use_v1_and_unified_hosts_v2() {
        let h = Hierarchy::from_mounts(HYBRID).unwrap();
        assert_eq!(h.version(), "v1");
        let Hierarchy::V1 {
            memory, freezer, ..
        } = h
        else {
            panic!()
        };
        assert_eq!(memory.unwrap(), PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(freezer.is_some());
        let v2 = Hierarchy::from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n").unwrap();
        assert_eq!(v2.version(), "v2");
        assert!(Hierarchy::from_mounts("proc /proc proc rw 0 0\n").is_none());
    }

    #[test]
    fn cpu_quota_has_a_floor() {
        let l = Limits {
            cpu_millis: Some(500),
            ..Default::default()
        };
        assert_eq!(l.cpu_quota_us(), Some(50_000));
        let tiny = Limits {
            cpu_millis: Some(1),
            ..Default::default()
        };
        assert_eq!(tiny.cpu_quota_us(), Some(1000));
    }

    #[test]
    fn names_cannot_escape_the_parent() {
        let h = Hierarchy::V2 {
            root: PathBuf::from("/nonexistent"),
        };
        assert!(Cgroup::create(&h, "../x", &Limits::default()).is_err());
        assert!(Cgroup::create(&h, "", &Limits::default()).is_err());
    }
}
