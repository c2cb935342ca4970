//! What a run may use, in the API's terms: each driver translates it to its own mechanism
//! (cgroups for `process`; a VM's size, a container runtime's resources next).

use serde::{Deserialize, Serialize};

use crate::kinds::AllocationSpec;
use crate::quantity::Quantity;

/// Most processes a workload may have unless it says otherwise.
pub const DEFAULT_PIDS: u64 = 4096;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// CPU time per second of wall time, in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl ResourceLimits {
    /// The limits of an allocation's runs: its cpu and memory, tightened by the workload's own
    /// `limits` (never loosened: a limit above what was allocated is refused).
    pub fn for_allocation(allocation: &AllocationSpec) -> Result<ResourceLimits, String> {
        let mut cpu_nanos: i128 = 0;
        let mut memory_nanos: i128 = 0;
        for r in &allocation.resources {
            if let Some(q) = r.amount.get("cpu") {
                cpu_nanos += q.nanos();
            }
            if let Some(q) = r.amount.get("memory") {
                memory_nanos += q.nanos();
            }
        }
        let workload = allocation.workload.as_ref();
        let pick =
            |allocated: i128, limit: Option<Quantity>, dim: &str| -> Result<Option<i128>, String> {
                match limit {
                    Some(l) if allocated > 0 && l.nanos() > allocated => Err(format!(
                        "limits.{dim} {l} is above the allocation's {}",
                        Quantity::from_nanos(allocated)
                    )),
                    Some(l) => Ok(Some(l.nanos())),
                    None if allocated > 0 => Ok(Some(allocated)),
                    None => Ok(None),
                }
            };
        let cpu = pick(cpu_nanos, workload.and_then(|w| w.limits.cpu), "cpu")?;
        let memory = pick(
            memory_nanos,
            workload.and_then(|w| w.limits.memory),
            "memory",
        )?;
        Ok(ResourceLimits {
            cpu_millis: cpu.map(|n| u64::try_from(n / 1_000_000).unwrap_or(u64::MAX).max(1)),
            memory_bytes: memory.map(|n| u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX)),
            pids: Some(
                workload
                    .and_then(|w| w.limits.pids)
                    .map_or(DEFAULT_PIDS, u64::from),
            ),
        })
    }
}
