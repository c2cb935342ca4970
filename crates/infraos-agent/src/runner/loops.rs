//! The agent's background loops: the heartbeat, the watch on this node's allocations, the
//! inventory (with the drivers' fingerprints) and certificate rotation. Each runs for the
//! agent's life and tells the reconciler through [`Shared`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use infraos_api::Kind as _;
use infraos_api::agent_protocol::{HeartbeatResponse, NodeReport, NodeReportResponse};
use infraos_api::kinds::{AgentInfo, Allocation, AllocationSpec, NODE_LABEL};
use infraos_exec::DriverRegistry;
use infraos_exec::driver::Fingerprints;
use parking_lot::RwLock;

use super::Shared;
use crate::config::AgentConfig;
use crate::identity::{self, Identity};

pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut interval = Duration::from_secs(10);
    loop {
        let client = shared.client();
        // A heartbeat that takes longer than the interval is as good as lost.
        let beat = tokio::time::timeout(
            interval,
            client.send_json::<_, HeartbeatResponse>(
                reqwest::Method::POST,
                "/agent/v1/heartbeat",
                &serde_json::json!({}),
            ),
        )
        .await;
        let Ok(beat) = beat else {
            tracing::warn!(after = ?interval, "heartbeat timed out");
            continue;
        };
        match beat {
            Ok(r) => {
                interval = Duration::from_millis(r.heartbeat_interval_ms.clamp(100, 600_000));
                if let Some(tiers) = r.tiers {
                    shared.set_tiers(tiers);
                }
                if let Some(key) = &r.signing_key {
                    shared.offer_signing_key(key);
                }
            }
            Err(e) if e.code() == Some(404) => tracing::error!(
                error = %e,
                "the server no longer knows this node: an administrator deleted it; \
                 workloads run until their leases end; rejoin with a new join token"
            ),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

pub(super) async fn watch_loop(shared: Arc<Shared>) {
    let selector = format!("{NODE_LABEL}={}", shared.node);
    loop {
        let client = shared.client();
        let listed = client
            .list(AllocationSpec::INFO, None, Some(&selector))
            .await;
        let (items, revision) = match listed {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing allocations failed; keeping the last view");
                shared.allocations.lock().1 = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        {
            let mut view = shared.allocations.lock();
            view.0 = items
                .into_iter()
                .filter_map(|v| serde_json::from_value::<Allocation>(v).ok())
                .map(|a| {
                    (
                        format!("{}/{}", a.namespace().unwrap_or_default(), a.name()),
                        a,
                    )
                })
                .collect();
            view.1 = true;
        }
        shared.wake.notify_one();
        let mut events = match client
            .watch_as::<Allocation>(AllocationSpec::INFO, None, Some(&selector), Some(revision))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching allocations failed");
                shared.allocations.lock().1 = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            let key = format!(
                "{}/{}",
                event.object.namespace().unwrap_or_default(),
                event.object.name()
            );
            {
                let mut view = shared.allocations.lock();
                match event.type_.as_str() {
                    "ADDED" | "MODIFIED" => {
                        view.0.insert(key, event.object);
                    }
                    "DELETED" => {
                        view.0.remove(&key);
                    }
                    _ => continue,
                }
            }
            shared.wake.notify_one();
        }
        shared.allocations.lock().1 = false;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn inventory_loop(
    shared: Arc<Shared>,
    config: AgentConfig,
    info: AgentInfo,
    drivers: Arc<DriverRegistry>,
) {
    // What was last published: the inventory's fingerprint and the drivers' (a driver that
    // turns unhealthy is published as such, as a changed inventory is).
    let mut last: Option<(u64, Fingerprints)> = None;
    loop {
        let inventory = tokio::task::spawn_blocking(|| {
            infraos_inventory::collect(&infraos_inventory::Options::default())
        })
        .await
        .unwrap_or_default();
        let mut agent = info.clone();
        agent.fingerprints = drivers.fingerprints();
        let seen = (
            infraos_inventory::fingerprint(&inventory),
            agent.fingerprints.clone(),
        );
        if last.as_ref() != Some(&seen) {
            let report = NodeReport {
                agent,
                resources: crate::resources::with_driver_labels(
                    crate::resources::from_inventory(
                        &shared.node,
                        &inventory,
                        config.reserve_cpu,
                        config.reserve_memory,
                    ),
                    &seen.1,
                ),
                inventory,
            };
            match shared
                .client()
                .send_json::<_, NodeReportResponse>(
                    reqwest::Method::PUT,
                    "/agent/v1/status",
                    &report,
                )
                .await
            {
                Ok(r) => {
                    shared.set_tiers(r.tiers);
                    last = Some(seen);
                    shared.wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "publishing inventory failed"),
            }
        }
        let pause = if last.is_some() {
            config.inventory_interval
        } else {
            Duration::from_secs(2)
        };
        tokio::time::sleep(pause).await;
    }
}

pub(super) async fn rotation_loop(
    shared: Arc<Shared>,
    config: AgentConfig,
    mut identity: Identity,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
) {
    loop {
        // At least a second between rotations, whatever the certificate says.
        let wait = shared
            .clock
            .now()
            .millis_until(identity.rotate_at())
            .max(1_000);
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        match identity::rotate(&shared.client(), &config.identity_dir(), &shared.node).await {
            Ok((next, tiers)) => {
                match (next.client(&shared.server), crate::serve::tls_config(&next)) {
                    (Ok(client), Ok(server_tls)) => {
                        *shared.client.write() = client;
                        *tls.write() = Arc::new(server_tls);
                        shared.set_tiers(tiers);
                        tracing::info!(expires = %next.not_after, "certificate rotated");
                        identity = next;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "rotated certificate unusable");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate rotation failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}
