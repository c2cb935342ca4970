//! Tenant and Project: who owns what. A namespace is a project; every project belongs to a
//! tenant.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EmptyStatus;
use crate::envelope::{Kind, KindInfo, Object};
use crate::labels::LabelSelector;
use crate::names;
use crate::validation::Errors;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A compliance domain: the tenant's claims land only on resources whose labels (or
    /// their node's) match, e.g. `compliance=pci`. Claims cannot widen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<LabelSelector>,
}

/// A node or resource labelled `infraos.io/tenant=T` is an isolation domain: only tenant T's
/// claims land on it.
pub const TENANT_LABEL: &str = "infraos.io/tenant";

impl Kind for TenantSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Tenant",
        plural: "tenants",
        singular: "tenant",
        short_names: &["tn"],
        namespaced: false,
        user_writable: true,
    };
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    /// The owning tenant; cannot change after creation.
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Kind for ProjectSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Project",
        plural: "projects",
        singular: "project",
        short_names: &["proj", "ns", "namespace", "namespaces"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        if let Some(p) = names::object_name_problem(&object.spec.tenant) {
            errors.add("spec.tenant", p);
        }
    }
}
