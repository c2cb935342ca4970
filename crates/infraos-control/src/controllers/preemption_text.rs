//! How a preemption reads to the projects it involves. A preempting claim's status and events
//! are read by its project's members; the victims' by theirs. Each names claims of its own
//! project and counts the others (issue 16, finding 10). The plan applier writes these
//! messages and `explain` replays them, so both use this one place.

/// What a preempting claim's status says: the victims, where, why, and what it lacks.
/// Victims are named where `shown` says so (`namespace/name`) and counted otherwise: the
/// message lands in the preempting claim's status and events, which its project's members
/// read, and other projects' claims are none of their business.
pub(crate) fn preemption_message(
    preemption: &infraos_scheduler::PreemptionPlan,
    shown: &(dyn Fn(&str) -> bool + Send + Sync),
) -> String {
    let at = preemption
        .node
        .as_deref()
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    let mut names: Vec<String> = preemption
        .victims
        .iter()
        .filter(|v| shown(&v.allocation))
        .map(|v| format!("{} (priority {})", v.allocation, v.priority))
        .collect();
    let hidden = preemption.victims.len() - names.len();
    if hidden > 0 {
        names.push(format!("{hidden} allocation(s) of other projects"));
    }
    format!(
        "preempting {}{at}: {}; the claim is placed when they have stopped. {}",
        names.join(", "),
        preemption
            .victims
            .first()
            .map(|v| v.reason.as_str())
            .unwrap_or_default(),
        preemption.explanation.message()
    )
}

/// Whether claim or allocation `namespace/name` is in project `project`.
pub(crate) fn same_project(key: &str, project: &str) -> bool {
    key.split_once('/').is_some_and(|(ns, _)| ns == project)
}

/// How one project's status and events name a claim `namespace/name`: by name in the same
/// project, anonymously in another.
pub(crate) fn as_seen_from<'a>(key: &'a str, project: &str) -> &'a str {
    if same_project(key, project) {
        key
    } else {
        "a claim of another project"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infraos_scheduler::{Explanation, PreemptionPlan, Victim};

    /// Issue 16, finding 10: a preempting claim's status and events (read by its project)
    /// name victims of its own project only; the others are counted.
    #[test]
    fn preemption_messages_count_other_projects_victims_without_naming_them() {
        let victim = |allocation: &str| Victim {
            allocation: allocation.into(),
            priority: 10,
            reason: "priority 1000 > 10".into(),
        };
        let plan = PreemptionPlan {
            node: Some("n1".into()),
            victims: vec![
                victim("mine/low"),
                victim("theirs/secret"),
                victim("theirs/other"),
            ],
            explanation: Explanation::default(),
        };
        let message = preemption_message(&plan, &|v| same_project(v, "mine"));
        assert!(message.contains("mine/low (priority 10)"), "{message}");
        assert!(
            message.contains("2 allocation(s) of other projects"),
            "{message}"
        );
        assert!(!message.contains("theirs"), "{message}");
        assert_eq!(
            as_seen_from("theirs/secret", "mine"),
            "a claim of another project"
        );
        assert_eq!(as_seen_from("mine/low", "mine"), "mine/low");
    }
}
