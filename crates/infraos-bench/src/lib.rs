//! `infraos bench scheduler|e2e|agents|workload|signatures|store|coldstart`: the benchmarks and
//! load generators the closing notes quote, kept out of the CLI so that the product binary's
//! commands stay small and the benchmarks can grow their own dependencies. The CLI only
//! forwards [`BenchArgs`] to [`run`]. Like the CLI, this crate is the binary's edge: errors
//! are `anyhow`.
//!
//! The benchmarks the closing notes
//! quote. `scheduler` and `e2e` end with the line `claims/s: X`; `agents` and `workload` (own
//! modules) with a latency line; `signatures` (own module) with the SLH-DSA/Ed25519 ratios.
//!
//! - `scheduler`: the pure scheduler and the applier's re-check on an in-memory snapshot of the
//!   synthetic cluster; the median of `--runs` runs.
//! - `e2e`: a real server process on a temporary data dir (or `--server`), the cluster created
//!   through the API, then M claims submitted concurrently over HTTPS; claims/s counts from the
//!   first submission until the watch has seen every claim allocated. It also runs the
//!   scheduler core on the same objects in this process, as the limit to compare against.
//! - `coldstart` (own module): a server restarted on a store seeded with many nodes and
//!   allocations; time to ready and to the first new claim allocated.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use infraos_client::{Client, ClientConfig};
use infraos_scheduler::Profile;

mod agents;
mod coldstart;
mod e2e;
mod edge;
mod scheduler_core;
mod signatures;
mod store_puts;
mod synthetic;
mod workload;

