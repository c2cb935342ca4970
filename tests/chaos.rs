//! The chaos harness: three etcd members, three servers and three agents on loopback, a
//! seeded random schedule of faults (SIGKILL and restart of servers, agents and etcd members;
//! SIGSTOP pauses of servers and agents, and network partitions of agents from the servers
//! (each agent in its own network namespace behind a veth pair), shorter and longer than a
//! lease) while claims with
//! process workloads are submitted, renewed, released and left to expire. Afterwards a checker
//! verifies, from the recorded history, that:
//!
//! - capacity was never exceeded on any node at any store revision (etcd's own history);
//! - the project quota was never exceeded at any revision;
//! - no acknowledged claim was lost;
//! - no claim's workload ran in two places at once (the workloads log what they run, tagged
//!   with node and fencing epoch, every 100 ms);
//! - every expired lease was reclaimed within its expiry + the skew margin + a controller
//!   period + a leader failover;
//! - the system heals: once faults stop, every claim reaches a terminal state or is allocated.
//!
//! `INFRAOS_CHAOS_SECONDS` (default 45: the short run `.ci/run` does) and
//! `INFRAOS_CHAOS_SEED` (default 1) choose the run; `scripts/chaos.sh` runs long ones. Needs
//! root (agents run workloads in cgroups) and a build with the `etcd` feature.
//!
//! `INFRAOS_CHAOS_LOAD` (claims per second, default 0) adds a background load throughout the
//! faults: claims without workloads in their own project, on fifty synthetic nodes of their own
//! class, submitted in batches every 100 ms with 5 s leases that expire. The invariants above
//! are checked for the workload claims; the load's placements per second are reported.
#![cfg(feature = "etcd")]
// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infraos_client::Client;
use infraos_store::Store as _;
use infraos_store::conformance::EtcdCluster;
use serde_json::{Value, json};
use support::*;

const SKEW: Duration = Duration::from_secs(1);
const LEASE_S: u64 = 4;
const QUOTA_CPU_MILLIS: i64 = 4000;
const CLAIM_CPU_MILLIS: i64 = 500;

/// A small deterministic generator: the same seed, the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn kind(p: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(p).unwrap()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

