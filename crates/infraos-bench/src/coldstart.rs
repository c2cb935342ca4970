//! `bench coldstart`: how long a server restarted on a large store takes to serve and to
//! schedule again. One server process seeds the store through the API (the synthetic cluster's
//! nodes and resources, then claims in batches that its scheduler places, so the allocations
//! and the plan applier's holdings records are exactly what a running cluster leaves), and is
//! stopped as an operator would (SIGTERM: it hands its leader lease back). Then, `--runs`
//! times, a fresh server process starts on the same data dir and store and the bench measures:
//!
//! ```text
//!   spawn ──► server.url written ──► /readyz 200 ──► one new claim created ──► Allocated
//!   t=0        listening_s            ready_s          (right after ready)     first_allocated_s
//!                                        └─ RSS here ──────── ready_to_allocated_s ──┘
//! ```
//! `/readyz` says 200 once the scheduler's reflectors have listed every source; the holdings
//! ledger loads after that, so a claim created at ready waits for the ledger too: the gap
//! between the two figures is that load plus one scheduling batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use infraos_client::{Client, ClientConfig};
use serde_json::{Value, json};

use crate::synthetic::{self, PROJECT};
use crate::{cpu_seconds, median, memory_kib};

/// Objects per `batchCreate` while seeding: what a default etcd takes in one transaction.
const SEED_BATCH: usize = 100;
/// Batch requests in flight at once while seeding.
const SEED_CONCURRENCY: usize = 16;
/// The seeded claims' lease: far longer than any measurement, so none expires during it.
const SEED_LEASE: &str = "168h";

pub struct Options {
    pub nodes: usize,
    pub allocations: usize,
    /// `etcd://host:port/prefix`; the embedded store in the temporary data dir when absent.
    pub store: Option<String>,
    pub runs: usize,
    /// Longest wait for any one step (seeding's allocations, a restart's readiness, the claim).
    pub timeout: Duration,
}

/// A server process on the bench's data dir; killed if still running when dropped.
struct ServerProcess {
    child: std::process::Child,
}

impl ServerProcess {
    fn spawn(data: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let child = std::process::Command::new(exe)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,tower_http=off".into()),
            )
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("cannot start the server process")?;
        Ok(Self { child })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Resident memory now, in MiB (0 where /proc cannot tell).
    fn rss_mib(&self) -> f64 {
        memory_kib(&self.pid()).map_or(0.0, |(rss, _)| rss as f64 / 1024.0)
    }

