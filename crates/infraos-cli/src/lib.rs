//! The `infraos` command line: one binary for the control plane, the dev environment, the
//! client verbs and the benchmarks (DESIGN §1). The binary itself is the workspace's root
//! package, a one-line `main` calling [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod commands;
mod output;

#[derive(Parser)]
#[command(
    name = "infraos",
    version,
    about = "InfraOS: one control plane for every machine you already have"
)]
struct Cli {
    /// Client config file (default ~/.config/infraos/config.yaml).
    #[arg(long, global = true, env = "INFRAOS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane, or initialise its data dir.
    Server(commands::server::ServerArgs),
    /// Run the node agent: join, heartbeat, publish inventory, run workloads.
    Agent(commands::agent::AgentArgs),
    /// Server and a local agent on the embedded store in one process, with the client config
    /// written for you.
    Dev(commands::dev::DevArgs),
    /// Tokens for agents to join with.
    JoinToken(commands::join_token::JoinTokenArgs),
    /// API tokens for users: create, list, revoke.
    Token(commands::token::TokenArgs),
    /// Change a node's capability tiers.
    Node(commands::node::NodeArgs),
    /// A claim's workload output.
    Logs(commands::logs::LogsArgs),
    /// Create or update objects from YAML/JSON files, directories or stdin (-).
    Apply(commands::apply::ApplyArgs),
    /// List objects, or show one.
    Get(commands::get::GetArgs),
    /// Show an object in detail: status, lease countdown, scheduling explanation, events.
    Describe(commands::describe::DescribeArgs),
    /// Replay the scheduler's decision for a claim on the snapshot it was made on.
    Explain(commands::explain::ExplainArgs),
    /// Delete objects by name or from files.
    Delete(commands::delete::DeleteArgs),
    /// Extend a claim's lease.
    Renew(commands::lease::RenewArgs),
    /// End a claim's lease now and free its resources.
    Release(commands::lease::ReleaseArgs),
    /// Approve a claim that waits for approval (not your own).
    Approve(commands::lease::ApproveArgs),
    /// Refuse a claim that waits for approval; it fails for good.
    Refuse(commands::lease::RefuseArgs),
    /// The audit chain.
    Audit(commands::audit::AuditArgs),
    /// Print the client and server versions.
    Version,
    /// Benchmarks: the scheduler core, or end to end through a real server.
    Bench(infraos_bench::BenchArgs),
}

/// Options shared by the commands that address namespaced objects.
#[derive(Args, Clone, Debug, Default)]
pub struct NamespaceArg {
    /// The project (namespace).
    #[arg(short = 'n', long = "namespace", env = "INFRAOS_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Parses the command line, runs the command and maps errors to one line and exit code 1.
pub fn main() -> ExitCode {
    // The workload shim runs before anything else: single-threaded, no runtime, no clap.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__shim") {
        let Some(dir) = args.get(2) else {
            eprintln!("usage: infraos __shim TASK_DIR");
            return ExitCode::from(2);
        };
        let code = infraos_agent::shim::main(std::path::Path::new(dir));
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Server(_) | Command::Dev(_) | Command::Agent(_) => "info",
        _ => "warn",
    };
    // Client commands end quietly when their output is closed (`… | head`); the long-running
    // ones (and the benchmarks, which drive servers) keep ignoring SIGPIPE.
    if !matches!(
        cli.command,
        Command::Server(_) | Command::Dev(_) | Command::Agent(_) | Command::Bench(_)
    ) && let Err(e) = infraos_sys::process::default_sigpipe()
    {
        eprintln!("warning: {e}");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => commands::server::run(args).await,
            Command::Dev(args) => commands::dev::run(args).await,
            Command::Agent(args) => commands::agent::run(args).await,
            Command::JoinToken(args) => commands::join_token::run(config.as_deref(), args).await,
            Command::Token(args) => commands::token::run(config.as_deref(), args).await,
            Command::Node(args) => commands::node::run(config.as_deref(), args).await,
            Command::Logs(args) => commands::logs::run(config.as_deref(), args).await,
            Command::Apply(args) => commands::apply::run(config.as_deref(), args).await,
            Command::Get(args) => commands::get::run(config.as_deref(), args).await,
            Command::Describe(args) => commands::describe::run(config.as_deref(), args).await,
            Command::Explain(args) => commands::explain::run(config.as_deref(), args).await,
            Command::Delete(args) => commands::delete::run(config.as_deref(), args).await,
            Command::Renew(args) => commands::lease::renew(config.as_deref(), args).await,
            Command::Release(args) => commands::lease::release(config.as_deref(), args).await,
            Command::Approve(args) => commands::lease::approve(config.as_deref(), args).await,
            Command::Refuse(args) => commands::lease::refuse(config.as_deref(), args).await,
            Command::Audit(args) => commands::audit::run(config.as_deref(), args).await,
            Command::Version => commands::version::run(config.as_deref()).await,
            Command::Bench(args) => infraos_bench::run(config.as_deref(), args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}
