//! `infraos bench agents --agents N`: the control plane's cost of a fleet. Simulated agents
//! speak the real protocol over real mTLS (each joins with the token, gets its own
//! certificate, holds its own TLS connection, publishes a node report, watches its
//! allocations and heartbeats) but run no workloads. It reports heartbeat latency as the
//! agents see it, and the server's memory and CPU, measured over a window after every agent
//! has joined, reported and beaten once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use infraos_api::Kind as _;
use infraos_api::agent_protocol::{
    CertificateResponse, HeartbeatResponse, JoinRequest, NodeReport, NodeReportResponse,
    PROTOCOL_VERSION,
};
use infraos_api::kinds::{
    AgentInfo, Allocation, AllocationSpec, CpuInfo, Inventory, MemoryInfo, NODE_LABEL, NodeSpec,
};
use infraos_api::quantity::Quantity;
use infraos_client::{Client, ClientConfig, ClientIdentity, Method};
use parking_lot::Mutex;

use super::{ChildServer, cpu_seconds, edge, memory_kib, percentile, start_server};

pub struct Options {
    pub agents: usize,
    pub heartbeat: Duration,
    pub duration: Duration,
    pub join_concurrency: usize,
    pub watch: bool,
    pub server: Option<String>,
    /// The client config file for `server`'s CA and token (`--config`).
    pub client_config: Option<std::path::PathBuf>,
    /// Clients flooding the API as one ordinary user during a second window.
    pub flood: usize,
    /// Connections that never speak, opened during a last window…
    pub idle_connections: usize,
    /// …from this many loopback addresses…
    pub idle_sources: usize,
    /// …by a thread at this nice value…
    pub idle_nice: i32,
    /// …while this many CEL-bomb claims are submitted ([`super::edge`]).
    pub cel_bomb: usize,
}

/// One simulated agent: its name and its mTLS client.
struct SimAgent {
    name: String,
    client: Client,
}

#[derive(Default)]
struct Stats {
    measuring: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
    errors: AtomicU64,
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        version: format!("bench-{}", env!("CARGO_PKG_VERSION")),
        protocol_version: PROTOCOL_VERSION,
        drivers: vec!["process".into()],
        address: None,
        certificate_expires: None,
        fingerprints: Default::default(),
    }
}