struct Agent {
    name: String,
    netns: String,
    dir: tempfile::TempDir,
    servers: String,
    ca: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn spawn(&mut self, token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .arg(bin())
            .args(["agent", "--server", &self.servers, "--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--ca")
            .arg(&self.ca)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(t) = token {
            c.args(["--join-token", t]);
        }
        self.child = Some(c.spawn().unwrap());
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The fault in progress, undone before the next one.
enum Fault {
    ServerDown(usize),
    ServerPaused(usize),
    AgentDown(usize),
    AgentPaused(usize),
    EtcdDown(usize),
    Partitioned(usize),
}

/// Agent `i` lives in network namespace `infraos-chaos-i`, joined to the host by a veth pair
/// (host 10.231.i.1, agent 10.231.i.2): taking the host end down partitions it from every
/// server while everything keeps running.
struct Netns(usize);

impl Netns {
    fn name(&self) -> String {
        format!("infraos-chaos-{}", self.0)
    }
    fn host_link(&self) -> String {
        format!("icx{}h", self.0)
    }
    fn host_ip(&self) -> String {
        format!("10.231.{}.1", self.0)
    }
    fn create(i: usize) -> Netns {
        let ns = Netns(i);
        ns.remove();
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (name, host, peer) = (ns.name(), ns.host_link(), format!("icx{i}n"));
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&["addr", "add", &format!("10.231.{i}.1/30"), "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("10.231.{i}.2/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }
    fn set_link(&self, up: bool) {
        let _ = Command::new("ip")
            .args([
                "link",
                "set",
                &self.host_link(),
                if up { "up" } else { "down" },
            ])
            .status();
    }
    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link()])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name()])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A claim whose workload prints `claim node epoch ms` ten times a second to its own log:
/// workloads are contained (a read-only view of the host), so they cannot append to a shared
/// file; [`LogCollector`] gathers every run's log instead.
fn workload_claim(name: &str) -> Value {
    let script = "while true; do echo \"$INFRAOS_CLAIM $INFRAOS_NODE $INFRAOS_FENCING_EPOCH $(date +%s%3N)\"; sleep 0.1; done";
    json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p"},
        "spec": {
            "requests": [{"class": "compute", "amount": {"cpu": "500m", "memory": "16Mi"}}],
            "lease": {"duration": format!("{LEASE_S}s"), "renewPolicy": "Manual"},
            "workload": {"command": "/bin/sh", "args": ["-c", script], "stopGrace": "1s"}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_invariant() {
    require_root("the chaos harness's agents");
    let seconds: u64 = std::env::var("INFRAOS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let seed: u64 = std::env::var("INFRAOS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("chaos: seed {seed}, {seconds} s of faults");
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let collected = work.path().join("runs");
    std::fs::create_dir_all(&collected).unwrap();

    let mut etcd = EtcdCluster::start(3).await;
    let config = format!(
        "store: {}\nheartbeatInterval: 500ms\nnodeGracePeriod: 2s\nleaseSkewMargin: 1s\n\
         leaderLeaseDuration: 2s\nleaderRenewInterval: 300ms\n",
        etcd.url("chaos")
    );
    let netns: Vec<Netns> = (0..3).map(Netns::create).collect();
    let host_ips: Vec<String> = netns.iter().map(Netns::host_ip).collect();
    let sans: Vec<&str> = host_ips.iter().map(String::as_str).collect();
    // Servers listen beyond loopback, so agents in their namespaces reach them.
    let first = TestServer::start_with(&config, &sans, "0.0.0.0").await;
    let mut servers = vec![first];
    for _ in 0..2 {
        let copy = servers[0].copy_data_dir();
        servers.push(TestServer::start_in_on(copy, "0.0.0.0").await);
    }
    let all_urls: Vec<String> = servers.iter().map(|s| s.config.server.clone()).collect();
    let mut client_config = servers[0].config.clone();
    client_config.server = all_urls.join(",");
    let c = Client::new(&client_config).unwrap();
    apply_yaml(
        &c,
        &format!(
            "apiVersion: infraos.io/v1\nkind: Tenant\nmetadata: {{name: t}}\nspec: {{}}\n---\n\
             apiVersion: infraos.io/v1\nkind: Project\nmetadata: {{name: p}}\nspec: {{tenant: t}}\n---\n\
             apiVersion: infraos.io/v1\nkind: Quota\nmetadata: {{name: p-cpu}}\n\
             spec: {{project: p, limits: {{compute: {{cpu: \"{}m\"}}}}}}\n",
            QUOTA_CPU_MILLIS
        ),
    )
    .await;
    let token = {
        let out = servers[0].cli(&["join-token", "create", "--uses", "3"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent {
            name: format!("chaos-{i}"),
            netns: netns[i].name(),
            dir: tempfile::tempdir().unwrap(),
            // Each agent starts with a different server first, over its veth.
            servers: (0..3)
                .map(|k| {
                    let port = servers[(i + k) % 3].port();
                    format!("https://{}:{port}", netns[i].host_ip())
                })
                .collect::<Vec<_>>()
                .join(","),
            ca: servers[0].data_dir().join("ca.crt"),
            child: None,
        })
        .collect();
    for a in &mut agents {
        a.spawn(Some(&token));
    }
    let collector = LogCollector::start(
        agents
            .iter()
            .map(|a| a.dir.path().join("workloads"))
            .collect(),
        collected.clone(),
    );
    // Each agent publishes its own compute resource; pin capacity so the check is exact.
    let agents_count = agents.len();
    for a in &agents {
        let name = a.name.clone();
        eventually(Duration::from_secs(60), "agent node ready", || {
            let c = c.clone();
            let name = name.clone();
            async move {
                let n = c
                    .get_path(&format!("/apis/infraos.io/v1/nodes/{name}"))
                    .await
                    .ok()?;
                n["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    .then_some(())
            }
        })
        .await;
    }
    // Ready comes from the first heartbeat; the compute resource is reported beside it, so it
    // may land a moment later.
    let resources = eventually(
        Duration::from_secs(60),
        "every agent's compute resource",
        || {
            let c = c.clone();
            async move {
                let (resources, _) = c.list(kind("resources"), None, None).await.ok()?;
                let compute = resources
                    .iter()
                    .filter(|r| r["spec"]["class"] == "compute" && r["spec"]["node"].is_string())
                    .count();
                (compute == agents_count).then_some(resources)
            }
        },
    )
    .await;
    let mut capacity: HashMap<String, i64> = HashMap::new();
    for r in &resources {
        if r["spec"]["class"] == "compute"
            && let Some(node) = r["spec"]["node"].as_str()
        {
            let cpu: infraos_api::Quantity = r["spec"]["capacity"]["cpu"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            capacity.insert(node.to_string(), (cpu.nanos() / 1_000_000) as i64);
        }
    }
    assert_eq!(capacity.len(), 3, "{resources:?}");
    let load_rate: u64 = std::env::var("INFRAOS_CHAOS_LOAD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let load = if load_rate > 0 {
        Some(Load::start(&c, load_rate).await)
    } else {
        None
    };

    // ---- load and faults ------------------------------------------------------------------
    let mut acknowledged: Vec<String> = Vec::new();
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut active: Option<(Fault, Instant)> = None;
    let mut next_fault = Instant::now() + rng.millis(1000, 3000);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut n = 0u32;
    // At most this many claims open at once, so the queue drains soon after faults stop.
    const MAX_OPEN: usize = 12;
    let mut open = 0usize;
    let mut counted = Instant::now();
    while Instant::now() < end {
        if counted.elapsed() > Duration::from_secs(2) {
            if let Ok((items, _)) = c.list(kind("claims"), Some("p"), None).await {
                open = items
                    .iter()
                    .filter(|i| !matches!(phase(i), "Released" | "Expired" | "Failed"))
                    .count();
            }
            counted = Instant::now();
        }
        // Load: create, renew or release, each answer recorded.
        match rng.below(10) {
            0..=4 if open < MAX_OPEN => {
                open += 1;
                n += 1;
                let name = format!("ch{n:04}");
                if c.create(kind("claims"), Some("p"), &workload_claim(&name))
                    .await
                    .is_ok()
                {
                    acknowledged.push(name);
                }
            }
            5..=7 if !acknowledged.is_empty() => {
                let name = &acknowledged[rng.below(acknowledged.len() as u64) as usize];
                let body = json!({"duration": format!("{LEASE_S}s")});
                let _ = c.claim_action("p", name, "renew", Some(&body)).await;
            }
            8 if !acknowledged.is_empty() => {
                let name = &acknowledged[rng.below(acknowledged.len() as u64) as usize];
                let _ = c.claim_action("p", name, "release", None).await;
            }
            _ => {}
        }
        // Faults: one at a time, each undone when its time is up.
        let now = Instant::now();
        if let Some((fault, until)) = &active
            && now >= *until
        {
            match fault {
                Fault::ServerDown(i) => servers[*i].respawn_same_port().await,
                Fault::ServerPaused(i) => signal(servers[*i].pid().unwrap(), "-CONT"),
                Fault::AgentDown(i) => agents[*i].spawn(None),
                Fault::AgentPaused(i) => signal(agents[*i].pid().unwrap(), "-CONT"),
                Fault::EtcdDown(i) => etcd.restart(*i).await,
                Fault::Partitioned(i) => netns[*i].set_link(true),
            }
            active = None;
            next_fault = Instant::now() + rng.millis(500, 2500);
        }
        if active.is_none() && now >= next_fault {
            let i = rng.below(3) as usize;
            let (fault, name, hold) = match rng.below(6) {
                0 => {
                    servers[i].kill9();
                    (
                        Fault::ServerDown(i),
                        "server SIGKILL",
                        rng.millis(500, 4000),
                    )
                }
                1 => {
                    signal(servers[i].pid().unwrap(), "-STOP");
                    (
                        Fault::ServerPaused(i),
                        "server SIGSTOP",
                        rng.millis(500, 5000),
                    )
                }
                2 => {
                    agents[i].kill9();
                    (Fault::AgentDown(i), "agent SIGKILL", rng.millis(500, 4000))
                }
                3 => {
                    signal(agents[i].pid().unwrap(), "-STOP");
                    // Shorter and longer than a lease (4 s) plus the skew margin.
                    (
                        Fault::AgentPaused(i),
                        "agent SIGSTOP",
                        rng.millis(500, 8000),
                    )
                }
                4 => {
                    // Cut off from every server, shorter and longer than a lease.
                    netns[i].set_link(false);
                    (
                        Fault::Partitioned(i),
                        "agent partition",
                        rng.millis(500, 8000),
                    )
                }
                _ => {
                    etcd.kill(i);
                    (
                        Fault::EtcdDown(i),
                        "etcd member SIGKILL",
                        rng.millis(500, 4000),
                    )
                }
            };
            *faults.entry(name).or_insert(0) += 1;
            active = Some((fault, Instant::now() + hold));
        }
        tokio::time::sleep(rng.millis(50, 250)).await;
    }
    let load = match load {
        Some(load) => Some(load.stop(started.elapsed()).await),
        None => None,
    };
    // ---- heal -------------------------------------------------------------------------------
    if let Some((fault, _)) = active.take() {
        match fault {
            Fault::ServerDown(i) => servers[i].respawn_same_port().await,
            Fault::ServerPaused(i) => signal(servers[i].pid().unwrap(), "-CONT"),
            Fault::AgentDown(i) => agents[i].spawn(None),
            Fault::AgentPaused(i) => signal(agents[i].pid().unwrap(), "-CONT"),
            Fault::EtcdDown(i) => etcd.restart(i).await,
            Fault::Partitioned(i) => netns[i].set_link(true),
        }
    }
    let mut violations: Vec<String> = Vec::new();
    let heal_deadline = Instant::now() + Duration::from_secs(90);
    let healed = loop {
        let items = match c.list(kind("claims"), Some("p"), None).await {
            Ok((items, _)) => items,
            Err(e) => {
                if Instant::now() > heal_deadline {
                    panic!("chaos seed {seed}: the API did not answer at the end: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Healed: every claim ended or holds its allocation.
        let open: Vec<&Value> = items
            .iter()
            .filter(|i| !matches!(phase(i), "Released" | "Expired" | "Failed" | "Allocated"))
            .collect();
        if !items.is_empty() && open.is_empty() {
            break items;
        }
        if Instant::now() > heal_deadline {
            for claim in open {
                let name = claim["metadata"]["name"].as_str().unwrap_or_default();
                let allocation = c.get(kind("allocations"), Some("p"), name).await.ok();
                violations.push(format!(
                    "not healed after 90 s: claim {name} is {} ({} {}); allocation: {}",
                    phase(claim),
                    claim["status"]["reason"],
                    claim["status"]["message"],
                    allocation
                        .map(|a| a["status"].to_string())
                        .unwrap_or_default()
                ));
            }
            break items;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // No acknowledged write lost.
    let names: Vec<&str> = healed
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    for a in &acknowledged {
        if !names.contains(&a.as_str()) {
            violations.push(format!("acknowledged claim {a} is gone"));
        }
    }

    // Capacity and quota at every revision, from etcd's own history of allocations.
    let store = infraos_store::etcd::EtcdStore::connect(
        infraos_store::etcd::EtcdOptions::parse_url(&etcd.url("chaos")).unwrap(),
    )
    .await
    .unwrap();
    // A last write under the prefix marks the end of the history to read.
    let last = store
        .txn(infraos_store::Txn::new().put("/registry/allocations/p/~chaos-end", "{}"))
        .await
        .unwrap()
        .revision;
    let mut history = store
        .watch("/registry/allocations/p/", 0)
        .await
        .expect("etcd keeps the whole history (never compacted here)");
    let mut events: Vec<infraos_store::Event> = Vec::new();
    let mut seen_revision = 0;
    while seen_revision < last {
        let Ok(Some(Ok(batch))) =
            tokio::time::timeout(Duration::from_secs(5), history.next()).await
        else {
            break;
        };
        for e in batch.iter() {
            seen_revision = seen_revision.max(e.kv.mod_revision);
        }
        events.extend(batch.iter().cloned());
    }
    let (found, revisions, reclaim_worst) = check_history(&events, &capacity);
    violations.extend(found);
    if seen_revision < last {
        violations.push(format!(
            "the allocation history ended at revision {seen_revision}, before {last}"
        ));
    }
    // Reclaimed within expiry + skew margin + a controller period (0.5 s) + a leader
    // failover (lease 2 s + renew 0.3 s) + 1 s of slack for a paused server.
    let bound = SKEW + Duration::from_millis(500 + 2300 + 1000);
    if reclaim_worst > bound {
        violations.push(format!(
            "an expired lease was reclaimed {reclaim_worst:?} after its expiry (bound {bound:?})"
        ));
    }

    // No workload in two places at once: each (claim, node, epoch) run spans its first to its
    // last log line; two runs of one claim must not overlap.
    let text = collector.finish();
    let (found, runs, overlaps_checked) = check_runs(&text);
    violations.extend(found);
    let moved = runs.values().filter(|n| **n > 1).count();
    eprintln!(
        "chaos: seed {seed}: {} claims acknowledged, {} ran workloads ({moved} ran more than once, \
         {overlaps_checked} run pairs checked), faults {faults:?}, capacity and quota checked at \
         {revisions} revisions up to {last}, worst reclaim {reclaim_worst:?}, {}violations {}",
        acknowledged.len(),
        runs.len(),
        load.map(|l| l.summary()).unwrap_or_default(),
        violations.len()
    );
    if !violations.is_empty() {
        // Keep what explains it: every server's and agent's log.
        let keep = std::env::temp_dir().join(format!("infraos-chaos-{seed}"));
        let _ = std::fs::create_dir_all(&keep);
        for (i, server) in servers.iter().enumerate() {
            let _ = std::fs::copy(
                server.data_dir().join("server.log"),
                keep.join(format!("server-{i}.log")),
            );
        }
        for a in &agents {
            let _ = std::fs::copy(
                a.dir.path().join("agent.log"),
                keep.join(format!("{}.log", a.name)),
            );
        }
        eprintln!("chaos: logs kept in {}", keep.display());
    }
    assert!(
        violations.is_empty(),
        "chaos seed {seed}: {} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        !runs.is_empty(),
        "no workload ever ran: the harness tested nothing"
    );
    assert!(faults.values().sum::<u32>() > 0, "no fault was injected");
}

/// Synthetic nodes the background load is placed on.
const LOAD_NODES: usize = 50;
/// Claims per create request of the background load.
const LOAD_BATCH: u64 = 100;

/// The background load: its submitter and the watch that counts its placements.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Stops the counting watch (a few seconds after the submissions, to see the last land).
    counted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    submitter: tokio::task::JoinHandle<(u64, u64)>,
    counter: tokio::task::JoinHandle<u64>,
    rate: u64,
}

/// What the load did.
struct LoadFigures {
    rate: u64,
    seconds: f64,
    acknowledged: u64,
    refused: u64,
    placed: u64,
}

impl LoadFigures {
    fn summary(&self) -> String {
        format!(
            "load {}/s asked: {} claims acknowledged ({} requests refused), {} placed in {:.0} s \
             ({:.0} claims/s), ",
            self.rate,
            self.acknowledged,
            self.refused,
            self.placed,
            self.seconds,
            self.placed as f64 / self.seconds
        )
    }
}

impl Load {
    async fn start(c: &Client, rate: u64) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut yaml = String::from(
            "apiVersion: infraos.io/v1\nkind: ResourceClass\nmetadata: {name: slot}\n\
             spec: {kind: counted, dimensions: [{name: slots}]}\n---\n\
             apiVersion: infraos.io/v1\nkind: Project\nmetadata: {name: load}\nspec: {tenant: t}\n",
        );
        for i in 0..LOAD_NODES {
            yaml += &format!(
                "---\napiVersion: infraos.io/v1\nkind: Node\nmetadata: {{name: load-{i}}}\nspec: {{}}\n\
                 ---\napiVersion: infraos.io/v1\nkind: Resource\nmetadata: {{name: load-{i}-slots}}\n\
                 spec: {{class: slot, node: load-{i}, capacity: {{slots: \"1000000\"}}}}\n"
            );
        }
        apply_yaml(c, &yaml).await;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let counted = std::sync::Arc::new(AtomicBool::new(false));
        // Count each load claim once, when it is first seen Allocated.
        #[derive(serde::Deserialize, Default)]
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
            #[serde(default, rename = "resourceVersion")]
            resource_version: String,
        }
        #[derive(serde::Deserialize)]
        struct SeenStatus {
            #[serde(default)]
            phase: Option<String>,
        }
        let counter = {
            let c = c.clone();
            let stop = counted.clone();
            tokio::spawn(async move {
                let mut placed = std::collections::HashSet::new();
                let mut from = None;
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut events) = c
                        .watch_as::<Seen>(kind("claims"), Some("load"), None, from)
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    loop {
                        let next =
                            tokio::time::timeout(Duration::from_millis(500), events.next()).await;
                        let event = match next {
                            Err(_) if stop.load(Ordering::SeqCst) => break,
                            Err(_) => continue,
                            Ok(Some(Ok(event))) => event,
                            Ok(_) => break,
                        };
                        if let Ok(rv) = event.object.metadata.resource_version.parse::<u64>() {
                            from = Some(rv);
                        }
                        let allocated = event
                            .object
                            .status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            == Some("Allocated");
                        if allocated {
                            placed.insert(event.object.metadata.name);
                        }
                    }
                }
                placed.len() as u64
            })
        };
        let submitter = {
            let c = c.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let per_tick = (rate / 10).max(1);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut n = 0u64;
                let mut requests = futures::stream::FuturesUnordered::new();
                let (mut acknowledged, mut refused) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let mut left = per_tick;
                    while left > 0 {
                        let size = left.min(LOAD_BATCH);
                        left -= size;
                        let items: Vec<Value> = (0..size)
                            .map(|_| {
                                n += 1;
                                json!({
                                    "apiVersion": "infraos.io/v1", "kind": "Claim",
                                    "metadata": {"name": format!("l{n}"), "namespace": "load"},
                                    "spec": {
                                        "requests": [{"class": "slot", "amount": {"slots": "1"}}],
                                        "lease": {"duration": "5s"}
                                    }
                                })
                            })
                            .collect();
                        let body = bytes::Bytes::from(
                            serde_json::to_vec(&json!({ "items": items })).unwrap(),
                        );
                        let c = c.clone();
                        requests.push(async move {
                            (
                                size,
                                c.create_batch_quiet(kind("claims"), Some("load"), body)
                                    .await,
                            )
                        });
                    }
                    // Collect what answered; at most a few seconds of requests outstanding.
                    while requests.len() > 64 {
                        if let Some((size, r)) = requests.next().await {
                            if r.is_ok() {
                                acknowledged += size
                            } else {
                                refused += 1
                            }
                        }
                    }
                    while let Some(Some((size, r))) =
                        futures::FutureExt::now_or_never(requests.next())
                    {
                        if r.is_ok() {
                            acknowledged += size
                        } else {
                            refused += 1
                        }
                    }
                }
                while let Some((size, r)) = requests.next().await {
                    if r.is_ok() {
                        acknowledged += size
                    } else {
                        refused += 1
                    }
                }
                (acknowledged, refused)
            })
        };
        Load {
            stop,
            counted,
            submitter,
            counter,
            rate,
        }
    }

    /// Stops submitting, lets the last placements land, and counts.
    async fn stop(self, elapsed: Duration) -> LoadFigures {
        use std::sync::atomic::Ordering;
        let (acknowledged, refused) = {
            self.stop.store(true, Ordering::SeqCst);
            self.submitter.await.unwrap()
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.counted.store(true, Ordering::SeqCst);
        let placed = self.counter.await.unwrap();
        LoadFigures {
            rate: self.rate,
            seconds: elapsed.as_secs_f64(),
            acknowledged,
            refused,
            placed,
        }
    }
}

/// Capacity and quota at every revision of the allocation history, and the latest reclaim of
/// an expired lease: (violations, revisions checked, worst reclaim delay).
fn check_history(
    events: &[infraos_store::Event],
    capacity: &HashMap<String, i64>,
) -> (Vec<String>, u64, Duration) {
    let mut violations = Vec::new();
    let mut holding: HashMap<String, (String, i64)> = HashMap::new();
    let mut reclaim_worst = Duration::ZERO;
    let mut revisions = 0u64;
    let mut at = 0;
    while at < events.len() {
        // Every event of one revision (one transaction), then the check at that revision.
        let revision = events[at].kv.mod_revision;
        while at < events.len() && events[at].kv.mod_revision == revision {
            let e = &events[at];
            at += 1;
            let key = e.kv.key.clone();
            let object: Option<Value> = match e.kind {
                infraos_store::EventKind::Put => serde_json::from_slice(&e.kv.value).ok(),
                infraos_store::EventKind::Delete => None,
            };
            match object {
                Some(a) if matches!(a["status"]["phase"].as_str(), Some("Active")) => {
                    let node = a["spec"]["node"].as_str().unwrap_or_default().to_string();
                    holding.insert(key, (node, CLAIM_CPU_MILLIS));
                }
                Some(a) => {
                    holding.remove(&key);
                    if a["status"]["phase"] == "Expired"
                        && let (Ok(expire), Ok(ended)) = (
                            a["status"]["lease"]["expireTime"]
                                .as_str()
                                .unwrap_or_default()
                                .parse::<infraos_api::Time>(),
                            a["status"]["endTime"]
                                .as_str()
                                .unwrap_or_default()
                                .parse::<infraos_api::Time>(),
                        )
                    {
                        let late = Duration::from_millis(
                            (ended.unix_millis() - expire.unix_millis()).max(0) as u64,
                        );
                        reclaim_worst = reclaim_worst.max(late);
                    }
                }
                None => {
                    holding.remove(&key);
                }
            }
        }
        revisions += 1;
        let mut per_node: HashMap<&str, i64> = HashMap::new();
        for (node, cpu) in holding.values() {
            *per_node.entry(node).or_insert(0) += cpu;
        }
        for (node, used) in &per_node {
            let cap = capacity.get(*node).copied().unwrap_or(0);
            if *used > cap {
                violations.push(format!(
                    "node {node}: {used}m CPU held of {cap}m at revision {revision}"
                ));
            }
        }
        let total: i64 = per_node.values().sum();
        if total > QUOTA_CPU_MILLIS {
            violations.push(format!(
                "quota p-cpu: {total}m held of {QUOTA_CPU_MILLIS}m at revision {revision}"
            ));
        }
    }
    (violations, revisions, reclaim_worst)
}

/// One run of a claim: the node and the fencing epoch it ran with.
/// Keeps every workload run's stdout log, even after its agent forgets the run and removes
/// its directory: every 50 ms it hard-links each `stdout.log*` it has not seen (by inode) into
/// `into`. The shim keeps appending to the same inode, so the link sees every later line.
struct LogCollector {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    into: PathBuf,
}

impl LogCollector {
    fn start(roots: Vec<PathBuf>, into: PathBuf) -> LogCollector {
        use std::os::unix::fs::MetadataExt;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let dest = into.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut sweep = || {
                for root in &roots {
                    let Ok(runs) = std::fs::read_dir(root) else {
                        continue;
                    };
                    for run in runs.flatten() {
                        let Ok(files) = std::fs::read_dir(run.path()) else {
                            continue;
                        };
                        for file in files.flatten() {
                            let name = file.file_name();
                            if !name.to_string_lossy().starts_with("stdout.log") {
                                continue;
                            }
                            let Ok(meta) = file.metadata() else { continue };
                            if seen.insert((meta.dev(), meta.ino())) {
                                let link = dest.join(format!("{}-{}", meta.dev(), meta.ino()));
                                let _ = std::fs::hard_link(file.path(), link);
                            }
                        }
                    }
                }
            };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                sweep();
                std::thread::sleep(Duration::from_millis(50));
            }
            sweep();
        });
        LogCollector {
            stop,
            thread: Some(thread),
            into,
        }
    }

    /// Every line collected so far.
    fn finish(mut self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let mut text = String::new();
        for file in std::fs::read_dir(&self.into).unwrap().flatten() {
            text.push_str(&std::fs::read_to_string(file.path()).unwrap_or_default());
        }
        text
    }
}

type Run<'a> = (&'a str, &'a str);
/// First and last log line of a run, in unix milliseconds.
type Span = (i64, i64);

/// Runs of each claim from the workloads' log (`claim node epoch ms` lines): two runs of one
/// claim (by node and fencing epoch) must not overlap in time. Returns the violations, the
/// number of runs per claim, and how many pairs were compared.
fn check_runs(text: &str) -> (Vec<String>, HashMap<String, usize>, usize) {
    let mut violations = Vec::new();
    let mut runs: HashMap<&str, HashMap<Run<'_>, Span>> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [claim, node, epoch, ms] = parts[..] else {
            continue;
        };
        let Ok(ms) = ms.parse::<i64>() else { continue };
        let span = runs
            .entry(claim)
            .or_default()
            .entry((node, epoch))
            .or_insert((ms, ms));
        span.0 = span.0.min(ms);
        span.1 = span.1.max(ms);
    }
    let mut overlaps_checked = 0;
    for (claim, spans) in &runs {
        let spans: Vec<(&Run<'_>, &Span)> = spans.iter().collect();
        for (i, (a_at, a)) in spans.iter().enumerate() {
            for (b_at, b) in &spans[i + 1..] {
                overlaps_checked += 1;
                if a.0 <= b.1 && b.0 <= a.1 {
                    violations.push(format!(
                        "claim {claim} ran on {a_at:?} during {a:?} and on {b_at:?} during {b:?}"
                    ));
                }
            }
        }
    }

    let counts = runs
        .iter()
        .map(|(claim, spans)| (claim.to_string(), spans.len()))
        .collect();
    (violations, counts, overlaps_checked)
}

#[test]
fn the_checker_catches_what_it_is_for() {
    // Two runs of one claim overlapping in time, on two nodes.
    let log = "c1 a 1 1000\nc1 a 1 1500\nc1 b 2 1400\nc1 b 2 2000\nc2 a 1 1000\nc2 b 2 1200\n";
    let (found, runs, _) = check_runs(log);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("claim c1"), "{found:?}");
    assert_eq!(runs["c2"], 2, "c2 moved without overlapping");
    // Three half-CPU allocations on a one-CPU node within one revision.
    let alloc = |name: &str, revision: u64, phase: &str| infraos_store::Event {
        kind: infraos_store::EventKind::Put,
        kv: infraos_store::KeyValue {
            key: format!("/registry/allocations/p/{name}"),
            value: serde_json::to_vec(&json!({"spec": {"node": "n"}, "status": {"phase": phase}}))
                .unwrap()
                .into(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        },
        prev: None,
        decoded: None,
    };
    let capacity: HashMap<String, i64> = [("n".to_string(), 1000)].into_iter().collect();
    let ok = [
        alloc("a", 1, "Active"),
        alloc("b", 2, "Active"),
        alloc("a", 3, "Released"),
        alloc("c", 3, "Active"),
    ];
    assert!(
        check_history(&ok, &capacity).0.is_empty(),
        "a freed slot taken in the same revision is fine"
    );
    let over = [
        alloc("a", 1, "Active"),
        alloc("b", 2, "Active"),
        alloc("c", 3, "Active"),
    ];
    let (found, revisions, _) = check_history(&over, &capacity);
    assert_eq!(revisions, 3);
    assert!(
        found
            .iter()
            .any(|v| v.contains("node n: 1500m CPU held of 1000m at revision 3")),
        "{found:?}"
    );
}
