//! Role and RoleBinding: who may do what, where.
//!
//! A Role is a cluster-wide list of rules (verbs × kinds, optionally object names). A
//! RoleBinding grants one Role to users, groups or tokens at one scope: the whole cluster, a
//! tenant (the tenant and all its projects) or one project. Permissions only add up; there
//! are no deny rules, so the order of bindings never matters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EmptyStatus;
use crate::envelope::{Kind, KindInfo, Object};
use crate::names;
use crate::path::RULE_COLLECTIONS;
use crate::validation::Errors;

/// Every verb a rule may name. `*` stands for all of them.
pub const VERBS: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete", "renew", "release", "approve",
];

/// What rules may name besides the kinds the object API serves: the server's own collections
/// ([`RULE_COLLECTIONS`]: the audit chain, API tokens, join tokens) and `Claim/log`.
pub const EXTRA_RULE_KINDS: &[&str] = &{
    let mut out = [""; RULE_COLLECTIONS.len() + 1];
    let mut i = 0;
    while i < RULE_COLLECTIONS.len() {
        out[i] = RULE_COLLECTIONS[i].rule_kind();
        i += 1;
    }
    out[i] = "Claim/log";
    out
};

/// The group every administrator token is in; bound to `cluster-admin` at cluster scope.
pub const ADMINS_GROUP: &str = "system:masters";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `renew`, `release`,
    /// `approve`, or `*`.
    pub verbs: Vec<String>,
    /// Kind names (`Claim`), plurals (`claims`), subresources (`Claim/log`, `Node/status`),
    /// `AuditRecord`, `Token`, `JoinToken`, or `*`.
    pub kinds: Vec<String>,
    /// Object names the rule is limited to; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

impl PolicyRule {
    pub fn new(verbs: &[&str], kinds: &[&str]) -> Self {
        PolicyRule {
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            names: Vec::new(),
        }
    }

    /// The rule with its kinds in canonical form (unknown ones dropped), as
    /// [`PolicyRule::allows`] wants it.
    pub fn canonicalised(&self) -> PolicyRule {
        PolicyRule {
            verbs: self.verbs.clone(),
            kinds: self
                .kinds
                .iter()
                .filter_map(|k| {
                    if k == "*" {
                        Some(k.clone())
                    } else {
                        canonical_rule_kind(k)
                    }
                })
                .collect(),
            names: self.names.clone(),
        }
    }

    /// Whether the (canonicalised) rule grants `verb` on `kind` (canonical form, e.g.
    /// `Claim` or `Claim/log`) for the object `name` (None for collections: lists, watches
    /// and creates are allowed only by rules without names).
    pub fn allows(&self, verb: &str, kind: &str, name: Option<&str>) -> bool {
        let verb_ok = self.verbs.iter().any(|v| v == "*" || v == verb);
        let kind_ok = self.kinds.iter().any(|k| k == "*" || k == kind);
        let name_ok =
            self.names.is_empty() || name.is_some_and(|n| self.names.iter().any(|m| m == n));
        verb_ok && kind_ok && name_ok
    }
}

/// A rule's kind in canonical form (`Claim`, `Claim/log`, `Node/status`, `AuditRecord`),
/// accepting kind names, plurals and singulars in any case; `None` for an unknown kind.
pub fn canonical_rule_kind(name: &str) -> Option<String> {
    let (base, sub) = match name.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    };
    let base = if let Some(info) = super::kind_by_any_name(base) {
        info.kind.to_string()
    } else {
        let lower = base.to_ascii_lowercase();
        let known = RULE_COLLECTIONS
            .iter()
            .find(|r| lower == r.rule_kind().to_ascii_lowercase() || lower == r.plural())?;
        known.rule_kind().to_string()
    };
    match sub {
        None => Some(base),
        Some("status") if super::kind_by_any_name(&base).is_some() => {
            Some(format!("{base}/status"))
        }
        Some("log") if base == "Claim" => Some("Claim/log".into()),
        Some(_) => None,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub rules: Vec<PolicyRule>,
}

