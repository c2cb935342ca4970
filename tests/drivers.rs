//! The executor conformance suite (`infraos_agent::driver::conformance`) against each driver,
//! with the real shim: this package's `infraos` binary. Every driver added later (OCI, VM,
//! Wasm) gets its own module here running the same suite unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use infraos_agent::driver::Driver;
use infraos_agent::driver::process::ProcessDriver;

fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the driver conformance suite creates cgroups and namespaces: run it as root (CI does)"
    );
}

fn process_driver() -> Arc<dyn Driver> {
    require_root();
    let driver = ProcessDriver::new(PathBuf::from(env!("CARGO_BIN_EXE_infraos")), 1 << 20);
    assert!(
        driver.hierarchy().is_some(),
        "no cgroup hierarchy found: the process driver's limits cannot be checked"
    );
    Arc::new(driver)
}

fn process_root() -> PathBuf {
    infraos_agent::driver::conformance::scratch("process")
}

mod process {
    infraos_agent::driver_conformance!(super::process_driver, super::process_root);
}
