//! GPU facts. NVIDIA GPUs are listed by `nvidia-smi` when it is on the path, their NUMA node
//! read from the PCI device in sysfs. No `nvidia-smi`, no NVIDIA GPUs: that is not an error.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use infraos_api::kinds::GpuInfo;

use crate::probe;

/// How long `nvidia-smi` may take. It answers in well under a second on a healthy machine,
/// but hangs for minutes when the driver is wedged, and the agent must report regardless.
pub const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(5);

/// The query whose output [`parse_nvidia_smi`] reads; the field order is part of the contract.
pub const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,name,uuid,memory.total,pci.bus_id",
    "--format=csv,noheader,nounits",
];

/// Parses `nvidia-smi --query-gpu=index,name,uuid,memory.total,pci.bus_id
/// --format=csv,noheader,nounits`: one GPU per line, memory in MiB. The name is taken as
/// everything between the first and the third-to-last comma, so a comma in a model name
/// does not shift the other fields. Lines that do not parse (`No devices were found`, error
/// text) are skipped and logged. The PCI address is stored in the kernel's form
/// (see [`sysfs_pci_address`]); NUMA nodes are left for the caller.
pub fn parse_nvidia_smi(text: &str) -> Vec<GpuInfo> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let gpu = parse_nvidia_line(line);
            if gpu.is_none() {
                tracing::debug!(line, "skipping unparsable nvidia-smi line");
            }
            gpu
        })
        .collect()
}

fn parse_nvidia_line(line: &str) -> Option<GpuInfo> {
    let fields: Vec<&str> = line.split(',').collect();
    let [index, .., uuid, memory, bus_id] = fields.as_slice() else {
        return None;
    };
    let (index, uuid, memory) = (index.trim(), uuid.trim(), memory.trim());
    // Joined untrimmed, so `Tesla T4, Rev A` keeps its inner space.
    let name = fields.get(1..fields.len().checked_sub(3)?)?.join(",");
    if name.is_empty() || !uuid.starts_with("GPU-") {
        return None;
    }
    Some(GpuInfo {
        index: index.parse().ok()?,
        vendor: "nvidia".to_string(),
        model: name.trim().to_string(),
        // `[N/A]` on some virtual GPUs: the GPU is still there, its size unknown.
        memory_mib: memory.parse().unwrap_or(0),
        uuid: uuid.to_string(),
        pci_bus_id: sysfs_pci_address(bus_id),
        numa_node: None,
    })
}

/// The kernel's name for a PCI address: lower case, the domain with at least 4 digits.
/// nvidia-smi prints an 8-digit domain (`00000000:17:00.0` is `0000:17:00.0` in
/// `/sys/bus/pci/devices`, and a VMD domain `00010000:01:00.0` is `10000:01:00.0`).
pub fn sysfs_pci_address(bus_id: &str) -> String {
    let lower = bus_id.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() == 8 => match u32::from_str_radix(domain, 16) {
            Ok(domain) => format!("{domain:04x}:{rest}"),
            Err(_) => lower,
        },
        _ => lower,
    }
}