impl Kind for RoleSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Role",
        plural: "roles",
        singular: "role",
        short_names: &["ro"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        if object.spec.rules.is_empty() {
            errors.add("spec.rules", "a role needs at least one rule");
        }
        for (i, rule) in object.spec.rules.iter().enumerate() {
            if rule.verbs.is_empty() {
                errors.add(format!("spec.rules[{i}].verbs"), "name at least one verb");
            }
            for (j, verb) in rule.verbs.iter().enumerate() {
                if verb != "*" && !VERBS.contains(&verb.as_str()) {
                    errors.add(
                        format!("spec.rules[{i}].verbs[{j}]"),
                        format!("unknown verb {verb:?}; known: *, {}", VERBS.join(", ")),
                    );
                }
            }
            if rule.kinds.is_empty() {
                errors.add(format!("spec.rules[{i}].kinds"), "name at least one kind");
            }
            for (j, kind) in rule.kinds.iter().enumerate() {
                if kind != "*" && canonical_rule_kind(kind).is_none() {
                    errors.add(
                        format!("spec.rules[{i}].kinds[{j}]"),
                        format!(
                            "unknown kind {kind:?}: name a kind the API serves (e.g. Claim), \
                             a subresource (Claim/log, Node/status), AuditRecord, Token or JoinToken"
                        ),
                    );
                }
            }
            for (j, name) in rule.names.iter().enumerate() {
                if name.is_empty() {
                    errors.add(format!("spec.rules[{i}].names[{j}]"), "must not be empty");
                }
            }
        }
    }
}

