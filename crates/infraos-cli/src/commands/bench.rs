//! `infraos bench scheduler|e2e|agents|workload|signatures`: the benchmarks the closing notes
//! quote. `scheduler` and `e2e` end with the line `claims/s: X`; `agents` and `workload` (own
//! modules) with a latency line; `signatures` (own module) with the SLH-DSA/Ed25519 ratios.
//!
//! - `scheduler`: the pure scheduler and the applier's re-check on an in-memory snapshot of the
//!   synthetic cluster; the median of `--runs` runs.
//! - `e2e`: a real server process on a temporary data dir (or `--server`), the cluster created
//!   through the API, then M claims submitted concurrently over HTTPS; claims/s counts from the
//!   first submission until the watch has seen every claim allocated. It also runs the
//!   scheduler core on the same objects in this process, as the limit to compare against.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use infraos_api::kinds::{
    Claim, NodeSpec, PriorityClassSpec, ProjectSpec, QuotaSpec, ResourceClassSpec, ResourceSpec,
};
use infraos_api::object::decode;
use infraos_client::{Client, ClientConfig};
use infraos_scheduler::{AllocationMeta, Outcome, Profile, Scheduler, Snapshot};

use crate::synthetic::{self, PROJECT, Synthetic};

mod agents;
mod edge;
mod signatures;
mod workload;

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
        #[arg(long)]
        server: Option<String>,
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
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
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

