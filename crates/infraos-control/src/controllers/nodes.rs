//! The node-lifecycle controller: turns the in-memory heartbeat record into the Node's
//! `Ready` condition, writing only transitions.
//!
//! ```text
//!   heartbeat ──► Liveness (memory) ──┐
//!   Node watch ──► which nodes run an agent, what their Ready says ──┤
//!                                                                   ▼
//!        every second: alive = now − last beat < grace ; alive ≠ Ready? ──► write Ready
//! ```
//! It runs on the controller runtime over the Nodes: a reconcile writes the transition when
//! one is due and asks to be requeued when the node's last beat would be a grace period old
//! (a NotReady node: every half second, and at once when its first beat arrives).
//!
//! A NotReady node's allocations are not touched here: they become Lost only when their own
//! lease ends (the lease controller), so a partition shorter than a lease stops nothing.

use std::sync::Arc;
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::{Node, NodeSpec};
use infraos_api::meta::Condition;
use tokio::sync::watch;

use crate::audit::Actor;
use crate::objects;
use crate::runtime::{self, Action, Reconciler};
use crate::write::{Audit, Decision, Target, update};
use crate::{Context, ControlError};

/// How often a NotReady node is looked at again, besides the wake-up of its first beat.
const TICK: Duration = Duration::from_millis(500);

pub fn spawn(ctx: Context, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let grace_ms = i64::try_from(ctx.config.node_grace_period.as_millis()).unwrap_or(i64::MAX);
    let config = runtime::Config {
        // Many at once (a fleet starting, a rack going dark): concurrent writes share the
        // store's group commits instead of paying one commit each.
        concurrency: 64,
        ..runtime::Config::new(objects::prefix(NodeSpec::INFO, None))
    };
    runtime::spawn(
        Lifecycle {
            grace_ms,
            liveness: ctx.liveness.clone(),
        },
        config,
        ctx,
        shutdown,
    )
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

/// Marks nodes Ready and NotReady from their heartbeats.
pub struct Lifecycle {
    grace_ms: i64,
    liveness: Arc<crate::liveness::Liveness>,
}

impl Reconciler for Lifecycle {
    type Object = Node;
    type Error = ControlError;

    fn name(&self) -> &'static str {
        "node-lifecycle"
    }

    async fn reconcile(
        &self,
        _key: &str,
        node: Arc<Node>,
        ctx: &Context,
    ) -> Result<Action, ControlError> {
        let name = node.name();
        ctx.liveness.set_tiers(name, &node.spec.tiers);
        let Some(status) = node.status.as_ref().filter(|s| s.agent.is_some()) else {
            return Ok(Action::await_change());
        };
        let now = ctx.clock.now().unix_millis();
        ctx.liveness.adopt(name, now);
        let seen = status.is_ready() && has_ready(status);
        let Some(last) = ctx.liveness.last_beat(name) else {
            return Ok(Action::requeue(TICK));
        };
        let ready = match desired_ready(seen, last, now, self.grace_ms) {
            Some(ready) => {
                set_ready(ctx, name, ready).await?;
                ready
            }
            None => seen,
        };
        Ok(if ready {
            // Looked at again when the last beat would be a grace period old.
            let stale_in = last.saturating_add(self.grace_ms).saturating_sub(now);
            Action::requeue(Duration::from_millis(
                u64::try_from(stale_in).unwrap_or(0) + 1,
            ))
        } else {
            Action::requeue(TICK)
        })
    }

    fn deleted(&self, key: &str) {
        self.liveness
            .forget(key.rsplit('/').next().unwrap_or_default());
    }

    fn woken(&self) -> impl std::future::Future<Output = ()> + Send {
        // A node heard from for the first time (or again after a restart): look now.
        self.liveness.changed.notified()
    }
}

/// An agent-run node is ready only once the controller has said so.
fn has_ready(status: &infraos_api::kinds::NodeStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == "Ready")
}

async fn set_ready(state: &Context, name: &str, ready: bool) -> Result<(), ControlError> {
    let actor = Actor::system("node-lifecycle");
    let target = Target {
        namespace: None,
        name,
        actor: &actor,
    };
    let missing = || ControlError::not_found("Node", name);
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