/// What a 64-core, 256 GiB machine reports, without the disks and NICs.
fn inventory() -> Inventory {
    Inventory {
        cpu: CpuInfo {
            model: "simulated".into(),
            cores: 64,
            physical_cores: Some(32),
            sockets: 2,
            numa_nodes: 2,
        },
        memory: MemoryInfo {
            total_bytes: 256 << 30,
            available_bytes: 250 << 30,
        },
        ..Inventory::default()
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let limit = infraos_sys::process::raise_nofile_limit().unwrap_or(0);
    if (limit as usize) < o.agents + 256 {
        anyhow::bail!(
            "--agents {}: needs about {} open files (one connection per agent), but the hard \
             limit is {limit} (see `ulimit -Hn`)",
            o.agents,
            o.agents + 256
        );
    }
    let hb_ms = o.heartbeat.as_millis().max(100);
    let config = format!(
        "heartbeatInterval: {hb_ms}ms\nnodeGracePeriod: {}ms\n",
        hb_ms * 4
    );
    let (guard, admin_config): (Option<ChildServer>, ClientConfig) = match &o.server {
        Some(url) => (
            None,
            ClientConfig::load_for(o.client_config.as_deref(), Some(url))?,
        ),
        None => {
            let (g, c) = start_server(&config).await?;
            (Some(g), c)
        }
    };
    let server_pid = guard.as_ref().map(ChildServer::pid);
    let admin = Client::new(&admin_config)?;
    let created: serde_json::Value = admin
        .send_json(
            Method::POST,
            "/apis/infraos.io/v1/jointokens",
            &serde_json::json!({"ttl": "2h", "tiers": ["inventory", "execute"],
                                "description": "bench agents"}),
        )
        .await
        .context("cannot create a join token")?;
    let token = created["token"].as_str().unwrap_or_default().to_string();
    let anonymous = Client::new(&ClientConfig {
        token: None,
        identity: None,
        ..admin_config.clone()
    })?;

    let t = Instant::now();
    let agents: Vec<SimAgent> = futures::stream::iter(0..o.agents)
        .map(|i| join(&anonymous, &admin_config, &token, i))
        .buffer_unordered(o.join_concurrency.max(1))
        .try_collect()
        .await?;
    let join_s = t.elapsed().as_secs_f64();
    println!(
        "joined: {} agents in {join_s:.1}s ({:.0} joins/s), each with its own key, certificate and TLS connection",
        agents.len(),
        agents.len() as f64 / join_s.max(1e-9)
    );

    let t = Instant::now();
    futures::stream::iter(agents.iter())
        .map(report)
        .buffer_unordered(o.join_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "reported: {} nodes and their compute resources in {:.1}s",
        agents.len(),
        t.elapsed().as_secs_f64()
    );

    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    let n = agents.len().max(1) as u128;
    for (i, agent) in agents.into_iter().enumerate() {
        let agent = Arc::new(agent);
        // Spread evenly over the interval, as agents started at random times are.
        let offset = Duration::from_millis(u64::try_from(i as u128 * hb_ms / n).unwrap_or(0));
        tasks.push(tokio::spawn(heartbeats(
            agent.clone(),
            offset,
            Duration::from_millis(u64::try_from(hb_ms).unwrap_or(10_000)),
            stats.clone(),
        )));
        if o.watch {
            tasks.push(tokio::spawn(watch(agent)));
        }
    }
    // /healthz on fresh connections, quiet and under the edge load, when that is asked for.
    let prober = if o.idle_connections > 0 || o.cel_bomb > 0 {
        Some(edge::Prober::spawn(&admin_config)?)
    } else {
        None
    };
    // Every agent beats once before the window opens.
    tokio::time::sleep(o.heartbeat + Duration::from_secs(2)).await;
    let cpu_before = server_pid.as_deref().and_then(cpu_seconds);
    let window = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    if let Some(p) = &prober {
        p.set(edge::Phase::Quiet);
    }
    tokio::time::sleep(o.duration).await;
    stats.measuring.store(false, Ordering::Relaxed);
    if let Some(p) = &prober {
        p.set(edge::Phase::Off);
    }
    let window_s = window.elapsed().as_secs_f64();
    let cpu_after = server_pid.as_deref().and_then(cpu_seconds);

    let mut latencies = std::mem::take(&mut *stats.latencies_us.lock());
    latencies.sort_unstable();
    let ms = |us: u32| f64::from(us) / 1000.0;
    let (nodes, _) = admin.list(NodeSpec::INFO, None, None).await?;
    let ready = nodes
        .iter()
        .filter(|n| {
            n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count();
    println!(
        "agents: {n}, heartbeat interval: {hb_ms} ms, allocation watches: {}, window: {window_s:.0}s",
        if o.watch { "yes" } else { "no" }
    );
    println!(
        "heartbeats: {} ({:.0}/s), errors: {}, nodes Ready: {ready}/{}",
        latencies.len(),
        latencies.len() as f64 / window_s.max(1e-9),
        stats.errors.load(Ordering::Relaxed),
        nodes.len()
    );
    println!(
        "heartbeat latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or(0)),
    );
    if let Some(pid) = &server_pid {
        let (rss, peak) = memory_kib(pid).unwrap_or((0, 0));
        let cpu = match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => format!("{:.1}%", (b - a) / window_s.max(1e-9) * 100.0),
            _ => "n/a".into(),
        };
        println!(
            "server: RSS {:.0} MiB (peak {:.0} MiB), CPU {cpu} of one core during the window",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    if let Some((rss, _)) = memory_kib("self") {
        println!(
            "load generator: RSS {:.0} MiB (on the same cores as the server)",
            rss as f64 / 1024.0
        );
    }
    println!("heartbeat p99 ms: {:.2}", ms(percentile(&latencies, 0.99)));
    if o.flood > 0 {
        flood_window(
            &admin,
            &admin_config,
            &stats,
            o.flood,
            o.duration,
            &latencies,
        )
        .await?;
    }
    if let Some(p) = &prober {
        edge_window(
            &admin,
            &admin_config,
            &stats,
            &o,
            &latencies,
            p,
            server_pid.as_deref(),
        )
        .await?;
    }
    for task in &tasks {
        task.abort();
    }
    drop(guard);
    Ok(())
}

/// The last window: idle connections and CEL-bomb claims (issue 16), heartbeats and /healthz
/// against the quiet window.
async fn edge_window(
    admin: &Client,
    admin_config: &ClientConfig,
    stats: &Arc<Stats>,
    o: &Options,
    quiet: &[u32],
    prober: &edge::Prober,
    server_pid: Option<&str>,
) -> anyhow::Result<()> {
    let bomber = if o.cel_bomb > 0 {
        Some(edge::setup_bomb(admin, admin_config).await?)
    } else {
        None
    };
    if o.idle_connections > 0 {
        // Beyond the usual hard limit where the process may (root): this process holds them.
        let want = (o.idle_connections + o.agents + 4096) as u64;
        let limit = infraos_sys::process::raise_nofile_limit_to(want).unwrap_or(0);
        if limit < want {
            println!(
                "note: this process may open {limit} files; fewer than {} idle connections may open",
                o.idle_connections
            );
        }
    }
    let idle_counts = Arc::new(edge::IdleCounts::default());
    let bomb_counts = Arc::new(edge::BombCounts::default());
    let errors_before = stats.errors.load(Ordering::Relaxed);
    stats.latencies_us.lock().clear();
    let cpu_before = (server_pid.and_then(cpu_seconds), cpu_seconds("self"));
    let window = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    prober.set(edge::Phase::Load);
    let idle = if o.idle_connections > 0 {
        Some(edge::open_idle(
            admin_config,
            o.idle_connections,
            o.idle_sources,
            o.idle_nice,
            idle_counts.clone(),
        )?)
    } else {
        None
    };
    let bombs = bomber.map(|c| edge::submit_bombs(c, o.cel_bomb, bomb_counts.clone()));
    tokio::time::sleep(o.duration).await;
    stats.measuring.store(false, Ordering::Relaxed);
    prober.set(edge::Phase::Off);
    let window_s = window.elapsed().as_secs_f64();
    let cpu_after = (server_pid.and_then(cpu_seconds), cpu_seconds("self"));
    let share = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}%", (b - a) / window_s.max(1e-9) * 100.0),
        _ => "n/a".into(),
    };
    println!(
        "CPU during the edge window, of one core: server {}, load generator {}",
        share(cpu_before.0, cpu_after.0),
        share(cpu_before.1, cpu_after.1)
    );
    let open_fds = server_pid
        .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(|d| d.count());
    let rss = server_pid.and_then(memory_kib);
    drop(idle);
    if let Some(task) = bombs {
        task.abort();
    }
    let mut latencies = std::mem::take(&mut *stats.latencies_us.lock());
    latencies.sort_unstable();
    let (quiet_health, quiet_fail) = prober.results(edge::Phase::Quiet);
    let (load_health, load_fail) = prober.results(edge::Phase::Load);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    if o.idle_connections > 0 {
        println!(
            "idle connections: {} attempted from {} addresses (flood thread at nice {}) in {window_s:.0}s, {} opened, {} failed to open, {} closed by the server",
            n(&idle_counts.attempted),
            o.idle_sources,
            o.idle_nice,
            n(&idle_counts.opened),
            n(&idle_counts.failed),
            n(&idle_counts.closed_by_server),
        );
    }
    if o.cel_bomb > 0 {
        let answered = n(&bomb_counts.ok)
            + n(&bomb_counts.client_errors)
            + n(&bomb_counts.server_errors)
            + n(&bomb_counts.failed);
        println!(
            "CEL-bomb claims: {} sent, {} accepted, {} refused (4xx), {} 5xx, {} failed, {} still unanswered at the end",
            n(&bomb_counts.sent),
            n(&bomb_counts.ok),
            n(&bomb_counts.client_errors),
            n(&bomb_counts.server_errors),
            n(&bomb_counts.failed),
            n(&bomb_counts.sent).saturating_sub(answered),
        );
        if let Some(why) = bomb_counts.first_refusal.lock().as_deref() {
            println!("  first refusal: {why}");
        }
    }
    if let (Some(fds), Some((rss, _))) = (open_fds, rss) {
        println!(
            "server at the end of the window: {fds} open files, RSS {:.0} MiB",
            rss as f64 / 1024.0
        );
    }
    println!(
        "heartbeat latency ms under edge load: {} (errors {})",
        edge::summary(&latencies),
        stats.errors.load(Ordering::Relaxed) - errors_before
    );
    println!(
        "/healthz latency ms (fresh connection each): quiet {} failed {quiet_fail}; under edge load {} failed {load_fail}",
        edge::summary(&quiet_health),
        edge::summary(&load_health),
    );
    println!(
        "heartbeat p99 under edge load / quiet: {:.2}",
        edge::p99_ms(&latencies) / edge::p99_ms(quiet).max(1e-9)
    );
    println!(
        "/healthz p99 under edge load / quiet: {:.2}",
        edge::p99_ms(&load_health) / edge::p99_ms(&quiet_health).max(1e-9)
    );
    Ok(())
}

#[derive(Default)]
struct FloodStats {
    sent: AtomicU64,
    throttled: AtomicU64,
}

/// A second window with `clients` connections flooding the API as one user (a project
/// member listing claims as fast as answers come): heartbeats have a budget of their own, so
/// their latency should barely move.
async fn flood_window(
    admin: &Client,
    admin_config: &ClientConfig,
    stats: &Arc<Stats>,
    clients: usize,
    duration: Duration,
    quiet: &[u32],
) -> anyhow::Result<()> {
    for doc in [
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "bench-flood"}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Project", "metadata": {"name": "bench-flood"}, "spec": {"tenant": "bench-flood"}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "RoleBinding", "metadata": {"name": "bench-flood"},
            "spec": {"role": "project-member", "scope": {"project": "bench-flood"}, "subjects": [{"kind": "User", "name": "flood"}]}}),
    ] {
        admin
            .apply(&doc)
            .await
            .context("cannot set up the flooding user")?;
    }
    let minted: serde_json::Value = admin
        .send_json(
            Method::POST,
            "/apis/infraos.io/v1/tokens",
            &serde_json::json!({"subject": "flood", "ttl": "1h"}),
        )
        .await
        .context("cannot mint the flooding user's token")?;
    let config = ClientConfig {
        token: minted["token"].as_str().map(str::to_string),
        identity: None,
        ..admin_config.clone()
    };
    let flood = Arc::new(FloodStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = Vec::new();
    for _ in 0..clients {
        // One connection each, like separate processes.
        let client = Client::new(&config)?;
        let flood = flood.clone();
        let stop = stop.clone();
        floods.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .raw(
                        Method::GET,
                        "/apis/infraos.io/v1/namespaces/bench-flood/claims",
                        None,
                        Vec::new(),
                        None,
                    )
                    .await;
                flood.sent.fetch_add(1, Ordering::Relaxed);
                if matches!(answer, Ok((429, _))) {
                    flood.throttled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.latencies_us.lock().clear();
    let sent_before = flood.sent.load(Ordering::Relaxed);
    let throttled_before = flood.throttled.load(Ordering::Relaxed);
    let window = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    stats.measuring.store(false, Ordering::Relaxed);
    let window_s = window.elapsed().as_secs_f64().max(1e-9);
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.abort();
    }
    let sent = flood.sent.load(Ordering::Relaxed) - sent_before;
    let throttled = flood.throttled.load(Ordering::Relaxed) - throttled_before;
    let mut latencies = std::mem::take(&mut *stats.latencies_us.lock());
    latencies.sort_unstable();
    let ms = |us: u32| f64::from(us) / 1000.0;
    let quiet_p99 = ms(percentile(quiet, 0.99));
    let flood_p99 = ms(percentile(&latencies, 0.99));
    println!(
        "flood: {clients} connections as user:flood, {:.0} requests/s answered, {:.1}% of them 429",
        sent as f64 / window_s,
        throttled as f64 * 100.0 / (sent.max(1) as f64)
    );
    println!(
        "heartbeat latency ms under flood: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2} ({} heartbeats, errors {})",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        flood_p99,
        ms(latencies.last().copied().unwrap_or(0)),
        latencies.len(),
        stats.errors.load(Ordering::Relaxed),
    );
    println!(
        "heartbeat p99 under flood / quiet: {:.2}",
        flood_p99 / quiet_p99.max(1e-9)
    );
    Ok(())
}

async fn join(
    anonymous: &Client,
    admin: &ClientConfig,
    token: &str,
    i: usize,
) -> anyhow::Result<SimAgent> {
    let name = format!("sim-{i:05}");
    let (key_pem, csr) = infraos_agent::identity::new_key_and_csr(&name)?;
    let request = JoinRequest {
        token: token.to_string(),
        name: name.clone(),
        csr,
        labels: BTreeMap::from([("bench".to_string(), "agents".to_string())]),
        agent: agent_info(),
    };
    // Joins with one token race on its use count; the loser of a race tries again, as a
    // real agent restarted by its service manager would.
    let mut attempt = 0;
    let answer: CertificateResponse = loop {
        match anonymous
            .send_json(Method::POST, "/agent/v1/join", &request)
            .await
        {
            Ok(a) => break a,
            Err(e) if e.is_conflict() && attempt < 100 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 + (i as u64 % 20))).await;
            }
            Err(e) => return Err(anyhow::anyhow!("{name}: join: {e}")),
        }
    };
    let client = Client::new(&ClientConfig {
        server: admin.server.clone(),
        ca_pem: Some(answer.ca.into_bytes()),
        token: None,
        identity: Some(ClientIdentity {
            cert_pem: answer.certificate.into_bytes(),
            key_pem: key_pem.into_bytes(),
        }),
    })?;
    Ok(SimAgent { name, client })
}

