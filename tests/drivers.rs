//! The executor conformance suite (`infraos_agent::driver::conformance`) against each driver,
//! with the real shim: this package's `infraos` binary. Every driver added later (OCI, VM,
//! Wasm) gets its own module here running the same suite unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use infraos_agent::driver::Driver;
use infraos_agent::driver::process::ProcessDriver;

mod support;

fn process_driver() -> Arc<dyn Driver> {
    support::require_root("the driver conformance suite");
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
