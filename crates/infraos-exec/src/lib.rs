//! The InfraOS executor layer (DESIGN §9): the driver contract ([`driver`]), the agent's
//! registry of drivers by name ([`registry`]), the drivers themselves ([`drivers`]), the
//! workload shim that supervises a process run apart from the agent ([`shim`]), workload logs
//! ([`logs`]) and, behind the `conformance` feature, the suite every driver passes.
//!
//! It depends on the API's types and on `infraos-sys` for OS access, nothing else of ours: the
//! agent decides *what* runs, this crate *how*.
#![forbid(unsafe_code)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod driver;
pub mod drivers;
pub mod logs;
pub mod registry;
pub mod shim;

pub use driver::{
    Capabilities, Deadline, Driver, DriverError, ExitResult, Isolation, TaskConfig, TaskHandle,
    TaskState, TaskStats,
};
pub use registry::DriverRegistry;

use infraos_api::time::{Clock, SystemClock};

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &std::path::Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Wall-clock milliseconds, as runs' records carry them (the shim is a process of its own,
/// with no clock handed to it).
pub(crate) fn now_ms() -> i64 {
    SystemClock.now().unix_millis()
}
