//! A cheap, stable fingerprint of an inventory, so an agent can tell whether its machine
//! changed since it last published and skip the write when it did not.
//!
//! The gauges that move all the time (available memory, free disk space) are left out on
//! purpose: with them every collection would look like a change. Everything else counts,
//! including NIC state and addresses. The hash is FNV-1a over a fixed encoding (lengths
//! before strings, little-endian integers, tags for `Option`), so it is the same across
//! processes, machines and Rust versions, unlike `std`'s `DefaultHasher`.

use infraos_api::kinds::Inventory;

/// The fingerprint of everything in `inv` except `memory.available_bytes` and each disk's
/// `free_bytes`. Equal inventories always have equal fingerprints; unequal ones almost
/// always differ, which is all a "has it changed" check needs.
pub fn fingerprint(inv: &Inventory) -> u64 {
    let mut h = Fnv::new();
    let cpu = &inv.cpu;
    h.str(&cpu.model);
    h.u64(cpu.cores.into());
    h.opt(cpu.physical_cores.map(u64::from));
    h.u64(cpu.sockets.into());
    h.u64(cpu.numa_nodes.into());

    h.u64(inv.memory.total_bytes);

    h.len(inv.disks.len());
    for d in &inv.disks {
        h.str(&d.mount);
        h.str(&d.device);
        h.str(&d.filesystem);
        h.u64(d.size_bytes);
    }

    h.len(inv.nics.len());
    for n in &inv.nics {
        h.str(&n.name);
        h.str(&n.mac);
        h.len(n.addresses.len());
        for a in &n.addresses {
            h.str(a);
        }
        h.opt(n.speed_mbps);
        h.bool(n.up);
    }

    h.len(inv.gpus.len());
    for g in &inv.gpus {
        h.u64(g.index.into());
        h.str(&g.vendor);
        h.str(&g.model);
        h.u64(g.memory_mib);
        h.str(&g.uuid);
        h.str(&g.pci_bus_id);
        h.opt(g.numa_node.map(u64::from));
    }

    let os = &inv.os;
    h.str(&os.kernel);
    h.str(&os.os);
    h.str(&os.arch);
    h.str(&os.hostname);

    let rt = &inv.runtimes;
    h.str(&rt.cgroup);
    h.len(rt.oci.len());
    for o in &rt.oci {
        h.str(o);
    }
    h.bool(rt.kvm);
    h.bool(rt.wasm);
    h.0
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        self.u64(u64::try_from(n).unwrap_or(u64::MAX));
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }

    fn bool(&mut self, b: bool) {
        self.bytes(&[u8::from(b)]);
    }

    fn opt(&mut self, v: Option<u64>) {
        match v {
            None => self.bytes(&[0]),
            Some(v) => {
                self.bytes(&[1]);
                self.u64(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use infraos_api::kinds::{DiskInfo, NicInfo};

    use super::*;

    fn sample() -> Inventory {
        let mut inv = Inventory::default();
        inv.cpu.cores = 8;
        inv.memory.total_bytes = 1 << 34;
        inv.memory.available_bytes = 1 << 33;
        inv.disks.push(DiskInfo {
            mount: "/".into(),
            device: "/dev/vda".into(),
            filesystem: "ext4".into(),
            size_bytes: 100,
            free_bytes: 50,
        });
        inv.nics.push(NicInfo {
            name: "eth0".into(),
            up: true,
            ..NicInfo::default()
        });
        inv
    }

    #[test]
    fn known_value_is_stable_across_releases() {
        // FNV-1a of the empty input is its offset basis; an empty inventory hashes the same
        // way every time, and this pins the encoding against accidental changes.
        assert_eq!(Fnv::new().0, 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv::new();
        h.bytes(b"a");
        assert_eq!(
            h.0, 0xaf63_dc4c_8601_ec8c,
            "published FNV-1a 64 test vector for \"a\""
        );
        assert_eq!(fingerprint(&sample()), fingerprint(&sample()));
    }

    #[test]
    fn gauges_do_not_change_it() {
        let mut moved = sample();
        moved.memory.available_bytes = 7;
        moved.disks[0].free_bytes = 3;
        assert_eq!(fingerprint(&sample()), fingerprint(&moved));
    }

    #[test]
    fn facts_do_change_it() {
        let base = fingerprint(&sample());
        let mut changed = sample();
        changed.nics[0].up = false;
        assert_ne!(base, fingerprint(&changed));
        let mut changed = sample();
        changed.disks[0].size_bytes = 101;
        assert_ne!(base, fingerprint(&changed));
        let mut changed = sample();
        changed.runtimes.oci.push("runc".into());
        assert_ne!(base, fingerprint(&changed));
        // Length prefixes keep field boundaries: moving a character between fields is a change.
        let mut a = sample();
        a.os.kernel = "ab".into();
        let mut b = sample();
        b.os.kernel = "a".into();
        b.os.os = "b".into();
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