/// Builds the snapshot from the synthetic manifests and schedules every claim the way the
/// server does (plan, re-check, apply). Returns claims/s and how many were placed.
fn scheduler_core(s: &Synthetic, batch: usize, governance: bool) -> anyhow::Result<(f64, usize)> {
    let mut snapshot = Snapshot::new();
    for v in &s.setup {
        match v["kind"].as_str() {
            Some("ResourceClass") => {
                let c = decode::<ResourceClassSpec>(v)?;
                snapshot.upsert_class(c.name(), &c.spec);
            }
            Some("Project") => {
                let p = decode::<ProjectSpec>(v)?;
                snapshot.upsert_project(p.name(), &p.spec.tenant);
            }
            Some("Quota") => {
                let q = decode::<QuotaSpec>(v)?;
                snapshot.upsert_quota(q.name(), &q.spec);
            }
            Some("PriorityClass") => {
                let p = decode::<PriorityClassSpec>(v)?;
                snapshot.upsert_priority_class(p.name(), &p.spec);
            }
            _ => {}
        }
    }
    for v in &s.nodes {
        let n = decode::<NodeSpec>(v)?;
        snapshot.upsert_node(n.name(), &n.metadata.labels, &n.spec, None);
    }
    for v in &s.resources {
        let r = decode::<ResourceSpec>(v)?;
        snapshot.upsert_resource(r.name(), &r.metadata.labels, &r.spec);
    }
    let claims: Vec<Claim> = s.claims.iter().map(decode).collect::<Result<_, _>>()?;
    let keyed: Vec<(String, &Claim)> = claims
        .iter()
        .map(|c| (format!("{PROJECT}/{}", c.name()), c))
        .collect();
    let profile = if governance {
        serde_norway::from_str::<ServerConfigScheduler>(synthetic::GOVERNANCE_PROFILE)?.scheduler
    } else {
        Profile::default()
    };
    let mut scheduler = Scheduler::new(profile)?;
    let by_key: HashMap<&str, &Claim> = keyed.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    let start = Instant::now();
    let mut placed = 0;
    for chunk in keyed.chunks(batch.max(1)) {
        let plan = scheduler.plan(&snapshot, chunk);
        for d in &plan.decisions {
            if let Outcome::Placed(p) = &d.outcome
                && snapshot.fits(&p.resources).is_ok()
            {
                let claim = by_key.get(d.claim_key.as_str());
                let meta = AllocationMeta {
                    priority: claim
                        .map_or(0, |c| infraos_scheduler::claim_priority(&snapshot, c).0),
                    borrowing: p.borrowing,
                    ..AllocationMeta::default()
                };
                snapshot.apply_allocation(&d.claim_key, &p.resources, meta);
                placed += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((claims.len() as f64 / elapsed.max(1e-9), placed))
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

async fn create_all(
    client: &Client,
    objects: &[serde_json::Value],
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut results = futures::stream::iter(objects.iter().map(|o| {
        let client = client.clone();
        async move { client.apply(o).await }
    }))
    .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// What an end-to-end run submits, and how.
struct E2e {
    nodes: usize,
    claims: usize,
    server: Option<String>,
    concurrency: usize,
    connections: usize,
    batch: usize,
    timeout: Duration,
    governance: bool,
    devices: bool,
}

async fn e2e(options: E2e) -> anyhow::Result<()> {
    let E2e {
        nodes,
        claims,
        server,
        concurrency,
        connections,
        batch,
        timeout,
        governance,
        devices,
    } = options;
    let synthetic = synthetic::cluster(nodes, claims, governance, devices);
    let (guard, config) = match server {
        Some(url) => (None, ClientConfig::load_for(None, Some(&url))?),
        None => {
            let profile = if governance {
                synthetic::GOVERNANCE_PROFILE
            } else {
                ""
            };
            let (g, c) = start_server(profile).await?;
            (Some(g), c)
        }
    };
    let client = Client::new(&config)?;
    let t = Instant::now();
    for o in &synthetic.setup {
        client.apply(o).await?;
    }
    create_all(&client, &synthetic.nodes, concurrency).await?;
    create_all(&client, &synthetic.resources, concurrency).await?;
    println!(
        "setup: {nodes} nodes, {} resources through the API in {:.1}s",
        synthetic.resources.len(),
        t.elapsed().as_secs_f64()
    );

    // Watch claims from now on; count each claim once when it is Allocated or Unschedulable.
    let claim_kind = super::kind("claims")?;
    let (_, revision) = client
        .list(claim_kind, Some(PROJECT), Some("bench=true"))
        .await?;
    // Only what is counted is decoded: the load generator shares the machine it measures.
    // Bookmarks and errors carry no name (nor always metadata): decoded as empty.
    #[derive(serde::Deserialize)]
    struct Seen {
        #[serde(default)]
        metadata: SeenMeta,
        #[serde(default)]
        status: Option<SeenStatus>,
    }
    #[derive(serde::Deserialize, Default)]
    struct SeenMeta {
        #[serde(default)]
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct SeenStatus {
        #[serde(default)]
        phase: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    }
    let mut events = client
        .watch_as::<Seen>(claim_kind, Some(PROJECT), None, Some(revision))
        .await?;
    let expected = synthetic.claims.len();
    let watcher = tokio::spawn(async move {
        let mut allocated = HashSet::new();
        let mut unschedulable = HashSet::new();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let name = event.object.metadata.name;
            let status = event.object.status;
            let phase = status.as_ref().and_then(|s| s.phase.as_deref());
            let reason = status.as_ref().and_then(|s| s.reason.as_deref());
            match phase {
                Some("Allocated") => {
                    unschedulable.remove(&name);
                    allocated.insert(name);
                }
                Some("Pending") if reason == Some("Unschedulable") => {
                    unschedulable.insert(name);
                }
                _ => {}
            }
            if allocated.len() + unschedulable.len() >= expected {
                break;
            }
        }
        (Instant::now(), allocated.len(), unschedulable.len())
    });

    // Requests are prepared before the clock starts, as load generators do.
    let bodies: Vec<bytes::Bytes> = if batch > 1 {
        synthetic
            .claims
            .chunks(batch)
            .map(|items| {
                serde_json::to_vec(&serde_json::json!({ "items": items })).map(bytes::Bytes::from)
            })
            .collect::<Result<_, _>>()?
    } else {
        synthetic
            .claims
            .iter()
            .map(|c| serde_json::to_vec(c).map(bytes::Bytes::from))
            .collect::<Result<_, _>>()?
    };
    let server_pid = guard.as_ref().map(|g| g.child.id().to_string());
    let server_cpu_before = server_pid.as_deref().and_then(cpu_seconds);
    let client_cpu_before = cpu_seconds("self");
    // One client per connection (each reqwest client keeps one HTTP/2 connection).
    let clients: Vec<Arc<Client>> = (0..connections)
        .map(|_| Client::new(&config).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut submissions = futures::stream::iter(bodies.into_iter().enumerate().map(|(i, body)| {
        let client = Arc::clone(&clients[i % clients.len()]);
        async move {
            if batch > 1 {
                client
                    .create_batch_quiet(claim_kind, Some(PROJECT), body)
                    .await
            } else {
                client.create_quiet(claim_kind, Some(PROJECT), body).await
            }
        }
    }))
    .buffer_unordered(concurrency);
    while let Some(r) = submissions.next().await {
        r.context("submitting a claim")?;
    }
    let submitted = start.elapsed().as_secs_f64();
    println!(
        "submitted {claims} claims in {submitted:.2}s ({:.0} creates/s, {batch} per request, {concurrency} requests in flight over {connections} connections)",
        claims as f64 / submitted
    );
    let (done, allocated, unschedulable) = tokio::time::timeout(timeout, watcher)
        .await
        .context("timed out waiting for allocations")?
        .context("the watch task failed")?;
    let elapsed = done.duration_since(start).as_secs_f64();
    println!(
        "allocated {allocated}/{claims} claims ({unschedulable} unschedulable) in {elapsed:.2}s end to end"
    );
    let per_claim = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) if claims > 0 => format!("{:.0}us", (a - b) * 1e6 / claims as f64),
        _ => "n/a".to_string(),
    };
    println!(
        "cpu per claim: server {}, this client {}",
        per_claim(
            server_cpu_before,
            server_pid.as_deref().and_then(cpu_seconds)
        ),
        per_claim(client_cpu_before, cpu_seconds("self"))
    );
    let (core, _) = scheduler_core(&synthetic, 512, governance)?;
    println!("scheduler core on the same cluster and claims: {core:.0} claims/s");
    println!("claims/s: {:.0}", allocated as f64 / elapsed.max(1e-9));
    drop(guard);
    Ok(())
}