    /// SIGTERM, as an operator's restart sends, and the time until the process has exited;
    /// SIGKILL after 30 s.
    fn stop(mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid());
        while start.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        anyhow::bail!("the server did not stop within 30s of SIGTERM")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One restart's figures, in seconds from the process's spawn.
struct Restart {
    listening: f64,
    ready: f64,
    first_allocated: f64,
    rss_ready_mib: f64,
    rss_after_mib: f64,
    stop: f64,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let data = dir.path().to_path_buf();
    infraos_server::init::init_data_dir(&data, &[]).await?;
    if let Some(store) = &o.store {
        std::fs::write(
            data.join(infraos_server::config::CONFIG_FILE),
            format!("store: {store}\n"),
        )
        .context("cannot write server.yaml")?;
    }
    let backend = o.store.as_deref().unwrap_or("embedded");
    let seed_s = seed(&o, &data).await?;
    if o.store.is_none() {
        println!("seed: data dir {:.0} MiB", dir_mib(&data));
    }
    let mut restarts = Vec::new();
    for run in 1..=o.runs.max(1) {
        let r = restart(&data, run, o.timeout).await?;
        println!(
            "run {run}: listening {:.2}s, ready {:.2}s, first claim allocated {:.2}s after start ({:.2}s after ready), rss {:.0} MiB at ready, {:.0} MiB after, stopped in {:.2}s",
            r.listening,
            r.ready,
            r.first_allocated,
            r.first_allocated - r.ready,
            r.rss_ready_mib,
            r.rss_after_mib,
            r.stop
        );
        restarts.push(r);
    }
    let med = |f: fn(&Restart) -> f64| median(&mut restarts.iter().map(f).collect::<Vec<_>>());
    println!(
        "store: {backend}, nodes: {}, allocations: {}, runs: {} (medians below)",
        o.nodes,
        o.allocations,
        restarts.len()
    );
    println!("seed_s: {seed_s:.1}");
    println!("listening_s: {:.2}", med(|r| r.listening));
    println!("ready_s: {:.2}", med(|r| r.ready));
    println!("first_allocated_s: {:.2}", med(|r| r.first_allocated));
    println!(
        "ready_to_allocated_s: {:.2}",
        med(|r| r.first_allocated - r.ready)
    );
    println!("rss_ready_mib: {:.0}", med(|r| r.rss_ready_mib));
    println!("rss_after_mib: {:.0}", med(|r| r.rss_after_mib));
    Ok(())
}

/// The seeding server: nodes and resources in batches, then the claims, until every one is
/// decided; returns the seconds it took from the server's spawn to its stop.
async fn seed(o: &Options, data: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let _ = std::fs::remove_file(data.join(infraos_server::URL_FILE));
    let server = ServerProcess::spawn(data)?;
    let client = connect(data, start + o.timeout).await?;
    wait_ready(&client, start + o.timeout).await?;
    let t = Instant::now();
    let mut cluster = synthetic::cluster(o.nodes, o.allocations, false, false);
    for claim in &mut cluster.claims {
        fit_everywhere(claim);
    }
    println!(
        "seed: server ready {:.1}s after its start, objects generated in {:.1}s",
        start.elapsed().as_secs_f64() - t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    for object in &cluster.setup {
        client.apply(object).await?;
    }
    let t = Instant::now();
    create_batches(&client, "nodes", &cluster.nodes).await?;
    create_batches(&client, "resources", &cluster.resources).await?;
    println!(
        "seed: {} nodes, {} resources in {:.1}s",
        cluster.nodes.len(),
        cluster.resources.len(),
        t.elapsed().as_secs_f64()
    );
    let claims = kind("claims")?;
    let (_, revision) = client
        .list(claims, Some(PROJECT), Some("bench=true"))
        .await?;
    let events = client
        .watch_as::<Seen>(claims, Some(PROJECT), None, Some(revision))
        .await?;
    let watcher = tokio::spawn(count_decided(events, cluster.claims.len()));
    let t = Instant::now();
    create_batches(&client, "claims", &cluster.claims).await?;
    let submitted = t.elapsed().as_secs_f64();
    let (allocated, unschedulable) = tokio::time::timeout(o.timeout, watcher)
        .await
        .context("timed out waiting for the seeded claims to be allocated")?
        .context("the watch task failed")??;
    println!(
        "seed: {} claims submitted in {submitted:.1}s, {allocated} allocated ({unschedulable} unschedulable) in {:.1}s",
        cluster.claims.len(),
        t.elapsed().as_secs_f64()
    );
    if unschedulable > 0 {
        println!("seed: warning: {unschedulable} claims stay pending and are retried on restart");
    }
    // The applier's holdings records and the quota status are written after the last
    // allocation: stop once the server has gone quiet, not in the middle of that.
    let t = Instant::now();
    wait_quiet(&server, start + o.timeout).await;
    let quiet = t.elapsed().as_secs_f64();
    let stop = server.stop()?;
    println!(
        "seed: server quiet {quiet:.1}s after the last allocation, stopped in {:.2}s",
        stop.as_secs_f64()
    );
    Ok(start.elapsed().as_secs_f64())
}

/// The size of the files directly in `dir` (the embedded store is one of them).
fn dir_mib(dir: &Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum();
    bytes as f64 / (1024.0 * 1024.0)
}

/// One GPU of any model per GPU claim instead of one or two, some only H100s: the synthetic
/// claims ask for ~12% more GPUs (and more H100s) than the synthetic cluster has, and the
/// seeded store must hold allocated claims only, not a queue of unschedulable ones.
fn fit_everywhere(claim: &mut Value) {
    if let Some(requests) = claim
        .pointer_mut("/spec/requests")
        .and_then(Value::as_array_mut)
    {
        for r in requests.iter_mut().filter(|r| r["class"] == "gpu") {
            r["count"] = json!(1);
            r["selector"] = json!("item.attributes.memoryGiB >= 40");
        }
    }
    claim["spec"]["lease"] = json!({"duration": SEED_LEASE});
}

/// Waits until the server has used under 5% of a core for a second (or until `deadline`).
async fn wait_quiet(server: &ServerProcess, deadline: Instant) {
    let pid = server.pid();
    let mut before = cpu_seconds(&pid);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_seconds(&pid);
        match (before, now) {
            (Some(b), Some(n)) if n - b < 0.05 => return,
            (None, _) | (_, None) => return,
            _ => before = now,
        }
    }
}

fn kind(plural: &str) -> anyhow::Result<&'static infraos_api::KindInfo> {
    infraos_api::object::kind_by_any_name(plural)
        .with_context(|| format!("the {plural} kind is not registered"))
}

