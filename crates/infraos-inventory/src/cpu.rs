//! CPU facts: model, logical and physical cores, sockets and NUMA nodes, from
//! `/proc/cpuinfo` with sysfs (`devices/system/cpu`, `devices/system/node`) filling the gaps
//! that cpuinfo leaves on some architectures.

use std::collections::BTreeSet;
use std::path::Path;

use infraos_api::kinds::CpuInfo;

use crate::probe;

/// What `/proc/cpuinfo` says, before sysfs fills in what it lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuinfoSummary {
    /// The first model string found; empty when the architecture prints none.
    pub model: String,
    /// `processor` entries: the online logical CPUs.
    pub logical: u32,
    /// Distinct `(physical id, core id)` pairs, when every processor names both.
    pub physical_cores: Option<u32>,
    /// Distinct `physical id`s, when every processor names one.
    pub sockets: Option<u32>,
}

/// Keys that carry the CPU model, by architecture, best first: x86 `model name`, 32-bit ARM
/// `Processor`, MIPS `cpu model`, POWER `cpu`.
const MODEL_KEYS: [&str; 4] = ["model name", "Processor", "cpu model", "cpu"];

/// Parses `/proc/cpuinfo`: `key<TAB>: value` lines in blocks, one block per logical CPU,
/// each opening with `processor`.
pub fn parse_cpuinfo(text: &str) -> CpuinfoSummary {
    let mut model: Option<(usize, String)> = None;
    let mut logical = 0u32;
    // (physical id, core id) per processor block, as far as each is known.
    let mut blocks: Vec<(Option<String>, Option<String>)> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => {
                logical += 1;
                blocks.push((None, None));
            }
            "physical id" => {
                if let Some(block) = blocks.last_mut() {
                    block.0 = Some(value.to_string());
                }
            }
            "core id" => {
                if let Some(block) = blocks.last_mut() {
                    block.1 = Some(value.to_string());
                }
            }
            _ => {
                if let Some(rank) = MODEL_KEYS.iter().position(|k| *k == key)
                    && !value.is_empty()
                    && model.as_ref().is_none_or(|(best, _)| rank < *best)
                {
                    model = Some((rank, value.to_string()));
                }
            }
        }
    }
    let all_have_package = !blocks.is_empty() && blocks.iter().all(|b| b.0.is_some());
    let all_have_core = all_have_package && blocks.iter().all(|b| b.1.is_some());
    let sockets = all_have_package.then(|| count(blocks.iter().map(|b| &b.0)));
    let physical_cores = all_have_core.then(|| count(blocks.iter()));
    CpuinfoSummary {
        model: model.map(|(_, m)| m).unwrap_or_default(),
        logical,
        physical_cores,
        sockets,
    }
}

/// Counts the CPUs in a kernel CPU list such as `/sys/devices/system/cpu/online`
/// (`0-3,8,10-11` is 7). `None` when the list is malformed.
pub fn parse_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    let mut total = 0u32;
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        total = total.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(total)
}

/// Distinct `(package, core)` pairs and packages from sysfs topology, for architectures whose
/// cpuinfo has no `physical id`/`core id` (arm64). Negative ids (unknown) drop a CPU out.
pub fn topology_counts(pairs: &[(i64, i64)]) -> Option<(u32, u32)> {
    let known: Vec<_> = pairs.iter().filter(|(p, c)| *p >= 0 && *c >= 0).collect();
    if known.is_empty() || known.len() != pairs.len() {
        return None;
    }
    Some((count(known.iter()), count(known.iter().map(|(p, _)| p))))
}

fn count<T: Ord>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.collect::<BTreeSet<_>>().len()).unwrap_or(u32::MAX)
}

/// Reads the CPU facts below `proc_root` and `sys_root`.
pub fn collect(proc_root: &Path, sys_root: &Path) -> CpuInfo {
    let summary = probe::read_text(&proc_root.join("cpuinfo"))
        .map(|text| parse_cpuinfo(&text))
        .unwrap_or_default();
    let cpu_dir = sys_root.join("devices/system/cpu");
    let cores = if summary.logical > 0 {
        summary.logical
    } else {
        probe::read_text(&cpu_dir.join("online"))
            .and_then(|text| parse_cpu_list(&text))
            .unwrap_or(0)
    };
    let (physical_cores, sockets) = match (summary.physical_cores, summary.sockets) {
        (Some(cores), Some(sockets)) => (Some(cores), Some(sockets)),
        (_, sockets) => match read_topology(&cpu_dir).as_deref().and_then(topology_counts) {
            Some((cores, packages)) => (Some(cores), Some(packages)),
            None => (None, sockets),
        },
    };
    CpuInfo {
        model: summary.model,
        cores,
        physical_cores,
        sockets: sockets.unwrap_or(1).max(1),
        numa_nodes: count_numa_nodes(sys_root).max(1),
    }
}

/// `(physical_package_id, core_id)` of every `cpuN` directory that has a topology.
fn read_topology(cpu_dir: &Path) -> Option<Vec<(i64, i64)>> {
    let entries = std::fs::read_dir(cpu_dir)
        .map_err(|source| {
            probe::log(probe::ProbeError::Read {
                path: cpu_dir.to_path_buf(),
                source,
            })
        })
        .ok()?;
    let mut pairs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !is_numbered(&name.to_string_lossy(), "cpu") {
            continue;
        }
        let topology = entry.path().join("topology");
        if !topology.is_dir() {
            continue;
        }
        let read = |file: &str| {
            probe::read_trimmed(&topology.join(file)).and_then(|v| v.parse::<i64>().ok())
        };
        pairs.push((read("physical_package_id")?, read("core_id")?));
    }
    Some(pairs)
}