use crate::e2e::{E2e, e2e};
use crate::scheduler_core::scheduler_core;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The scheduler core alone.
    Scheduler {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        claims: usize,
        /// Claims per batch, as the server's scheduler uses.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tenant and project quotas, two priority classes and two score plugins on.
        #[arg(long)]
        governance: bool,
        /// Every node has eight GPUs; every claim asks for one or two with a CEL selector.
        #[arg(long)]
        devices: bool,
    },
    /// End to end through a real server over HTTPS.
    E2e {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        claims: usize,
        /// Use this running server (with the client config's CA and token) instead of starting one.
        #[arg(long, conflicts_with = "store")]
        server: Option<String>,
        /// Start the server on this store instead of the embedded one, e.g.
        /// `etcd://127.0.0.1:2379/bench` (needs a build with `--features etcd`).
        #[arg(long)]
        store: Option<String>,
        /// Requests in flight at once (many clients at a time, as in production).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Give up waiting for allocations after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// HTTPS connections the submissions are spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Claims per request: 1 creates each with its own request; more submit them through
        /// `claims:batchCreate` (at most 1000), as a job array would.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tenant and project quotas, two priority classes and two score plugins on.
        #[arg(long)]
        governance: bool,
        /// Every node has eight GPUs; every claim asks for one or two with a CEL selector.
        #[arg(long)]
        devices: bool,
    },
    /// Many simulated agents (real protocol, real mTLS, no workloads) against a real server:
    /// heartbeat latency, server memory and CPU.
    Agents {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Heartbeat interval the server tells agents.
        #[arg(long, default_value = "10s")]
        heartbeat: infraos_api::Duration,
        /// Measurement window, after every agent has joined and beaten once.
        #[arg(long, default_value = "60s")]
        duration: infraos_api::Duration,
        /// Joins and reports in flight at once.
        #[arg(long, default_value_t = 32)]
        join_concurrency: usize,
        /// Skip the allocation watch every agent holds.
        #[arg(long)]
        no_watch: bool,
        /// Use this running server (with the client config's CA and token).
        #[arg(long)]
        server: Option<String>,
        /// After the quiet window, a second one with this many connections flooding the API
        /// as one ordinary user; reports heartbeat p99 under flood against quiet.
        #[arg(long, default_value_t = 0)]
        flood: usize,
        /// A last window in which this many connections that never speak are opened (half
        /// plain TCP, half TLS with the HTTP/2 preface), with `/healthz` probed on fresh
        /// connections; reports heartbeat and /healthz p99 under it against quiet.
        #[arg(long, default_value_t = 0)]
        idle_connections: usize,
        /// Loopback addresses (127.0.1.x) the idle connections come from.
        #[arg(long, default_value_t = 32)]
        idle_sources: usize,
        /// Nice value (0 to 19) of the thread that opens and holds the idle connections. The
        /// default, 19, models an attacker on other machines: on a shared 2-core machine, a
        /// flood thread at the server's priority measures CPU contention, not the server.
        /// 0 measures both on one machine.
        #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
        idle_nice: i32,
        /// In that window, this many claims submitted by a project member whose item selector
        /// is a CEL bomb (five nested comprehensions over lists of 100); 4xx answers are
        /// counted, not fatal.
        #[arg(long, default_value_t = 0)]
        cel_bomb: usize,
    },
    /// Claims with a process workload through a real server and a real agent, one after the
    /// other: claim → Running latency, and the agent's RSS. Needs root.
    Workload {
        #[arg(long, default_value_t = 50)]
        claims: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The server's signature algorithms in this process: sign and verify cost per operation
    /// for Ed25519 and SLH-DSA-SHA2-128s, and their ratio.
    Signatures {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The store alone: concurrent single-key puts, the baseline for the API's writes.
    Store {
        /// `etcd://host:port/root`; the embedded store on a temporary data dir when absent.
        #[arg(long)]
        store: Option<String>,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        puts: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// A server restarted on a large store: seeds it through a real server (nodes, resources,
    /// claims its scheduler allocates), stops it, then restarts a fresh one `--runs` times:
    /// time to ready, time to the first new claim allocated, RSS.
    Coldstart {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Claims seeded and allocated before the restarts.
        #[arg(long, default_value_t = 100_000)]
        allocations: usize,
        /// `etcd://host:port/prefix` (an unused prefix); the embedded store when absent.
        #[arg(long)]
        store: Option<String>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Longest wait for one step (the seeded allocations, a restart), in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
}

/// Runs one benchmark; `config` is the client config file (`--config`) used with `--server`.
pub async fn run(config: Option<&std::path::Path>, args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Scheduler {
            nodes,
            claims,
            batch,
            runs,
            governance,
            devices,
        } => {
            let synthetic = synthetic::cluster(nodes, claims, governance, devices);
            let mut rates = Vec::new();
            for run in 1..=runs.max(1) {
                let (rate, placed) = scheduler_core(&synthetic, batch, governance)?;
                println!("run {run}: {placed}/{claims} placed, {rate:.0} claims/s");
                rates.push(rate);
            }
            println!(
                "nodes: {nodes}, claims: {claims}, batch: {batch}, governance: {governance}, devices: {devices}, runs: {}",
                rates.len()
            );
            println!("claims/s: {:.0}", median(&mut rates));
            Ok(())
        }
        BenchCommand::E2e {
            nodes,
            claims,
            server,
            store,
            concurrency,
            timeout,
            connections,
            batch,
            governance,
            devices,
        } => {
            if !(1..=infraos_server::api::MAX_BATCH_ITEMS).contains(&batch) {
                anyhow::bail!(
                    "--batch must be 1 to {}, not {batch}",
                    infraos_server::api::MAX_BATCH_ITEMS
                );
            }
            e2e(E2e {
                nodes,
                claims,
                server,
                store,
                client_config: config.map(std::path::Path::to_path_buf),
                concurrency: concurrency.max(1),
                connections: connections.max(1),
                batch,
                timeout: Duration::from_secs(timeout),
                governance,
                devices,
            })
            .await
        }
        BenchCommand::Agents {
            agents,
            heartbeat,
            duration,
            join_concurrency,
            no_watch,
            server,
            flood,
            idle_connections,
            idle_sources,
            idle_nice,
            cel_bomb,
        } => {
            agents::run(agents::Options {
                agents,
                heartbeat: heartbeat.as_std(),
                duration: duration.as_std(),
                join_concurrency,
                watch: !no_watch,
                server,
                client_config: config.map(std::path::Path::to_path_buf),
                flood,
                idle_connections,
                idle_sources,
                idle_nice,
                cel_bomb,
            })
            .await
        }
        BenchCommand::Workload { claims, runs } => {
            workload::run(workload::Options { claims, runs }).await
        }
        BenchCommand::Signatures { runs } => signatures::run(runs.max(1)),
        BenchCommand::Store {
            store,
            clients,
            puts,
            runs,
        } => {
            store_puts::run(store_puts::Options {
                store,
                clients,
                puts,
                runs,
            })
            .await
        }
        BenchCommand::Coldstart {
            nodes,
            allocations,
            store,
            runs,
            timeout,
        } => {
            coldstart::run(coldstart::Options {
                nodes,
                allocations,
                store,
                runs,
                timeout: Duration::from_secs(timeout),
            })
            .await
        }
    }
}

/// The value at quantile `q` of sorted samples (nearest rank); 0 when there are none.
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The `scheduler` part of a `server.yaml`.
#[derive(serde::Deserialize)]
struct ServerConfigScheduler {
    scheduler: Profile,
}

/// Resident and peak resident memory of a process in KiB (`self` for this one).
fn memory_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// CPU time (user + system) used so far by a process, from /proc; `None` where unavailable.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Stops the server child process when dropped.
struct ChildServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl ChildServer {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `infraos server` on a temporary data dir with `config_yaml` as its `server.yaml`,
/// and waits until it is ready.
async fn start_server(config_yaml: &str) -> anyhow::Result<(ChildServer, ClientConfig)> {
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let data = dir.path().to_path_buf();
    infraos_server::init::init_data_dir(&data, &[]).await?;
    if !config_yaml.is_empty() {
        std::fs::write(data.join(infraos_server::config::CONFIG_FILE), config_yaml)
            .context("cannot write server.yaml")?;
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let child = std::process::Command::new(exe)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("cannot start the server process")?;
    let guard = ChildServer { child, dir };
    let url_file = data.join(infraos_server::URL_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = loop {
        if let Ok(url) = std::fs::read_to_string(&url_file) {
            break url.trim().to_string();
        }
        if Instant::now() > deadline {
            anyhow::bail!("the server did not start within 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let config = ClientConfig {
        server,
        ca_pem: Some(std::fs::read(data.join("ca.crt"))?),
        token: Some(
            std::fs::read_to_string(data.join("admin.token"))?
                .trim()
                .to_string(),
        ),
        identity: None,
    };
    let client = Client::new(&config)?;
    while !matches!(
        client
            .raw(infraos_client::Method::GET, "/readyz", None, vec![], None)
            .await,
        Ok((200, _))
    ) {
        if Instant::now() > deadline {
            anyhow::bail!("the server did not become ready within 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((guard, config))
}
