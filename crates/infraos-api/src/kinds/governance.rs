//! Governance: who may use how much (Quota), who goes first (PriorityClass) and how the
//! waiting line is shared (Queue).
//!
//! ```text
//!   Quota         tenant ─┬─ project ─ limits per class and dimension, optional borrowing
//!                         └─ pool (label selector over Resources), for a tenant/project or all
//!   PriorityClass value, preemptionPolicy          (claims name it; admission copies the value)
//!   Queue         weight of the queue's dominant-resource share (DRF) among pending claims
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EmptyStatus;
use crate::envelope::{Kind, KindInfo, Object};
use crate::labels::LabelSelector;
use crate::names;
use crate::quantity::Quantity;
use crate::validation::Errors;

/// The dimension name quotas use for items classes (GPUs, IP addresses): a number of items.
pub const ITEMS_DIMENSION: &str = "count";
/// Priority values users may give; larger ones are kept for the system.
pub const MAX_USER_PRIORITY: i32 = 1_000_000_000;
pub const MAX_QUEUE_WEIGHT: f64 = 1000.0;
/// The queue claims join when they name none; it exists without an object (weight 1).
pub const DEFAULT_QUEUE: &str = "default";

/// Amounts by class, then by dimension (`count` for items classes).
pub type ClassAmounts = BTreeMap<String, BTreeMap<String, Quantity>>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PreemptionPolicy {
    /// May preempt allocations of lower priority (by at least the profile's minimum gap).
    #[default]
    PreemptLowerPriority,
    /// Waits its turn; never preempts.
    Never,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityClassSpec {
    /// Higher goes first and may preempt lower.
    pub value: i32,
    #[serde(default)]
    pub preemption_policy: PreemptionPolicy,
    /// The class of claims that name none (at most one class should set it).
    #[serde(default)]
    pub global_default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Kind for PriorityClassSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        short_names: &["pc"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let v = object.spec.value;
        if !(-MAX_USER_PRIORITY..=MAX_USER_PRIORITY).contains(&v) {
            errors.add(
                "spec.value",
                format!("must be between -{MAX_USER_PRIORITY} and {MAX_USER_PRIORITY}"),
            );
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSpec {
    /// The queue's share of the cluster relative to other queues: a queue of weight 2 gets
    /// twice the dominant-resource share of a queue of weight 1 when both have claims waiting.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for QueueSpec {
    fn default() -> Self {
        QueueSpec {
            weight: 1.0,
            description: None,
        }
    }
}

impl Kind for QueueSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Queue",
        plural: "queues",
        singular: "queue",
        short_names: &["q"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let w = object.spec.weight;
        if !w.is_finite() || w <= 0.0 || w > MAX_QUEUE_WEIGHT {
            errors.add(
                "spec.weight",
                format!("must be greater than 0 and at most {MAX_QUEUE_WEIGHT}"),
            );
        }
    }
}

/// Limits at one level. The level is the narrowest scope given: `pool` if set, else
/// `project`, else `tenant`. A pool quota limits what claims of its tenant or project (or of
/// everyone, if neither is given) may hold on the pool's resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Label selector over Resources (and their nodes' labels), e.g. `pool=gpu-east`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<LabelSelector>,
    /// Limits per class and dimension; `count` is the number of items of an items class.
    pub limits: ClassAmounts,
    /// Project quotas only: how far beyond `limits` the project may go while its tenant's
    /// quota has room. What is used beyond `limits` is borrowed, and borrowed allocations are
    /// the first that claims within their own limits preempt.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub borrowing_limit: ClassAmounts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuotaLevel {
    Tenant,
    Project,
    Pool,
}

impl QuotaLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaLevel::Tenant => "tenant",
            QuotaLevel::Project => "project",
            QuotaLevel::Pool => "pool",
        }
    }
}

impl QuotaSpec {
    pub fn level(&self) -> Option<QuotaLevel> {
        match (&self.tenant, &self.project, &self.pool) {
            (_, _, Some(_)) => Some(QuotaLevel::Pool),
            (_, Some(_), None) => Some(QuotaLevel::Project),
            (Some(_), None, None) => Some(QuotaLevel::Tenant),
            (None, None, None) => None,
        }
    }

