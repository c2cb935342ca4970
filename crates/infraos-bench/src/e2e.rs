//! `bench e2e`: a real server process (or `--server`), the synthetic cluster created through
//! the API, then claims submitted concurrently over HTTPS, one per request or in batches;
//! claims/s counts from the first submission until the watch has seen every claim decided.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use infraos_client::{Client, ClientConfig};

use crate::scheduler_core::scheduler_core;
use crate::synthetic::{self, PROJECT};
use crate::{cpu_seconds, start_server};

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
pub(crate) struct E2e {
    pub(crate) nodes: usize,
    pub(crate) claims: usize,
    pub(crate) server: Option<String>,
    /// The store of the server this bench starts (`None`: the embedded one).
    pub(crate) store: Option<String>,
    /// The client config file for `server`'s CA and token (`--config`).
    pub(crate) client_config: Option<std::path::PathBuf>,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) batch: usize,
    pub(crate) timeout: Duration,
    pub(crate) governance: bool,
    pub(crate) devices: bool,
}

pub(crate) async fn e2e(options: E2e) -> anyhow::Result<()> {
    let E2e {
        nodes,
        claims,
        server,
        store,
        client_config,
        concurrency,
        connections,
        batch,
        timeout,
        governance,
        devices,
    } = options;
    let synthetic = synthetic::cluster(nodes, claims, governance, devices);
    let (guard, config) = match server {
        Some(url) => (
            None,
            ClientConfig::load_for(client_config.as_deref(), Some(&url))?,
        ),
        None => {
            let mut profile = String::new();
            if let Some(store) = &store {
                profile.push_str(&format!("store: {store}\n"));
            }
            if governance {
                profile.push_str(synthetic::GOVERNANCE_PROFILE);
            }
            let (g, c) = start_server(&profile).await?;
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
    let claim_kind = infraos_api::object::kind_by_any_name("claims")
        .context("the claims kind is not registered")?;
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
