//! `infraos bench workload --claims N --runs R`: on one machine, a real server and a real
//! agent (separate processes), then claims with a process workload submitted one after the
//! other. Latency is from sending the claim until a watch on the allocations shows the
//! workload Running: scheduling, the allocation's commit, the agent's watch, the shim's
//! fork, cgroup and namespaces, the exec, and the status report's commit. It also reports
//! the agent's RSS when idle and with the workloads running. Needs root (cgroups).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use infraos_api::Kind as _;
use infraos_api::kinds::{AllocationSpec, ClaimSpec, NodeSpec};
use infraos_client::{Client, Method};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{ChildServer, median, memory_kib, percentile, start_server};

const PROJECT: &str = "bench-workloads";
const NODE: &str = "bench-node";

pub struct Options {
    pub claims: usize,
    pub runs: usize,
}

/// Stops the agent when dropped (its workloads are released before that).
struct ChildAgent {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

async fn start_agent(server: &ChildServer, url: &str, token: &str) -> anyhow::Result<ChildAgent> {
    let dir = tempfile::tempdir().context("cannot create the agent's data dir")?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let child = std::process::Command::new(exe)
        .args([
            "agent",
            "--server",
            url,
            "--join-token",
            token,
            "--name",
            NODE,
        ])
        .arg("--ca")
        .arg(server.data_dir().join("ca.crt"))
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("cannot start the agent process")?;
    Ok(ChildAgent { child, _dir: dir })
}

fn claim(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": PROJECT},
        "spec": {
            "requests": [{"class": "compute", "amount": {"cpu": "10m", "memory": "16Mi"}}],
            "lease": {"duration": "10m"},
            "workload": {"command": "/bin/sleep", "args": ["600"], "stopGrace": "1s"}
        }
    })
}

/// When each allocation's workload was first seen in a state, by `state/name`.
type Seen = Arc<(Mutex<HashMap<String, Instant>>, Notify)>;

async fn wait_for(seen: &Seen, key: &str, limit: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let notified = seen.1.notified();
        if let Some(t) = seen.0.lock().get(key) {
            return Ok(*t);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("gave up waiting for {key} after {}s", limit.as_secs());
        }
        let _ = tokio::time::timeout(left, notified).await;
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("bench workload starts workloads in cgroups and namespaces: run it as root");
    }
    let (server, config) = start_server("").await?;
    let admin = Client::new(&config)?;
    let created: serde_json::Value = admin
        .send_json(
            Method::POST,
            "/apis/infraos.io/v1/jointokens",
            &serde_json::json!({"ttl": "1h", "uses": 1, "description": "bench workload"}),
        )
        .await
        .context("cannot create a join token")?;
    let token = created["token"].as_str().unwrap_or_default();
    let agent = start_agent(&server, &config.server, token).await?;
    let agent_pid = agent.child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = admin
            .get(NodeSpec::INFO, None, NODE)
            .await
            .ok()
            .and_then(|n| n["status"]["conditions"].as_array().cloned())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        let resource = admin
            .get_path(&format!("/apis/infraos.io/v1/resources/{NODE}-compute"))
            .await
            .is_ok();
        if ready && resource {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the agent did not join and report within 60s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for o in [
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Tenant",
                           "metadata": {"name": "bench"}, "spec": {}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Project",
                           "metadata": {"name": PROJECT}, "spec": {"tenant": "bench"}}),
    ] {
        admin.apply(&o).await?;
    }

    // Idle: joined, reported, heartbeating, watching; nothing to run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(memory_kib(&agent_pid).map_or(0.0, |(rss, _)| rss as f64));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let idle_kib = median(&mut idle);

    let seen: Seen = Arc::new((Mutex::new(HashMap::new()), Notify::new()));
    let (_, revision) = admin
        .list(AllocationSpec::INFO, Some(PROJECT), None)
        .await?;
    let mut events = admin
        .watch(AllocationSpec::INFO, Some(PROJECT), None, Some(revision))
        .await?;
    let watcher_seen = seen.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(state) = event.object["status"]["workload"]["state"].as_str() {
                let key = format!("{state}/{name}");
                let fresh = match watcher_seen.0.lock().entry(key) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(Instant::now());
                        true
                    }
                    std::collections::hash_map::Entry::Occupied(_) => false,
                };
                if fresh {
                    watcher_seen.1.notify_waiters();
                }
            }
        }
    });

    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    let mut busy_kib = 0;
    for run in 1..=o.runs.max(1) {
        let mut latencies = Vec::new();
        let names: Vec<String> = (0..o.claims).map(|i| format!("w{run}-{i:04}")).collect();
        for name in &names {
            let sent = Instant::now();
            admin
                .create(ClaimSpec::INFO, Some(PROJECT), &claim(name))
                .await
                .with_context(|| format!("claim {name}"))?;
            let running = wait_for(&seen, &format!("Running/{name}"), Duration::from_secs(30))
                .await
                .with_context(|| format!("claim {name}: its workload never ran"))?;
            latencies.push(u32::try_from(running.duration_since(sent).as_micros()).unwrap_or(0));
        }
        busy_kib = memory_kib(&agent_pid).map_or(0, |(rss, _)| rss);
        latencies.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let (p50, p99) = (
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
        );
        println!(
            "run {run}: {} claims, claim → Running ms: p50 {p50:.1}, p99 {p99:.1}, max {:.1}",
            latencies.len(),
            ms(latencies.last().copied().unwrap_or(0))
        );
        p50s.push(p50);
        p99s.push(p99);
        // Release them all and wait until each has stopped, so that runs do not overlap.
        for name in &names {
            admin
                .claim_action(PROJECT, name, "release", None)
                .await
                .with_context(|| format!("release {name}"))?;
        }
        for name in &names {
            wait_for(&seen, &format!("Stopped/{name}"), Duration::from_secs(60)).await?;
        }
    }
    watcher.abort();
    println!(
        "agent RSS: idle {:.1} MiB, with {} workloads running {:.1} MiB",
        idle_kib / 1024.0,
        o.claims,
        busy_kib as f64 / 1024.0
    );
    println!(
        "runs: {}, median p50 {:.1} ms, median p99 {:.1} ms",
        p50s.len(),
        median(&mut p50s),
        median(&mut p99s.clone())
    );
    println!("claim to Running p99 ms: {:.1}", median(&mut p99s));
    drop(agent);
    drop(server);
    Ok(())
}
