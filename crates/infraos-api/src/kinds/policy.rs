//! Policy: rules the control plane applies to what users ask for. Today: which claims need
//! approval before they are scheduled, and by how many people.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EmptyStatus, Tier};
use crate::envelope::{Kind, KindInfo, Object};
use crate::labels::LabelSelector;
use crate::names;
use crate::validation::Errors;

/// The most approvers a policy may require.
pub const MAX_APPROVERS: u32 = 10;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Claims this policy covers need approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRule>,
}

/// Which claims need approval, and from how many approvers (never the requester).
///
/// A rule covers a claim when every condition it sets holds: the claim is in one of
/// `projects` (any project when empty), its labels match `claimSelector` (any when absent),
/// and its workload needs one of `tiers` (any claim when empty). Without any Policy, a claim
/// whose workload needs the `network` or `storage` tier needs one approver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRule {
    /// How many distinct approvers, 1 to 10.
    pub approvers: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_selector: Option<LabelSelector>,
}

impl ApprovalRule {
    /// Whether the rule covers a claim in `project` with these labels whose workload needs
    /// `tiers`.
    pub fn covers(
        &self,
        project: &str,
        labels: &std::collections::BTreeMap<String, String>,
        tiers: &[Tier],
    ) -> bool {
        (self.projects.is_empty() || self.projects.iter().any(|p| p == project))
            && self
                .claim_selector
                .as_ref()
                .is_none_or(|s| s.matches_with(|k| labels.get(k).map(String::as_str)))
            && (self.tiers.is_empty() || self.tiers.iter().any(|t| tiers.contains(t)))
    }
}

impl Kind for PolicySpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Policy",
        plural: "policies",
        singular: "policy",
        short_names: &["pol"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let Some(rule) = &object.spec.approval else {
            errors.add("spec.approval", "a policy needs a rule (approval)");
            return;
        };
        if rule.approvers == 0 || rule.approvers > MAX_APPROVERS {
            errors.add(
                "spec.approval.approvers",
                format!("must be between 1 and {MAX_APPROVERS}"),
            );
        }
        for (i, t) in rule.tiers.iter().enumerate() {
            if *t == Tier::Inventory {
                errors.add(
                    format!("spec.approval.tiers[{i}]"),
                    "workloads do not use the inventory tier",
                );
            }
        }
        for (i, p) in rule.projects.iter().enumerate() {
            if let Some(problem) = names::project_name_problem(p) {
                errors.add(format!("spec.approval.projects[{i}]"), problem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cover_by_project_labels_and_tiers() {
        let labels = std::collections::BTreeMap::from([("risk".to_string(), "high".to_string())]);
        let mut rule = ApprovalRule {
            approvers: 2,
            ..Default::default()
        };
        assert!(rule.covers("p", &labels, &[]), "no condition: every claim");
        rule.tiers = vec![Tier::Network];
        assert!(!rule.covers("p", &labels, &[Tier::Execute]));
        assert!(rule.covers("p", &labels, &[Tier::Execute, Tier::Network]));
        rule.projects = vec!["q".into()];
        assert!(!rule.covers("p", &labels, &[Tier::Network]));
        rule.projects.clear();
        rule.tiers.clear();
        rule.claim_selector = Some("risk=high".parse().unwrap());
        assert!(rule.covers("p", &labels, &[]));
        assert!(!rule.covers("p", &Default::default(), &[]));
    }

    #[test]
    fn approver_counts_are_bounded() {
        let policy = Object::new(
            "p",
            None,
            PolicySpec {
                description: None,
                approval: Some(ApprovalRule {
                    approvers: 0,
                    ..Default::default()
                }),
            },
        );
        let err = crate::envelope::check(&policy).unwrap_err().to_string();
        assert!(err.contains("spec.approval.approvers"), "{err}");
    }
}