/// A sysfs `numa_node` value; -1 means the platform does not say.
pub fn parse_numa_node(text: &str) -> Option<u32> {
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// Lists the GPUs: runs `nvidia-smi` from `path_env` if it is there.
pub fn collect(path_env: Option<&OsStr>, sys_root: &Path) -> Vec<GpuInfo> {
    let Some(nvidia_smi) = probe::find_executable(path_env, "nvidia-smi") else {
        tracing::debug!("nvidia-smi not on PATH; no NVIDIA GPUs reported");
        return Vec::new();
    };
    let text = match probe::run_with_timeout(&nvidia_smi, &NVIDIA_SMI_ARGS, NVIDIA_SMI_TIMEOUT) {
        Ok(text) => text,
        Err(error) => {
            probe::log(error);
            return Vec::new();
        }
    };
    let mut gpus = parse_nvidia_smi(&text);
    for gpu in &mut gpus {
        if !gpu.pci_bus_id.is_empty() {
            let path = sys_root
                .join("bus/pci/devices")
                .join(&gpu.pci_bus_id)
                .join("numa_node");
            gpu.numa_node = probe::read_text(&path).and_then(|t| parse_numa_node(&t));
        }
    }
    gpus
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// An 8-GPU H100 box as `nvidia-smi` prints it (driver 550).
    const H100_X8: &str = "\
0, NVIDIA H100 80GB HBM3, GPU-5e9a4f51-3c6b-2d8e-8f3a-1b2c3d4e5f60, 81559, 00000000:18:00.0
1, NVIDIA H100 80GB HBM3, GPU-0d8c2e9b-7a41-4f5c-b6e3-9a8b7c6d5e4f, 81559, 00000000:2A:00.0
2, NVIDIA H100 80GB HBM3, GPU-3f7e1a2b-8c9d-4e5f-a6b7-c8d9e0f1a2b3, 81559, 00000000:3A:00.0
3, NVIDIA H100 80GB HBM3, GPU-7b6a5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d, 81559, 00000000:5D:00.0
4, NVIDIA H100 80GB HBM3, GPU-1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d, 81559, 00000000:9A:00.0
5, NVIDIA H100 80GB HBM3, GPU-9f8e7d6c-5b4a-4321-8fed-cba987654321, 81559, 00000000:AB:00.0
6, NVIDIA H100 80GB HBM3, GPU-2468ace0-1357-49bd-8f02-468ace013579, 81559, 00000000:BA:00.0
7, NVIDIA H100 80GB HBM3, GPU-13579bdf-2468-4ace-9135-79bdf2468ace, 81559, 00000000:DB:00.0
";

    #[test]
    fn parses_an_h100_box() {
        let gpus = parse_nvidia_smi(H100_X8);
        assert_eq!(gpus.len(), 8);
        assert_eq!(
            gpus[0],
            GpuInfo {
                index: 0,
                vendor: "nvidia".into(),
                model: "NVIDIA H100 80GB HBM3".into(),
                memory_mib: 81559,
                uuid: "GPU-5e9a4f51-3c6b-2d8e-8f3a-1b2c3d4e5f60".into(),
                pci_bus_id: "0000:18:00.0".into(),
                numa_node: None,
            }
        );
        assert_eq!(gpus[7].index, 7);
        assert_eq!(gpus[7].pci_bus_id, "0000:db:00.0");
    }

    #[test]
    fn commas_in_names_and_missing_memory_do_not_shift_fields() {
        let text = "0, Tesla T4, Rev A, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, [N/A], 00000000:00:1E.0\n";
        let gpus = parse_nvidia_smi(text);
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].model, "Tesla T4, Rev A");
        assert_eq!(gpus[0].memory_mib, 0);
        assert_eq!(gpus[0].uuid, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(gpus[0].pci_bus_id, "0000:00:1e.0");
    }

    #[test]
    fn error_text_and_blank_lines_give_no_gpus() {
        assert!(parse_nvidia_smi("No devices were found\n").is_empty());
        assert!(parse_nvidia_smi("").is_empty());
        assert!(
            parse_nvidia_smi(
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. \
                 Make sure that the latest NVIDIA driver is installed and running.\n"
            )
            .is_empty()
        );
        assert!(parse_nvidia_smi("x, name, GPU-1, 1, 00000000:01:00.0\n").is_empty());
    }

    #[test]
    fn pci_addresses_in_kernel_form() {
        assert_eq!(sysfs_pci_address("00000000:17:00.0"), "0000:17:00.0");
        assert_eq!(sysfs_pci_address("00000000:AB:00.0"), "0000:ab:00.0");
        assert_eq!(sysfs_pci_address("0000:3b:00.0"), "0000:3b:00.0");
        assert_eq!(sysfs_pci_address("00010000:01:00.0"), "10000:01:00.0");
        assert_eq!(sysfs_pci_address("garbage"), "garbage");
    }

    #[test]
    fn numa_nodes() {
        assert_eq!(parse_numa_node("1\n"), Some(1));
        assert_eq!(parse_numa_node("-1\n"), None);
        assert_eq!(parse_numa_node(""), None);
    }

    /// End to end with a stand-in `nvidia-smi` on a private PATH and a fake sysfs.
    #[test]
    fn collect_runs_nvidia_smi_and_reads_numa_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("nvidia-smi");
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             [ \"$1\" = --query-gpu=index,name,uuid,memory.total,pci.bus_id ] || exit 2\n\
             echo '0, NVIDIA H100 80GB HBM3, GPU-5e9a4f51-3c6b-2d8e-8f3a-1b2c3d4e5f60, 81559, 00000000:18:00.0'\n\
             echo '1, NVIDIA H100 80GB HBM3, GPU-0d8c2e9b-7a41-4f5c-b6e3-9a8b7c6d5e4f, 81559, 00000000:9A:00.0'\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sys = dir.path().join("sys");
        for (addr, node) in [("0000:18:00.0", "0"), ("0000:9a:00.0", "-1")] {
            let dev = sys.join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("numa_node"), format!("{node}\n")).unwrap();
        }
        let gpus = collect(Some(bin.as_os_str()), &sys);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].numa_node, Some(0));
        assert_eq!(gpus[1].numa_node, None);
        assert_eq!(gpus[1].pci_bus_id, "0000:9a:00.0");
    }

    #[test]
    fn collect_without_nvidia_smi_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(collect(Some(dir.path().as_os_str()), dir.path()).is_empty());
        assert!(collect(None, dir.path()).is_empty());
    }
}
