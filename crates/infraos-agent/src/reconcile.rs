//! The agent's reconciler, pure: what the allocations on this node want, against what runs
//! locally, gives a list of actions. Level-triggered: it looks at the whole picture each time
//! and repeats nothing that is already done.
//!
//! ```text
//!  allocation (Active, epoch e, lease until T) × local record (epoch, state)
//!    none locally, T in the future, driver allowed ─► Start
//!    none locally, driver or tier refused         ─► Refuse (reported as Failed)
//!    none locally, instruction not verified       ─► Refuse (signature, replayed epoch)
//!    running, now ≥ T − stopGrace (not renewed)   ─► Stop "LeaseExpired"   (also with no server;
//!                                                    over by T, before the claim may move)
//!    running, allocation gone or ended (synced)   ─► Stop "Released"
//!    running, newer epoch for the same claim      ─► Stop "Fenced", then Start the new one
//!    ended, restart policy says so, backoff over  ─► Start (restart)
//!    running, WhileRunning, half the lease left   ─► Renew
//!    ended and no longer wanted, reported         ─► Forget
//! ```

use std::collections::BTreeMap;

use infraos_api::Time;
use infraos_api::kinds::{RenewPolicy, Tier, WorkloadSpec, WorkloadState};

/// A workload the control plane wants on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub claim: String,
    pub epoch: u64,
    pub spec: WorkloadSpec,
    pub renew_policy: RenewPolicy,
    pub renew_time: Time,
    pub expire_time: Time,
    /// Why the instruction must not be acted on (its signature does not verify, or its
    /// epoch is older than one this node already ran for the claim); `None` when it may.
    pub refused: Option<String>,
}

/// What runs here, as the reconciler needs to see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub claim: String,
    pub namespace: String,
    pub epoch: u64,
    pub state: WorkloadState,
    pub stopping: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub next_start_ms: Option<i64>,
    pub expire_time: Time,
    pub reported: bool,
    pub spec: WorkloadSpec,
}

/// Why a privileged workload (root, host network, capabilities, writable host paths) must
/// not start here; `None` for a contained one, or a privileged one whose instruction the
/// server signed with its approvers in it. The node's tiers are checked by [`compute`].
pub fn privileged_refusal(
    spec: &WorkloadSpec,
    approved_by: &[String],
    signature_verified: bool,
) -> Option<String> {
    if !spec.is_privileged() {
        return None;
    }
    let what = spec.privileges().join(", ");
    if !signature_verified {
        return Some(format!(
            "privileged workload ({what}) refused: this node runs privileged work only on an \
             instruction signed by the server, and has no signing key pinned"
        ));
    }
    if approved_by.is_empty() {
        return Some(format!(
            "privileged workload ({what}) refused: its signed instruction names no approver"
        ));
    }
    None
}

