//! Memory facts: total and available bytes from `/proc/meminfo`.

use std::path::Path;

use infraos_api::kinds::MemoryInfo;

use crate::probe;

/// Parses `/proc/meminfo` (`Key:   value kB` lines) into bytes. `MemAvailable` is the kernel's
/// estimate of what can be allocated without swapping; kernels before 3.14 lack it, and then
/// `MemFree + Buffers + Cached` stands in. Missing values are 0.
pub fn parse_meminfo(text: &str) -> MemoryInfo {
    let mut total = None;
    let mut available = None;
    let mut legacy_available = 0u64;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(bytes) = parse_amount(rest) else {
            continue;
        };
        match key.trim() {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" | "Buffers" | "Cached" => {
                legacy_available = legacy_available.saturating_add(bytes);
            }
            _ => {}
        }
    }
    let total_bytes = total.unwrap_or(0);
    MemoryInfo {
        total_bytes,
        available_bytes: available.unwrap_or(legacy_available).min(total_bytes),
    }
}

/// `   16384000 kB` → bytes. meminfo's `kB` is KiB; a value without a unit is a count and
/// taken as is.
fn parse_amount(rest: &str) -> Option<u64> {
    let mut parts = rest.split_ascii_whitespace();
    let value = parts.next()?.parse::<u64>().ok()?;
    match parts.next() {
        None => Some(value),
        Some("kB") => Some(value.saturating_mul(1024)),
        Some(_) => None,
    }
}

/// Reads the memory facts below `proc_root`.
pub fn collect(proc_root: &Path) -> MemoryInfo {
    probe::read_text(&proc_root.join("meminfo"))
        .map(|text| parse_meminfo(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:       24683656 kB
MemFree:        22351988 kB
MemAvailable:   24227896 kB
Buffers:            9760 kB
Cached:          1924384 kB
SwapCached:            0 kB
Active:           757788 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
";

    #[test]
    fn total_and_available_in_bytes() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            MemoryInfo {
                total_bytes: 24_683_656 * 1024,
                available_bytes: 24_227_896 * 1024,
            }
        );
    }

    #[test]
    fn old_kernels_without_mem_available_fall_back_to_free_plus_caches() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n";
        assert_eq!(
            parse_meminfo(old),
            MemoryInfo {
                total_bytes: 1000 * 1024,
                available_bytes: 420 * 1024,
            }
        );
    }

    #[test]
    fn garbage_gives_zeros() {
        assert_eq!(
            parse_meminfo("MemTotal: lots\nnonsense\n"),
            MemoryInfo::default()
        );
        assert_eq!(parse_meminfo(""), MemoryInfo::default());
    }
}
