//! The `infraos` binary; everything lives in `infraos-cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    infraos_cli::main()
}