/// `node<N>` directories under `devices/system/node`; 0 when there is no such directory
/// (kernels built without NUMA).
fn count_numa_nodes(sys_root: &Path) -> u32 {
    let dir = sys_root.join("devices/system/node");
    match std::fs::read_dir(&dir) {
        Ok(entries) => count(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| is_numbered(name, "node")),
        ),
        Err(source) => {
            probe::log(probe::ProbeError::Read { path: dir, source });
            0
        }
    }
}

/// `name` is `prefix` followed by one or more ASCII digits (`cpu12`, not `cpufreq`).
fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets, two cores each, two hyperthreads per core: 8 logical CPUs. Trimmed real
    /// x86 output (flags shortened).
    const XEON_2S: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
siblings\t: 4
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep
bogomips\t: 4200.00

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 0

processor\t: 3
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 1

processor\t: 4
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 5
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1

processor\t: 6
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 0

processor\t: 7
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 1
core id\t\t: 1

";

    /// arm64 (Graviton-style): no model name, no physical or core ids.
    const ARM64: &str = "\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 243.75
CPU implementer\t: 0x41
CPU part\t: 0xd0c
";

    /// POWER9: the model is under `cpu`, and the machine summary follows the blocks.
    const POWER9: &str = "\
processor\t: 0
cpu\t\t: POWER9 (architected), altivec supported
clock\t\t: 2750.000000MHz
revision\t: 2.2 (pvr 004e 1202)

processor\t: 1
cpu\t\t: POWER9 (architected), altivec supported

timebase\t: 512000000
platform\t: pSeries
model\t\t: IBM,9009-42A
";

    #[test]
    fn x86_two_sockets_with_hyperthreads() {
        assert_eq!(
            parse_cpuinfo(XEON_2S),
            CpuinfoSummary {
                model: "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz".into(),
                logical: 8,
                physical_cores: Some(4),
                sockets: Some(2),
            }
        );
    }

    #[test]
    fn arm64_has_counts_but_no_topology_or_model() {
        assert_eq!(
            parse_cpuinfo(ARM64),
            CpuinfoSummary {
                model: String::new(),
                logical: 2,
                physical_cores: None,
                sockets: None,
            }
        );
    }

    #[test]
    fn power_model_comes_from_the_cpu_key() {
        let summary = parse_cpuinfo(POWER9);
        assert_eq!(summary.model, "POWER9 (architected), altivec supported");
        assert_eq!(summary.logical, 2);
    }

    #[test]
    fn topology_is_only_claimed_when_every_processor_has_it() {
        let partial = "processor : 0\nphysical id : 0\ncore id : 0\n\nprocessor : 1\n";
        let summary = parse_cpuinfo(partial);
        assert_eq!(summary.logical, 2);
        assert_eq!(summary.sockets, None);
        assert_eq!(summary.physical_cores, None);
        assert_eq!(parse_cpuinfo(""), CpuinfoSummary::default());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list(""), Some(0));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
    }

    #[test]
    fn sysfs_topology_counts() {
        assert_eq!(
            topology_counts(&[(0, 0), (0, 1), (0, 0), (1, 0)]),
            Some((3, 2))
        );
        assert_eq!(topology_counts(&[(0, 0), (-1, 1)]), None);
        assert_eq!(topology_counts(&[]), None);
    }

    #[test]
    fn numbered_names() {
        assert!(is_numbered("cpu12", "cpu"));
        assert!(is_numbered("node0", "node"));
        assert!(!is_numbered("cpufreq", "cpu"));
        assert!(!is_numbered("cpu", "cpu"));
    }

    /// arm64 case end to end: cpuinfo has no topology, sysfs does, and `online` is not needed.
    #[test]
    fn collect_fills_topology_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = (dir.path().join("proc"), dir.path().join("sys"));
        std::fs::create_dir_all(&proc_root).unwrap();
        std::fs::write(proc_root.join("cpuinfo"), ARM64).unwrap();
        for (cpu, core) in [(0, 0), (1, 1)] {
            let topo = sys_root.join(format!("devices/system/cpu/cpu{cpu}/topology"));
            std::fs::create_dir_all(&topo).unwrap();
            std::fs::write(topo.join("physical_package_id"), "0\n").unwrap();
            std::fs::write(topo.join("core_id"), format!("{core}\n")).unwrap();
        }
        std::fs::create_dir_all(sys_root.join("devices/system/cpu/cpufreq")).unwrap();
        let cpu = collect(&proc_root, &sys_root);
        assert_eq!(cpu.cores, 2);
        assert_eq!(cpu.physical_cores, Some(2));
        assert_eq!(cpu.sockets, 1);
        assert_eq!(cpu.numa_nodes, 1, "no node dir still means one node");
    }

    #[test]
    fn collect_counts_online_cpus_without_cpuinfo() {
        let dir = tempfile::tempdir().unwrap();
        let cpu_dir = dir.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu_dir).unwrap();
        std::fs::write(cpu_dir.join("online"), "0-5\n").unwrap();
        let cpu = collect(&dir.path().join("proc"), &dir.path().join("sys"));
        assert_eq!(cpu.cores, 6);
        assert_eq!(cpu.physical_cores, None);
    }
}
