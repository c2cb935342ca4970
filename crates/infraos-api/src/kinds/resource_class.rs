//! ResourceClass: a resource type declared as data. A new type (LicenseToken, IPPool,
//! GpuSlice…) is a manifest, not code.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EmptyStatus;
use crate::envelope::{Kind, KindInfo, Object};
use crate::item_selector::AttributeType;
use crate::labels;
use crate::validation::Errors;

/// How a class is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClassKind {
    /// Named dimensions with capacities: cpu, memory, license seats, Mbps.
    #[default]
    Counted,
    /// Individually named things with attributes: GPUs, IP addresses, ports.
    Items,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceClassSpec {
    pub kind: ClassKind,
    /// For `counted` classes: the dimensions a resource of this class has capacity in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<Dimension>,
    /// For `items` classes: the attribute schema every item follows; selectors are checked
    /// against it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Price per unit and hour, by dimension (`count` for one item of an items class), for
    /// the `cost` score plugin; a Resource may override it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unit_price: BTreeMap<String, f64>,
}

/// Checks unit prices: finite, not negative, and for dimensions the class has.
pub fn validate_prices(
    field: &str,
    prices: &BTreeMap<String, f64>,
    known: impl Fn(&str) -> bool,
    errors: &mut Errors,
) {
    for (dim, price) in prices {
        if !price.is_finite() || *price < 0.0 {
            errors.add(format!("{field}.{dim}"), "must be a finite number >= 0");
        }
        if !known(dim) {
            errors.add(
                format!("{field}.{dim}"),
                "names no dimension of the class (`count` for items)",
            );
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dimension {
    pub name: String,
    /// A display hint: `cores`, `bytes`, `seats`, `Mbps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl ResourceClassSpec {
    pub fn has_dimension(&self, name: &str) -> bool {
        self.dimensions.iter().any(|d| d.name == name)
    }
}

pub(crate) const MAX_DIMENSIONS: usize = 32;

impl Kind for ResourceClassSpec {
    type Status = EmptyStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "ResourceClass",
        plural: "resourceclasses",
        singular: "resourceclass",
        short_names: &["rc", "class", "classes"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let spec = &object.spec;
        match spec.kind {
            ClassKind::Counted => {
                if spec.dimensions.is_empty() {
                    errors.add(
                        "spec.dimensions",
                        "a counted class needs at least one dimension",
                    );
                }
                if !spec.attributes.is_empty() {
                    errors.add("spec.attributes", "only items classes have attributes");
                }
            }
            ClassKind::Items => {
                if !spec.dimensions.is_empty() {
                    errors.add(
                        "spec.dimensions",
                        "items classes are counted by item, not by dimension",
                    );
                }
            }
        }
        if spec.dimensions.len() > MAX_DIMENSIONS {
            errors.add(
                "spec.dimensions",
                format!("at most {MAX_DIMENSIONS} dimensions"),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in spec.dimensions.iter().enumerate() {
            if labels::validate_key(&d.name).is_err() || d.name.contains('/') {
                errors.add(
                    format!("spec.dimensions[{i}].name"),
                    format!("{:?} must be alphanumerics, '-', '_' or '.'", d.name),
                );
            }
            if !seen.insert(&d.name) {
                errors.add(
                    format!("spec.dimensions[{i}].name"),
                    format!("duplicate dimension {:?}", d.name),
                );
            }
        }
        validate_prices(
            "spec.unitPrice",
            &spec.unit_price,
            |d| match spec.kind {
                ClassKind::Counted => spec.has_dimension(d),
                ClassKind::Items => d == crate::kinds::ITEMS_DIMENSION,
            },
            errors,
        );
        for name in spec.attributes.keys() {
            if labels::validate_key(name).is_err() || name.contains(['/', '.', '-']) {
                errors.add(
                    format!("spec.attributes.{name}"),
                    "attribute names must be identifiers (letters, digits, '_') so CEL can address them",
                );
            }
        }
    }
}
