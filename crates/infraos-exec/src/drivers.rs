//! The drivers this build has: `process` today; OCI, VM, Wasm and external plugins next, one
//! file each.

pub mod process;
