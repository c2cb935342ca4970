//! `infraos server [--data-dir D] [--listen ADDR]` and `infraos server init`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use infraos_server::{Server, ServerConfig, SystemClock};

#[derive(Args)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// Data dir holding the store, CA, certificates and admin token.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/infraos",
        env = "INFRAOS_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// Address to listen on (overrides server.yaml); port 0 picks a free one.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where objects live (overrides server.yaml's `store`): `etcd://host:port,host:port`
    /// (a build with the `etcd` feature); the embedded store in the data dir when absent.
    #[arg(long)]
    store: Option<String>,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Create the CA, the server certificate and the admin token in the data dir.
    Init {
        /// Extra names or IP addresses for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ServerCommand::Init { sans }) => init(&args.data_dir, &sans).await,
        None => serve(args.data_dir, args.listen, args.store).await,
    }
}

async fn init(data_dir: &std::path::Path, sans: &[String]) -> anyhow::Result<()> {
    let outcome = infraos_server::init::init_data_dir(data_dir, sans)
        .await
        .with_context(|| format!("cannot initialise {}", data_dir.display()))?;
    match outcome.admin_token {
        Some(token) => {
            println!("Initialised {}", data_dir.display());
            println!("CA certificate: {}", outcome.ca_cert.display());
            println!(
                "Admin token (shown once; also in {}/admin.token, mode 0600):",
                data_dir.display()
            );
            println!("{token}");
        }
        None if outcome.signing_key_created => {
            println!(
                "{} is already initialised; added its signing key",
                data_dir.display()
            )
        }
        None => println!(
            "{} is already initialised; nothing changed",
            data_dir.display()
        ),
    }
    if outcome.signing_key_created {
        println!(
            "Signing public key (also in {}/signing.pub; pin it to verify audit exports):",
            data_dir.display()
        );
        println!("{}", outcome.public_key);
    }
    Ok(())
}

/// Runs a server until SIGINT or SIGTERM.
pub async fn serve(
    data_dir: PathBuf,
    listen: Option<SocketAddr>,
    store: Option<String>,
) -> anyhow::Result<()> {
    let mut config = ServerConfig::load(&data_dir)?;
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(store) = store {
        config.store = store;
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("--store: {reason}"))?;
    }
    // One connection per agent: thousands of them outgrow the usual soft limit of 1,024.
    // The connection cap is kept below the limit (connectionLimits).
    config.open_files_limit = match infraos_sys::process::raise_nofile_limit() {
        Ok(limit) => {
            tracing::debug!(limit, "open files limit");
            Some(limit)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit");
            None
        }
    };
    let server = Server::start(config, Arc::new(SystemClock)).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
