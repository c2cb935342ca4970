//! Heartbeats shared between server replicas: agents beat to whichever replica they reach,
//! and the leader's node-lifecycle controller must hear them all.
//!
//! ```text
//!   agent ─beat─► replica A (memory) ──every ½ interval──► /coordination/heartbeats/A {node: ms}
//!                                                                 │ watch (every replica)
//!                                           replica B, the leader: Liveness::merge ◄─┘
//! ```
//! One small write per replica per half heartbeat interval, whatever the number of agents:
//! heartbeats stay out of the store's hot path, as on a single server.

use std::time::Duration;

use infraos_store::{EventKind, Txn};
use tokio::sync::{mpsc, watch};

use crate::Context;
use crate::reflector::{self, Change};

pub const PREFIX: &str = "/coordination/heartbeats/";

pub fn spawn(
    state: Context,
    identity: String,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(reflector::run(
        state.store.clone(),
        PREFIX.to_string(),
        (),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(state, identity, rx, shutdown))
}

async fn run(
    state: Context,
    identity: String,
    mut rx: mpsc::Receiver<Change<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let own_key = format!("{PREFIX}{identity}");
    let interval = (state.config.heartbeat_interval.as_std() / 2)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let keep_ms = 2 * state.config.node_grace_period.as_millis() as i64;
    let mut tick = tokio::time::interval(interval);
    let mut published: std::collections::HashMap<String, i64> = Default::default();
    let merge = |kv: &infraos_store::KeyValue| {
        if kv.key == own_key {
            return;
        }
        match serde_json::from_slice::<std::collections::HashMap<String, i64>>(&kv.value) {
            Ok(beats) => {
                for (node, at) in beats {
                    state.liveness.merge(&node, at);
                }
            }
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "bad heartbeat record"),
        }
    };
    loop {
        tokio::select! {
            change = rx.recv() => match change {
                Some(Change::Resync((), kvs, _)) => kvs.iter().for_each(&merge),
                Some(Change::Events((), events)) => {
                    for e in events.iter().filter(|e| e.kind == EventKind::Put) {
                        merge(&e.kv);
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let now = state.clock.now().unix_millis();
                let beats = state.liveness.local_since(now - keep_ms);
                if beats != published {
                    let value = serde_json::to_vec(&beats).unwrap_or_default();
                    match state.store.txn(Txn::new().put(own_key.clone(), value)).await {
                        Ok(_) => published = beats,
                        Err(e) => tracing::warn!(error = %e, "cannot share heartbeats"),
                    }
                }
            }
            _ = shutdown.changed() => {
                let _ = state.store.txn(Txn::new().delete(own_key.clone())).await;
                return;
            }
        }
    }
}
