//! Heartbeats shared between server replicas: agents beat to whichever replica they reach,
//! and the leader's node-lifecycle controller must hear them all.
//!
//! ```text
//!   agent ─beat─► replica A (memory) ──every ½ interval──► /coordination/heartbeats/A {node: ms}
//!                                                                 │ watch (every replica)
//!                                           replica B, the leader: Liveness::merge ◄─┘
//! ```
//! One small write per replica per half heartbeat interval, whatever the number of agents:
//! heartbeats stay out of the store's hot path, as on a single server. The merge runs on the
//! controller runtime over the replicas' records; the publishing is a plain timer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use infraos_store::Txn;
use tokio::sync::watch;

use crate::Context;
use crate::runtime::{self, Action, Reconciler};

pub const PREFIX: &str = "/coordination/heartbeats/";

/// One replica's record: node → the time of its last beat there (ms).
type Beats = HashMap<String, i64>;

pub fn spawn(
    ctx: Context,
    identity: String,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let own_key = format!("{PREFIX}{identity}");
    let config = runtime::Config {
        resync: None,
        ..runtime::Config::new(PREFIX)
    };
    runtime::spawn(
        Merge {
            own_key: own_key.clone(),
        },
        config,
        ctx.clone(),
        shutdown.clone(),
    );
    tokio::spawn(publish(ctx, own_key, shutdown))
}

/// Merges the other replicas' records into this one's liveness.
struct Merge {
    own_key: String,
}

impl Reconciler for Merge {
    type Object = Beats;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "heartbeats"
    }

    async fn reconcile(
        &self,
        key: &str,
        beats: Arc<Beats>,
        ctx: &Context,
    ) -> Result<Action, Self::Error> {
        if key != self.own_key {
            for (node, at) in beats.iter() {
                ctx.liveness.merge(node, *at);
            }
        }
        Ok(Action::await_change())
    }
}

/// Writes this replica's record every half heartbeat interval when it changed; removes it
/// at shutdown.
async fn publish(ctx: Context, own_key: String, mut shutdown: watch::Receiver<bool>) {
    let interval = (ctx.config.heartbeat_interval.as_std() / 2)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let keep_ms = 2 * ctx.config.node_grace_period.as_millis() as i64;
    let mut tick = tokio::time::interval(interval);
    let mut published = Beats::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = ctx.clock.now().unix_millis();
                let beats = ctx.liveness.local_since(now - keep_ms);
                if beats != published {
                    let value = serde_json::to_vec(&beats).unwrap_or_default();
                    match ctx.store.txn(Txn::new().put(own_key.clone(), value)).await {
                        Ok(_) => published = beats,
                        Err(e) => tracing::warn!(error = %e, "cannot share heartbeats"),
                    }
                }
            }
            _ = shutdown.changed() => {
                let _ = ctx.store.txn(Txn::new().delete(own_key.clone())).await;
                return;
            }
        }
    }
}
