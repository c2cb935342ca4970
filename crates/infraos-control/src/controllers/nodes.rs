//! The node-lifecycle controller: turns the in-memory heartbeat record into the Node's
//! `Ready` condition, writing only transitions.
//!
//! ```text
//!   heartbeat ──► Liveness (memory) ──┐
//!   Node watch ──► which nodes run an agent, what their Ready says ──┤
//!                                                                   ▼
//!        every second: alive = now − last beat < grace ; alive ≠ Ready? ──► write Ready
//! ```
//! A NotReady node's allocations are not touched here: they become Lost only when their own
//! lease ends (the lease controller), so a partition shorter than a lease stops nothing.

use foldhash::{HashMap, HashMapExt};
use std::time::Duration;

use futures::StreamExt as _;
use infraos_api::Kind as _;
use infraos_api::kinds::NodeSpec;
use infraos_api::meta::Condition;
use tokio::sync::{mpsc, watch};

use crate::Context;
use crate::audit::Actor;
use crate::objects::{self, decode_typed};
use crate::reflector::{self, Change};
use crate::write::{Audit, Decision, Target, update};

const TICK: Duration = Duration::from_millis(500);

pub fn spawn(state: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(reflector::run(
        state.store.clone(),
        objects::prefix(NodeSpec::INFO, None),
        (),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(state, rx, shutdown))
}

/// What the controller knows of an agent-run node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    ready: bool,
}

/// The pure decision: the `Ready` status a node should have, if it differs from `seen`.
pub fn desired_ready(
    seen_ready: bool,
    last_beat_ms: i64,
    now_ms: i64,
    grace_ms: i64,
) -> Option<bool> {
    let alive = now_ms - last_beat_ms < grace_ms;
    (alive != seen_ready).then_some(alive)
}

async fn run(
    state: Context,
    mut rx: mpsc::Receiver<Change<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut nodes: HashMap<String, Seen> = HashMap::new();
    let grace_ms = i64::try_from(state.config.node_grace_period.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return };
                let now = state.clock.now().unix_millis();
                match change {
                    Change::Resync(_, kvs, _) => {
                        nodes.clear();
                        state.liveness.clear_tiers();
                        for kv in &kvs {
                            observe(&state, &mut nodes, kv, now);
                        }
                    }
                    Change::Events(_, events) => {
                        for event in events.iter() {
                            if event.kind == infraos_store::EventKind::Delete {
                                let name = event.kv.key.rsplit('/').next().unwrap_or_default();
                                nodes.remove(name);
                                state.liveness.forget(name);
                            } else {
                                observe(&state, &mut nodes, &event.kv, now);
                            }
                        }
                    }
                }
                continue;
            }
            _ = tokio::time::sleep(TICK) => {}
            _ = state.liveness.changed.notified() => {}
            _ = shutdown.changed() => return,
        }
        let now = state.clock.now().unix_millis();
        let due: Vec<(String, bool)> = nodes
            .iter()
            .filter_map(|(name, seen)| {
                let last = state.liveness.last_beat(name)?;
                desired_ready(seen.ready, last, now, grace_ms).map(|r| (name.clone(), r))
            })
            .collect();
        // Many at once (a fleet starting, a rack going dark): concurrent writes share the
        // store's group commits instead of paying one commit each.
        let mut writes = futures::stream::iter(due.into_iter().map(|(name, ready)| {
            let state = &state;
            async move { (set_ready(state, &name, ready).await, name, ready) }
        }))
        .buffer_unordered(64);
        while let Some((result, name, ready)) = writes.next().await {
            match result {
                Ok(()) => {
                    if let Some(seen) = nodes.get_mut(&name) {
                        seen.ready = ready;
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "updating node readiness failed")
                }
            }
        }
    }
}

fn observe(
    state: &Context,
    nodes: &mut HashMap<String, Seen>,
    kv: &infraos_store::KeyValue,
    now_ms: i64,
) {
    let Ok(node) = decode_typed::<NodeSpec>(kv) else {
        return;
    };
    state.liveness.set_tiers(node.name(), &node.spec.tiers);
    let Some(status) = node.status.as_ref().filter(|s| s.agent.is_some()) else {
        return;
    };
    state.liveness.adopt(node.name(), now_ms);
    nodes.insert(
        node.name().to_string(),
        Seen {
            ready: status.is_ready() && has_ready(status),
        },
    );
}

/// An agent-run node is ready only once the controller has said so.
fn has_ready(status: &infraos_api::kinds::NodeStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == "Ready")
}

async fn set_ready(state: &Context, name: &str, ready: bool) -> Result<(), crate::ControlError> {
    let actor = Actor::system("node-lifecycle");
    let target = Target {
        namespace: None,
        name,
        actor: &actor,
    };
    let missing = || crate::ControlError::not_found("Node", name);
    let written = update::<NodeSpec, _>(state, target, missing, |node, now| {
        let last_beat = state
            .liveness
            .last_beat(name)
            .map(infraos_api::Time::from_unix_millis);
        let status = node.status.get_or_insert_with(Default::default);
        if has_ready(status) && status.is_ready() == ready {
            return Ok(Decision::Unchanged(false));
        }
        status.heartbeat_time = last_beat;
        status.conditions.retain(|c| c.type_ != "Ready");
        status.conditions.push(Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: Some(
                if ready {
                    "HeartbeatOK"
                } else {
                    "HeartbeatMissed"
                }
                .into(),
            ),
            message: Some(if ready {
                "the agent is heartbeating".to_string()
            } else {
                format!(
                    "no heartbeat for {} (last at {})",
                    state.config.node_grace_period,
                    last_beat
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "never".into())
                )
            }),
            last_transition_time: Some(now),
        });
        Ok(Decision::Write {
            audit: Audit {
                verb: "update-status",
                subresource: Some("status"),
                reason: Some(if ready { "Ready" } else { "NotReady" }.into()),
                node: Some(name.to_string()),
            },
            result: true,
        })
    })
    .await;
    match written {
        Ok(changed) => {
            if changed {
                tracing::info!(node = %name, ready, "node readiness changed");
            }
            Ok(())
        }
        // Deleted meanwhile: nothing to mark.
        Err(crate::ControlError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_flips_only_on_transitions() {
        assert_eq!(desired_ready(false, 1_000, 2_000, 40_000), Some(true));
        assert_eq!(desired_ready(true, 1_000, 2_000, 40_000), None);
        assert_eq!(desired_ready(true, 1_000, 41_000, 40_000), Some(false));
        assert_eq!(desired_ready(false, 1_000, 41_000, 40_000), None);
    }
}