    /// `tenant acme`, `project ml`, `pool pool=gpu-east of tenant acme`.
    pub fn scope(&self) -> String {
        let owner = match (&self.tenant, &self.project) {
            (_, Some(p)) => format!("project {p}"),
            (Some(t), None) => format!("tenant {t}"),
            (None, None) => String::new(),
        };
        match &self.pool {
            Some(sel) if owner.is_empty() => format!("pool {sel}"),
            Some(sel) => format!("pool {sel} of {owner}"),
            None => owner,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaStatus {
    /// What Active allocations hold against the limits, per class and dimension.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: ClassAmounts,
    /// Project quotas: what is held beyond `limits` (borrowed from the tenant).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub borrowed: ClassAmounts,
    /// The store revision the figures reflect.
    #[serde(default)]
    pub observed_revision: u64,
}

fn validate_amounts(field: &str, amounts: &ClassAmounts, errors: &mut Errors) {
    for (class, dims) in amounts {
        if let Some(p) = names::object_name_problem(class) {
            errors.add(format!("{field}.{class}"), p);
        }
        if dims.is_empty() {
            errors.add(format!("{field}.{class}"), "name at least one dimension");
        }
        for (dim, q) in dims {
            if q.is_negative() {
                errors.add(format!("{field}.{class}.{dim}"), "must not be negative");
            }
        }
    }
}

impl Kind for QuotaSpec {
    type Status = QuotaStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Quota",
        plural: "quotas",
        singular: "quota",
        short_names: &["quota"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let spec = &object.spec;
        if spec.level().is_none() {
            errors.add(
                "spec",
                "give the scope: tenant, project or pool (with an optional tenant or project)",
            );
        }
        if spec.tenant.is_some() && spec.project.is_some() {
            errors.add(
                "spec.tenant",
                "give tenant or project, not both: a project belongs to one tenant",
            );
        }
        for (field, name) in [
            ("spec.tenant", &spec.tenant),
            ("spec.project", &spec.project),
        ] {
            if let Some(p) = name.as_deref().and_then(names::object_name_problem) {
                errors.add(field, p);
            }
        }
        if spec.pool.as_ref().is_some_and(LabelSelector::is_empty) {
            errors.add("spec.pool", "must select something (e.g. pool=gpu-east)");
        }
        if spec.limits.is_empty() {
            errors.add("spec.limits", "give at least one class and dimension");
        }
        validate_amounts("spec.limits", &spec.limits, errors);
        validate_amounts("spec.borrowingLimit", &spec.borrowing_limit, errors);
        if !spec.borrowing_limit.is_empty() && spec.level() != Some(QuotaLevel::Project) {
            errors.add(
                "spec.borrowingLimit",
                "only project quotas borrow (from their tenant's quota)",
            );
        }
        for (class, dims) in &spec.borrowing_limit {
            for dim in dims.keys() {
                if spec.limits.get(class).and_then(|d| d.get(dim)).is_none() {
                    errors.add(
                        format!("spec.borrowingLimit.{class}.{dim}"),
                        "has no limit in spec.limits to borrow beyond",
                    );
                }
            }
        }
    }
}

/// A gang: claims that are allocated all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// Claims of a project with the same group name form the gang.
    pub name: String,
    /// How many members must be placed in the same scheduling cycle.
    pub min_members: u32,
}

pub const MAX_GROUP_MEMBERS: u32 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::check;

    fn quota(spec: QuotaSpec) -> Result<(), String> {
        check(&Object::new("q", None, spec)).map_err(|e| e.to_string())
    }

    fn limits(class: &str, dim: &str, q: &str) -> ClassAmounts {
        [(
            class.to_string(),
            [(dim.to_string(), q.parse().unwrap())]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn quota_level_is_the_narrowest_scope() {
        let mut spec = QuotaSpec {
            tenant: Some("acme".into()),
            limits: limits("compute", "cpu", "8"),
            ..QuotaSpec::default()
        };
        assert_eq!(spec.level(), Some(QuotaLevel::Tenant));
        assert!(quota(spec.clone()).is_ok());
        spec.pool = Some("pool=gpu-east".parse().unwrap());
        assert_eq!(spec.level(), Some(QuotaLevel::Pool));
        assert_eq!(spec.scope(), "pool pool=gpu-east of tenant acme");
        assert!(quota(spec).is_ok());
    }

    #[test]
    fn quota_rejects_bad_scopes_and_borrowing() {
        let err = quota(QuotaSpec {
            limits: limits("compute", "cpu", "8"),
            ..QuotaSpec::default()
        })
        .unwrap_err();
        assert!(err.contains("give the scope"), "{err}");
        let err = quota(QuotaSpec {
            tenant: Some("acme".into()),
            limits: limits("compute", "cpu", "8"),
            borrowing_limit: limits("compute", "cpu", "2"),
            ..QuotaSpec::default()
        })
        .unwrap_err();
        assert!(err.contains("spec.borrowingLimit"), "{err}");
        let err = quota(QuotaSpec {
            project: Some("ml".into()),
            limits: limits("compute", "cpu", "8"),
            borrowing_limit: limits("compute", "memory", "2"),
            ..QuotaSpec::default()
        })
        .unwrap_err();
        assert!(err.contains("spec.borrowingLimit.compute.memory"), "{err}");
        let err = quota(QuotaSpec {
            project: Some("ml".into()),
            limits: limits("compute", "cpu", "-1"),
            ..QuotaSpec::default()
        })
        .unwrap_err();
        assert!(err.contains("spec.limits.compute.cpu"), "{err}");
    }

    #[test]
    fn queue_weight_and_priority_ranges() {
        let q = |w: f64| {
            check(&Object::new(
                "q",
                None,
                QueueSpec {
                    weight: w,
                    description: None,
                },
            ))
        };
        assert!(q(2.0).is_ok());
        assert!(q(0.0).is_err());
        assert!(q(f64::INFINITY).is_err());
        assert!(q(1001.0).is_err());
        let pc = |v: i32| {
            check(&Object::new(
                "p",
                None,
                PriorityClassSpec {
                    value: v,
                    ..PriorityClassSpec::default()
                },
            ))
        };
        assert!(pc(1000).is_ok());
        assert!(pc(i32::MAX).is_err());
    }
}