/// Where a binding applies: the whole cluster (neither field), a tenant and all its projects,
/// or one project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The uid of the Project (or, for a tenant binding, the Tenant) the binding was made
    /// for; the server fills it in. Names are reused, uids never: a binding left behind by a
    /// deleted project grants nothing in a new project of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl BindingScope {
    /// A binding at one project.
    pub fn project(name: &str) -> Self {
        BindingScope {
            project: Some(name.to_string()),
            ..BindingScope::default()
        }
    }

    /// A binding at a tenant and all its projects.
    pub fn tenant(name: &str) -> Self {
        BindingScope {
            tenant: Some(name.to_string()),
            ..BindingScope::default()
        }
    }

    /// The kind and name of the object the scope is (`Project` before `Tenant`, as the
    /// authorizer reads it); `None` at the cluster.
    pub fn object(&self) -> Option<(&'static str, &str)> {
        match (&self.project, &self.tenant) {
            (Some(p), _) => Some(("Project", p)),
            (None, Some(t)) => Some(("Tenant", t)),
            (None, None) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    User,
    Group,
    /// An API token, by the id `infraos token list` shows.
    Token,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBindingSpec {
    /// The Role granted (a built-in one or a Role object).
    pub role: String,
    #[serde(default)]
    pub scope: BindingScope,
    pub subjects: Vec<Subject>,
}

impl Kind for RoleBindingSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        short_names: &["rb"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let spec = &object.spec;
        if let Some(p) = names::object_name_problem(&spec.role) {
            errors.add("spec.role", p);
        }
        if let Some(t) = &spec.scope.tenant
            && let Some(p) = names::object_name_problem(t)
        {
            errors.add("spec.scope.tenant", p);
        }
        if let Some(pr) = &spec.scope.project
            && let Some(p) = names::project_name_problem(pr)
        {
            errors.add("spec.scope.project", p);
        }
        if spec.scope.uid.is_some() && spec.scope.object().is_none() {
            errors.add(
                "spec.scope.uid",
                "a cluster-wide binding has no scope object: leave the uid out",
            );
        }
        if spec.subjects.is_empty() {
            errors.add("spec.subjects", "bind at least one subject");
        }
        for (i, s) in spec.subjects.iter().enumerate() {
            if s.name.is_empty() {
                errors.add(format!("spec.subjects[{i}].name"), "must not be empty");
            }
        }
    }
}

/// A built-in role: always present, not editable.
pub struct BuiltinRole {
    pub name: &'static str,
    pub description: &'static str,
    pub rules: fn() -> Vec<PolicyRule>,
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// The roles every cluster has. Scope comes from the binding: `tenant-admin` bound at a
/// tenant manages that tenant's projects; `project-member` bound at a project works there.
pub const BUILTIN_ROLES: &[BuiltinRole] = &[
    BuiltinRole {
        name: "cluster-admin",
        description: "everything, everywhere",
        rules: || vec![PolicyRule::new(&["*"], &["*"])],
    },
    BuiltinRole {
        name: "tenant-admin",
        description: "a tenant's projects, their claims, quotas and role bindings",
        rules: || {
            vec![
                PolicyRule::new(READ, &["Tenant"]),
                PolicyRule::new(WRITE, &["Project", "RoleBinding", "Quota"]),
                PolicyRule::new(&["*"], &["Claim", "Claim/log"]),
                PolicyRule::new(READ, &["Allocation", "Event"]),
            ]
        },
    },
    BuiltinRole {
        name: "project-admin",
        description: "a project's claims and who may use the project",
        rules: || {
            vec![
                PolicyRule::new(READ, &["Project", "Quota"]),
                PolicyRule::new(WRITE, &["RoleBinding"]),
                PolicyRule::new(&["*"], &["Claim", "Claim/log"]),
                PolicyRule::new(READ, &["Allocation", "Event"]),
            ]
        },
    },
    BuiltinRole {
        name: "project-member",
        description: "claims and their workloads in a project",
        rules: || {
            vec![
                PolicyRule::new(READ, &["Project", "Quota"]),
                PolicyRule::new(
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete", "renew",
                        "release",
                    ],
                    &["Claim", "Claim/log"],
                ),
                PolicyRule::new(READ, &["Allocation", "Event"]),
            ]
        },
    },
    BuiltinRole {
        name: "viewer",
        description: "read everything but the audit chain, tokens and workload logs",
        rules: || {
            let kinds: Vec<&str> = super::kinds().iter().map(|k| k.kind).collect();
            vec![PolicyRule::new(READ, &kinds)]
        },
    },
    BuiltinRole {
        name: "auditor",
        description: "read the audit chain",
        rules: || vec![PolicyRule::new(&["get", "list"], &["AuditRecord"])],
    },
];

pub fn builtin_role(name: &str) -> Option<&'static BuiltinRole> {
    BUILTIN_ROLES.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_kinds_are_canonicalised() {
        assert_eq!(canonical_rule_kind("claims").as_deref(), Some("Claim"));
        assert_eq!(
            canonical_rule_kind("Claim/log").as_deref(),
            Some("Claim/log")
        );
        assert_eq!(
            canonical_rule_kind("nodes/status").as_deref(),
            Some("Node/status")
        );
        assert_eq!(
            canonical_rule_kind("auditrecords").as_deref(),
            Some("AuditRecord")
        );
        assert_eq!(canonical_rule_kind("Gadget"), None);
        assert_eq!(canonical_rule_kind("Node/log"), None);
    }

    #[test]
    fn rules_match_verbs_kinds_and_names() {
        let mut rule = PolicyRule::new(&["get"], &["claims"]).canonicalised();
        assert!(rule.allows("get", "Claim", Some("a")));
        assert!(!rule.allows("delete", "Claim", Some("a")));
        assert!(!rule.allows("get", "Claim/log", Some("a")));
        rule.names = vec!["a".into()];
        assert!(rule.allows("get", "Claim", Some("a")));
        assert!(!rule.allows("get", "Claim", Some("b")));
        assert!(!rule.allows("get", "Claim", None));
        assert!(PolicyRule::new(&["*"], &["*"]).allows("approve", "AuditRecord", None));
    }

    #[test]
    fn a_role_naming_an_unknown_kind_or_verb_is_refused() {
        let mut role = Object::new(
            "r",
            None,
            RoleSpec {
                description: None,
                rules: vec![PolicyRule::new(&["get", "fly"], &["Claim", "Gadget"])],
            },
        );
        let err = crate::envelope::check(&role).unwrap_err().to_string();
        assert!(err.contains("spec.rules[0].verbs[1]"), "{err}");
        assert!(err.contains("spec.rules[0].kinds[1]"), "{err}");
        role.spec.rules = vec![PolicyRule::new(&["get"], &["Claim"])];
        crate::envelope::check(&role).unwrap();
    }

    #[test]
    fn builtin_roles_name_only_known_kinds() {
        for role in BUILTIN_ROLES {
            for rule in (role.rules)() {
                for k in &rule.kinds {
                    assert!(k == "*" || canonical_rule_kind(k).is_some(), "{k}");
                }
            }
        }
    }
}
