//! Network interface facts: every interface in `/sys/class/net` but loopback, with its MAC,
//! link state and speed from sysfs and its IP addresses from `getifaddrs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use infraos_api::kinds::NicInfo;
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::SockaddrStorage;

use crate::probe;

/// `IFF_UP` in the interface flags (`<linux/if.h>`).
const IFF_UP: u32 = 0x1;

/// Whether the link is up. `operstate` is the kernel's verdict (RFC 2863) and wins when it has
/// one; drivers that do not track carrier (tun, dummy, some virtual NICs) say `unknown`, and
/// then the administrative `IFF_UP` flag is the best answer there is.
pub fn is_up(operstate: Option<&str>, flags: Option<&str>) -> bool {
    match operstate.map(str::trim) {
        Some("up") => true,
        Some("unknown" | "") | None => flags.and_then(parse_flags).is_some_and(|f| f & IFF_UP != 0),
        Some(_) => false,
    }
}

/// Parses a sysfs `flags` file: hexadecimal with a `0x` prefix (`0x1003`).
fn parse_flags(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

/// Parses a sysfs `speed` file in Mbit/s. Virtual NICs and links without carrier report -1
/// (or fail the read), which is no speed at all.
pub fn parse_speed(text: &str) -> Option<u64> {
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
}

/// A MAC from a sysfs `address` file; all-zero (tunnels, some virtual devices) is no MAC.
pub fn parse_mac(text: &str) -> String {
    let mac = text.trim();
    if mac.bytes().all(|b| b == b'0' || b == b':') {
        String::new()
    } else {
        mac.to_ascii_lowercase()
    }
}

/// `address/prefix`, the prefix being the number of set bits in the netmask; a missing or
/// mismatched netmask means a host address (/32 or /128).
pub fn format_address(address: IpAddr, netmask: Option<IpAddr>) -> String {
    let prefix = match (address, netmask) {
        (IpAddr::V4(_), Some(IpAddr::V4(mask))) => u32::from(mask).count_ones(),
        (IpAddr::V6(_), Some(IpAddr::V6(mask))) => u128::from(mask).count_ones(),
        (IpAddr::V4(_), _) => 32,
        (IpAddr::V6(_), _) => 128,
    };
    format!("{address}/{prefix}")
}

fn ip_of(storage: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        storage.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// IPv4 and IPv6 addresses per interface name, in the kernel's order, without duplicates.
fn addresses_by_interface() -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let addrs = match getifaddrs() {
        Ok(addrs) => addrs,
        Err(errno) => {
            tracing::debug!(error = %errno, "getifaddrs failed; NICs are listed without addresses");
            return by_name;
        }
    };
    for ifaddr in addrs {
        let Some(address) = ifaddr.address.as_ref().and_then(ip_of) else {
            continue;
        };
        let netmask = ifaddr.netmask.as_ref().and_then(ip_of);
        let list = by_name.entry(ifaddr.interface_name).or_default();
        let formatted = format_address(address, netmask);
        if !list.contains(&formatted) {
            list.push(formatted);
        }
    }
    by_name
}

/// Reads the interfaces below `sys_root/class/net`, sorted by name. Addresses come from this
/// process's network namespace whatever `sys_root` is, and are matched by interface name.
pub fn collect(sys_root: &Path) -> Vec<NicInfo> {
    let dir = sys_root.join("class/net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(source) => {
            probe::log(probe::ProbeError::Read { path: dir, source });
            return Vec::new();
        }
    };
    let mut addresses = addresses_by_interface();
    let mut nics: Vec<NicInfo> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if name == "lo" {
                return None;
            }
            let path = entry.path();
            let read = |file: &str| probe::read_text(&path.join(file));
            Some(NicInfo {
                mac: read("address").map(|t| parse_mac(&t)).unwrap_or_default(),
                up: is_up(read("operstate").as_deref(), read("flags").as_deref()),
                speed_mbps: read("speed").and_then(|t| parse_speed(&t)),
                addresses: addresses.remove(&name).unwrap_or_default(),
                name,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn operstate_decides_and_flags_break_unknown() {
        assert!(is_up(Some("up\n"), Some("0x1003\n")));
        assert!(is_up(Some("up\n"), None));
        assert!(
            !is_up(Some("down\n"), Some("0x1003\n")),
            "admin up, no carrier"
        );
        assert!(!is_up(Some("lowerlayerdown\n"), Some("0x1003\n")));
        assert!(
            is_up(Some("unknown\n"), Some("0x1091\n")),
            "tun device that is up"
        );
        assert!(!is_up(Some("unknown\n"), Some("0x1090\n")));
        assert!(!is_up(None, None));
        assert!(!is_up(Some("unknown"), Some("garbage")));
    }

    #[test]
    fn speeds() {
        assert_eq!(parse_speed("25000\n"), Some(25000));
        assert_eq!(parse_speed("-1\n"), None);
        assert_eq!(parse_speed("0\n"), None);
        assert_eq!(parse_speed(""), None);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:AB:cd:ef\n"), "52:54:00:ab:cd:ef");
        assert_eq!(parse_mac("00:00:00:00:00:00\n"), "");
        assert_eq!(
            parse_mac("00:00:00:00\n"),
            "",
            "ip tunnels print four zero octets"
        );
    }

    #[test]
    fn addresses_carry_their_prefix() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let mask = IpAddr::V4(Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(format_address(v4, Some(mask)), "10.1.2.3/20");
        assert_eq!(format_address(v4, None), "10.1.2.3/32");
        let v6: IpAddr = "fe80::5054:ff:fe12:3456"
            .parse::<Ipv6Addr>()
            .unwrap()
            .into();
        let mask6: IpAddr = "ffff:ffff:ffff:ffff::".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(
            format_address(v6, Some(mask6)),
            "fe80::5054:ff:fe12:3456/64"
        );
        assert_eq!(
            format_address(v6, Some(mask)),
            "fe80::5054:ff:fe12:3456/128"
        );
    }

    /// The loopback is the one interface every Linux network namespace has an address on.
    #[test]
    fn getifaddrs_finds_the_loopback_address() {
        let addresses = addresses_by_interface();
        let lo = addresses.get("lo").cloned().unwrap_or_default();
        assert!(lo.contains(&"127.0.0.1/8".to_string()), "{addresses:?}");
    }

    #[test]
    fn collect_skips_loopback_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for (name, state) in [("wlan0", "dormant"), ("lo", "unknown"), ("eth1", "up")] {
            let nic = dir.path().join("class/net").join(name);
            std::fs::create_dir_all(&nic).unwrap();
            std::fs::write(nic.join("operstate"), format!("{state}\n")).unwrap();
            std::fs::write(nic.join("flags"), "0x1003\n").unwrap();
        }
        let nics = collect(dir.path());
        let names: Vec<_> = nics.iter().map(|n| (n.name.as_str(), n.up)).collect();
        assert_eq!(names, vec![("eth1", true), ("wlan0", false)]);
        assert_eq!(nics[0].speed_mbps, None);
        assert_eq!(nics[0].mac, "");
    }
}