/// When a run must start stopping for its lease to end with it: `stopGrace` before the
/// lease's end, so that even a workload that ignores SIGTERM is gone by then, and the control
/// plane (which waits the end plus a skew margin) never sees the claim run twice.
pub fn stop_at(expire: Time, spec: &WorkloadSpec) -> Time {
    let grace = i64::try_from(spec.stop_grace.as_millis()).unwrap_or(i64::MAX / 4);
    Time::from_unix_millis(expire.unix_millis().saturating_sub(grace))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Refuse { uid: String, reason: String },
    Stop { uid: String, reason: &'static str },
    Renew(String),
    Forget(String),
}

/// `synced`: `wanted` is a fresh view from the server (not a remembered one), so anything
/// absent from it is really over. `drivers`: what this agent's config allows; `tiers`: the
/// tiers the node holds, `None` while the grant is not known yet (nothing starts then). A
/// revoked tier stops new starts and restarts; what runs keeps running until its allocation
/// ends, as a lease promised.
pub fn compute(
    wanted: &BTreeMap<String, Wanted>,
    local: &BTreeMap<String, Local>,
    now: Time,
    synced: bool,
    drivers: &[String],
    tiers: Option<&[Tier]>,
) -> Vec<Action> {
    let lacks = |spec: &WorkloadSpec| -> Option<Tier> {
        let held = tiers?;
        spec.required_tiers()
            .into_iter()
            .find(|t| !held.contains(t))
    };
    let mut actions = Vec::new();
    for (uid, l) in local {
        let running = matches!(l.state, WorkloadState::Starting | WorkloadState::Running);
        let superseded = wanted
            .values()
            .any(|w| w.claim == l.claim && w.namespace == l.namespace && w.epoch > l.epoch);
        let gone = !wanted.contains_key(uid) && synced;
        if running && !l.stopping {
            if now >= stop_at(l.expire_time, &l.spec) {
                actions.push(Action::Stop {
                    uid: uid.clone(),
                    reason: "LeaseExpired",
                });
            } else if superseded {
                actions.push(Action::Stop {
                    uid: uid.clone(),
                    reason: "Fenced",
                });
            } else if gone {
                actions.push(Action::Stop {
                    uid: uid.clone(),
                    reason: "Released",
                });
            }
        }
        if !running && (gone || superseded) && l.reported {
            actions.push(Action::Forget(uid.clone()));
        }
    }
    for (uid, w) in wanted {
        if now >= stop_at(w.expire_time, &w.spec) {
            continue;
        }
        match local.get(uid) {
            None => {
                let blocked_by_older = local.values().any(|l| {
                    l.claim == w.claim
                        && l.namespace == w.namespace
                        && l.epoch < w.epoch
                        && matches!(l.state, WorkloadState::Starting | WorkloadState::Running)
                });
                if blocked_by_older {
                    continue;
                }
                if tiers.is_none() {
                    continue;
                }
                if let Some(reason) = &w.refused {
                    actions.push(Action::Refuse {
                        uid: uid.clone(),
                        reason: reason.clone(),
                    });
                } else if !drivers.iter().any(|d| d == w.spec.driver.as_str()) {
                    actions.push(Action::Refuse {
                        uid: uid.clone(),
                        reason: format!(
                            "driver {} is not allowed on this node",
                            w.spec.driver.as_str()
                        ),
                    });
                } else if let Some(tier) = lacks(&w.spec) {
                    actions.push(Action::Refuse {
                        uid: uid.clone(),
                        reason: format!("the node does not hold the {} tier", tier.as_str()),
                    });
                } else {
                    actions.push(Action::Start(uid.clone()));
                }
            }
            Some(l) => {
                let ended = matches!(l.state, WorkloadState::Exited | WorkloadState::Failed);
                let exit = if l.signal.is_some() {
                    None
                } else {
                    l.exit_code
                };
                if ended
                    && tiers.is_some()
                    && lacks(&l.spec).is_none()
                    && !l.stopping
                    && l.spec.restart.restarts_after(exit)
                    && l.next_start_ms.is_none_or(|t| now.unix_millis() >= t)
                {
                    actions.push(Action::Start(uid.clone()));
                }
                let running = l.state == WorkloadState::Running && !l.stopping;
                if running && w.renew_policy == RenewPolicy::WhileRunning {
                    let lease = w.expire_time.unix_millis() - w.renew_time.unix_millis();
                    let left = w.expire_time.unix_millis() - now.unix_millis();
                    if left * 2 < lease {
                        actions.push(Action::Renew(uid.clone()));
                    }
                }
            }
        }
    }
    actions
}

#[cfg(test)]
mod privileged_tests {
    use super::*;

    fn spec(json: &str) -> WorkloadSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn privileged_work_needs_a_signed_approval() {
        let contained = spec(r#"{"command": "/bin/true"}"#);
        assert_eq!(privileged_refusal(&contained, &[], false), None);
        let root = spec(r#"{"command": "/bin/true", "user": "root"}"#);
        let unsigned = privileged_refusal(&root, &["user:carol".into()], false).unwrap();
        assert!(unsigned.contains("signing key"), "{unsigned}");
        let unapproved = privileged_refusal(&root, &[], true).unwrap();
        assert!(unapproved.contains("runs as root") && unapproved.contains("no approver"));
        assert_eq!(
            privileged_refusal(&root, &["user:carol".into()], true),
            None
        );
        let host = spec(r#"{"command": "/bin/true", "hostNetwork": true}"#);
        assert!(privileged_refusal(&host, &[], true).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXECUTE: &[Tier] = &[Tier::Inventory, Tier::Execute];
    const NONE: &[Tier] = &[Tier::Inventory];
    use infraos_api::kinds::{RestartPolicy, RestartSpec};
    use proptest::prelude::*;

    fn t(ms: i64) -> Time {
        Time::from_unix_millis(ms)
    }

    fn spec(policy: RestartPolicy) -> WorkloadSpec {
        WorkloadSpec {
            restart: RestartSpec {
                policy,
                ..Default::default()
            },
            ..WorkloadSpec::process("/bin/true", Vec::new())
        }
    }

    fn wanted(uid: &str, epoch: u64, expire: i64) -> Wanted {
        Wanted {
            uid: uid.into(),
            namespace: "p".into(),
            name: "c".into(),
            claim: "c".into(),
            epoch,
            spec: spec(RestartPolicy::Never),
            renew_policy: RenewPolicy::Manual,
            renew_time: t(0),
            expire_time: t(expire),
            refused: None,
        }
    }

    #[test]
    fn unverified_instructions_and_missing_tiers_are_refused() {
        let mut w = BTreeMap::from([("u1".to_string(), wanted("u1", 1, 10_000))]);
        if let Some(x) = w.get_mut("u1") {
            x.refused = Some("the instruction's signature does not verify".into());
        }
        assert!(matches!(
            &compute(&w, &BTreeMap::new(), t(0), true, &process(), Some(EXECUTE))[0],
            Action::Refuse { reason, .. } if reason.contains("signature")
        ));
        let mut w = BTreeMap::from([("u1".to_string(), wanted("u1", 1, 10_000))]);
        if let Some(x) = w.get_mut("u1") {
            x.spec.tiers = vec![Tier::Network];
        }
        assert!(matches!(
            &compute(&w, &BTreeMap::new(), t(0), true, &process(), Some(EXECUTE))[0],
            Action::Refuse { reason, .. } if reason.contains("network")
        ));
        let held = [Tier::Execute, Tier::Network];
        assert_eq!(
            compute(&w, &BTreeMap::new(), t(0), true, &process(), Some(&held)),
            vec![Action::Start("u1".into())]
        );
    }

    fn local(epoch: u64, state: WorkloadState, expire: i64) -> Local {
        Local {
            claim: "c".into(),
            namespace: "p".into(),
            epoch,
            state,
            stopping: false,
            exit_code: None,
            signal: None,
            next_start_ms: None,
            expire_time: t(expire),
            reported: true,
            spec: spec(RestartPolicy::Never),
        }
    }

    fn map<T>(items: Vec<(&str, T)>) -> BTreeMap<String, T> {
        items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    const DRIVERS: &[String] = &[];

    fn process() -> Vec<String> {
        vec!["process".into()]
    }

    #[test]
    fn starts_what_is_wanted_once() {
        let w = map(vec![("a", wanted("a", 1, 10_000))]);
        assert_eq!(
            compute(&w, &BTreeMap::new(), t(0), true, &process(), Some(EXECUTE)),
            vec![Action::Start("a".into())]
        );
        let l = map(vec![("a", local(1, WorkloadState::Running, 10_000))]);
        assert_eq!(
            compute(&w, &l, t(0), true, &process(), Some(EXECUTE)),
            vec![]
        );
    }

    #[test]
    fn refuses_drivers_and_tiers_it_lacks() {
        let w = map(vec![("a", wanted("a", 1, 10_000))]);
        assert!(matches!(
            compute(&w, &BTreeMap::new(), t(0), true, DRIVERS, Some(EXECUTE))[0],
            Action::Refuse { .. }
        ));
        assert!(matches!(
            compute(&w, &BTreeMap::new(), t(0), true, &process(), Some(NONE))[0],
            Action::Refuse { .. }
        ));
    }

    #[test]
    fn starts_nothing_before_the_grant_is_known_and_keeps_running_work_when_revoked() {
        let w = map(vec![("a", wanted("a", 1, 10_000))]);
        assert_eq!(
            compute(&w, &BTreeMap::new(), t(0), true, &process(), None),
            vec![]
        );
        let running = map(vec![("a", local(1, WorkloadState::Running, 10_000))]);
        assert_eq!(
            compute(&w, &running, t(0), true, &process(), Some(NONE)),
            vec![]
        );
        let mut w_always = wanted("a", 1, 10_000);
        w_always.spec = spec(RestartPolicy::Always);
        let mut ended = local(1, WorkloadState::Exited, 10_000);
        ended.spec = spec(RestartPolicy::Always);
        ended.exit_code = Some(0);
        let (w, l) = (map(vec![("a", w_always)]), map(vec![("a", ended)]));
        assert_eq!(compute(&w, &l, t(0), true, &process(), Some(NONE)), vec![]);
        assert_eq!(
            compute(&w, &l, t(0), true, &process(), Some(EXECUTE)),
            vec![Action::Start("a".into())]
        );
    }

    #[test]
    fn keeps_running_without_a_server_until_the_lease_ends() {
        let w = map(vec![("a", wanted("a", 1, 10_000))]);
        let l = map(vec![("a", local(1, WorkloadState::Running, 10_000))]);
        assert_eq!(
            compute(&w, &l, t(9_999), false, &process(), Some(EXECUTE)),
            vec![]
        );
        assert_eq!(
            compute(&w, &l, t(10_000), false, &process(), Some(EXECUTE)),
            vec![Action::Stop {
                uid: "a".into(),
                reason: "LeaseExpired"
            }]
        );
    }

    #[test]
    fn stops_what_was_released_only_on_a_fresh_view() {
        let l = map(vec![("a", local(1, WorkloadState::Running, 10_000))]);
        assert_eq!(
            compute(&BTreeMap::new(), &l, t(0), false, &process(), Some(EXECUTE)),
            vec![]
        );
        assert_eq!(
            compute(&BTreeMap::new(), &l, t(0), true, &process(), Some(EXECUTE)),
            vec![Action::Stop {
                uid: "a".into(),
                reason: "Released"
            }]
        );
    }

    #[test]
    fn a_newer_epoch_fences_the_old_run_before_starting() {
        let w = map(vec![("b", wanted("b", 2, 10_000))]);
        let l = map(vec![("a", local(1, WorkloadState::Running, 10_000))]);
        let actions = compute(&w, &l, t(0), false, &process(), Some(EXECUTE));
        assert_eq!(
            actions,
            vec![Action::Stop {
                uid: "a".into(),
                reason: "Fenced"
            }]
        );
    }

    #[test]
    fn restarts_by_policy_after_backoff() {
        let mut w = wanted("a", 1, 10_000);
        w.spec = spec(RestartPolicy::OnFailure);
        let w = map(vec![("a", w)]);
        let mut l = local(1, WorkloadState::Exited, 10_000);
        l.spec = spec(RestartPolicy::OnFailure);
        l.exit_code = Some(3);
        l.next_start_ms = Some(500);
        let l1 = map(vec![("a", l.clone())]);
        assert_eq!(
            compute(&w, &l1, t(100), true, &process(), Some(EXECUTE)),
            vec![]
        );
        assert_eq!(
            compute(&w, &l1, t(600), true, &process(), Some(EXECUTE)),
            vec![Action::Start("a".into())]
        );
        l.exit_code = Some(0);
        let l2 = map(vec![("a", l)]);
        assert_eq!(
            compute(&w, &l2, t(600), true, &process(), Some(EXECUTE)),
            vec![]
        );
    }

    proptest! {
        /// Whatever the view, a workload whose lease has ended is never started, a running
        /// one is never started again, and a newer epoch waits for the older run to stop.
        #[test]
        fn never_starts_past_the_lease_or_twice(
            epochs in proptest::collection::vec((1u64..4, 0i64..20_000, any::<bool>()), 1..6),
            now in 0i64..20_000,
            synced in any::<bool>(),
        ) {
            let mut w = BTreeMap::new();
            let mut l = BTreeMap::new();
            for (i, (epoch, expire, running)) in epochs.iter().enumerate() {
                let uid = format!("u{i}");
                w.insert(uid.clone(), wanted(&uid, *epoch, *expire));
                if *running {
                    l.insert(uid.clone(), local(*epoch, WorkloadState::Running, *expire));
                }
            }
            let actions = compute(&w, &l, t(now), synced, &process(), Some(EXECUTE));
            let starts: Vec<&String> = actions.iter().filter_map(|a| match a { Action::Start(u) => Some(u), _ => None }).collect();
            for uid in &starts {
                prop_assert!(now < w[*uid].expire_time.unix_millis());
                prop_assert!(!l.contains_key(*uid));
                // An older run of the same claim still running blocks a newer start.
                prop_assert!(!l.values().any(|r| r.epoch < w[*uid].epoch));
            }
        }
    }
}