/// Creates `objects` (all of the kind `plural`) with `batchCreate`, several requests at once.
async fn create_batches(client: &Client, plural: &str, objects: &[Value]) -> anyhow::Result<()> {
    let info = kind(plural)?;
    let ns = (plural == "claims").then_some(PROJECT);
    let bodies: Vec<bytes::Bytes> = objects
        .chunks(SEED_BATCH)
        .map(|items| serde_json::to_vec(&json!({ "items": items })).map(bytes::Bytes::from))
        .collect::<Result<_, _>>()?;
    let mut results = futures::stream::iter(bodies.into_iter().map(|body| {
        let client = client.clone();
        async move { client.create_batch_quiet(info, ns, body).await }
    }))
    .buffer_unordered(SEED_CONCURRENCY);
    while let Some(r) = results.next().await {
        r.with_context(|| format!("creating {plural}"))?;
    }
    Ok(())
}

/// What the seeding watch decodes of a claim: its name and phase.
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

/// Follows the watch until `expected` claims are Allocated or Unschedulable.
async fn count_decided(
    mut events: infraos_client::WatchEvents<Seen>,
    expected: usize,
) -> anyhow::Result<(usize, usize)> {
    let mut allocated = std::collections::HashSet::new();
    let mut unschedulable = std::collections::HashSet::new();
    while allocated.len() + unschedulable.len() < expected {
        let Some(event) = events.next().await else {
            anyhow::bail!(
                "the claims watch ended with {} of {expected} claims decided",
                allocated.len() + unschedulable.len()
            );
        };
        let object = event?.object;
        let status = object.status.as_ref();
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Allocated") => {
                unschedulable.remove(&object.metadata.name);
                allocated.insert(object.metadata.name);
            }
            Some("Pending")
                if status.and_then(|s| s.reason.as_deref()) == Some("Unschedulable") =>
            {
                unschedulable.insert(object.metadata.name);
            }
            _ => {}
        }
    }
    Ok((allocated.len(), unschedulable.len()))
}

/// One restart: spawn, listening, ready, one claim created and allocated, stop.
async fn restart(data: &Path, run: usize, timeout: Duration) -> anyhow::Result<Restart> {
    let _ = std::fs::remove_file(data.join(infraos_server::URL_FILE));
    let start = Instant::now();
    let deadline = start + timeout;
    let server = ServerProcess::spawn(data)?;
    let client = connect(data, deadline).await?;
    let listening = start.elapsed().as_secs_f64();
    wait_ready(&client, deadline).await?;
    let ready = start.elapsed().as_secs_f64();
    let rss_ready_mib = server.rss_mib();
    let claims = kind("claims")?;
    let name = format!("coldstart-{run}-{}", std::process::id());
    let claim = json!({
        "apiVersion": "infraos.io/v1",
        "kind": "Claim",
        "metadata": {"name": name, "namespace": PROJECT, "labels": {"coldstart": "true"}},
        "spec": {
            "lease": {"duration": SEED_LEASE},
            "requests": [{"name": "main", "class": "compute", "amount": {"cpu": "1", "memory": "1Gi"}}],
        },
    });
    // Right after ready; a refusal while the server finishes starting is retried.
    loop {
        match client.create(claims, Some(PROJECT), &claim).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("run {run}: creating the claim: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e).context("creating the first claim after ready"),
        }
    }
    loop {
        let current = client.get(claims, Some(PROJECT), &name).await?;
        if current.pointer("/status/phase").and_then(Value::as_str) == Some("Allocated") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "claim {name} was not allocated within {}s of the start; last status: {}",
            timeout.as_secs(),
            current.get("status").unwrap_or(&Value::Null)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_allocated = start.elapsed().as_secs_f64();
    let rss_after_mib = server.rss_mib();
    let stop = server.stop()?.as_secs_f64();
    Ok(Restart {
        listening,
        ready,
        first_allocated,
        rss_ready_mib,
        rss_after_mib,
        stop,
    })
}

/// Waits for the server to write its URL, then a client with the data dir's CA and token.
async fn connect(data: &Path, deadline: Instant) -> anyhow::Result<Arc<Client>> {
    let url_file: PathBuf = data.join(infraos_server::URL_FILE);
    let server = loop {
        if let Ok(url) = std::fs::read_to_string(&url_file)
            && url.ends_with('\n')
        {
            break url.trim().to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not listen in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let config = ClientConfig {
        server,
        ca_pem: Some(std::fs::read(data.join("ca.crt")).context("reading ca.crt")?),
        token: Some(
            std::fs::read_to_string(data.join("admin.token"))
                .context("reading admin.token")?
                .trim()
                .to_string(),
        ),
        identity: None,
    };
    Ok(Arc::new(Client::new(&config)?))
}

async fn wait_ready(client: &Client, deadline: Instant) -> anyhow::Result<()> {
    loop {
        if let Ok((200, _)) = client
            .raw(infraos_client::Method::GET, "/readyz", None, vec![], None)
            .await
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server was not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