async fn report(agent: &SimAgent) -> anyhow::Result<()> {
    let inventory = inventory();
    let report = NodeReport {
        agent: agent_info(),
        resources: infraos_agent::resources::from_inventory(
            &agent.name,
            &inventory,
            Quantity::ZERO,
            Quantity::ZERO,
        ),
        inventory,
    };
    agent
        .client
        .send_json::<_, NodeReportResponse>(Method::PUT, "/agent/v1/status", &report)
        .await
        .map_err(|e| anyhow::anyhow!("{}: report: {e}", agent.name))?;
    Ok(())
}

async fn heartbeats(agent: Arc<SimAgent>, offset: Duration, every: Duration, stats: Arc<Stats>) {
    tokio::time::sleep(offset).await;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let t = Instant::now();
        let result = agent
            .client
            .send_json::<_, HeartbeatResponse>(
                Method::POST,
                "/agent/v1/heartbeat",
                &serde_json::json!({}),
            )
            .await;
        let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        if stats.measuring.load(Ordering::Relaxed) {
            match result {
                Ok(_) => stats.latencies_us.lock().push(us),
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Lists and watches the agent's allocations, as the real agent does.
async fn watch(agent: Arc<SimAgent>) {
    let selector = format!("{NODE_LABEL}={}", agent.name);
    loop {
        let Ok((_, revision)) = agent
            .client
            .list(AllocationSpec::INFO, None, Some(&selector))
            .await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if let Ok(mut events) = agent
            .client
            .watch_as::<Allocation>(AllocationSpec::INFO, None, Some(&selector), Some(revision))
            .await
        {
            while let Some(Ok(_)) = events.next().await {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
