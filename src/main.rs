//! The `infraos` binary; everything lives in `infraos-cli`.
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    infraos_cli::main()
}
