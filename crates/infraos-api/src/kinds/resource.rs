//! Resource: one allocatable entity or pool of a class. Node resources are published by agents
//! (or an operator); pools without a node (IP ranges, license seats) are declared by operators.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resource_class::{ClassKind, ResourceClassSpec};
use crate::envelope::{Kind, KindInfo, Object};
use crate::item_selector::{AttributeValue, Item, check_attributes};
use crate::meta::Condition;
use crate::names;
use crate::quantity::Quantity;
use crate::validation::{Errors, ValidationErrors};

/// The most items a resource may hold, CIDR expansion included (a /16 of IPv4).
pub const MAX_ITEMS: usize = 65_536;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// The ResourceClass this resource is an instance of.
    pub class: String,
    /// The node it lives on; absent for pools usable from anywhere (subject to topology).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For counted classes: capacity per dimension.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// For items classes: the items, listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
    /// For items classes: items generated from an address range, one per address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Addresses of `cidr` that are not handed out (gateways, reserved hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Attributes every item inherits unless it sets its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Overrides the class's price per unit and hour, by dimension (`count` for items): a
    /// spot machine, a cheaper region.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unit_price: BTreeMap<String, f64>,
    /// Power the resource draws when fully used, for the `energy` score plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ResourceSpec {
    /// The items of this resource: the listed ones, or one per address of `cidr` (network and
    /// broadcast addresses of IPv4 ranges and `exclude`d addresses left out), each with the
    /// resource's common attributes underneath its own.
    pub fn expand_items(&self) -> Result<Vec<Item>, ValidationErrors> {
        let mut items = if let Some(cidr) = &self.cidr {
            expand_cidr(cidr, &self.exclude)?
        } else {
            self.items.clone()
        };
        if !self.attributes.is_empty() {
            for item in &mut items {
                for (k, v) in &self.attributes {
                    item.attributes
                        .entry(k.clone())
                        .or_insert_with(|| v.clone());
                }
            }
        }
        Ok(items)
    }

    /// Checks the resource against its class: dimensions exist, items follow the schema.
    pub fn validate_against_class(
        &self,
        class: &ResourceClassSpec,
    ) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        crate::kinds::validate_prices(
            "spec.unitPrice",
            &self.unit_price,
            |d| match class.kind {
                ClassKind::Counted => class.has_dimension(d),
                ClassKind::Items => d == crate::kinds::ITEMS_DIMENSION,
            },
            &mut errors,
        );
        match class.kind {
            ClassKind::Counted => {
                if self.capacity.is_empty() {
                    errors.add(
                        "spec.capacity",
                        format!("class {:?} is counted: capacity is required", self.class),
                    );
                }
                for dim in self.capacity.keys() {
                    if !class.has_dimension(dim) {
                        let known: Vec<&str> =
                            class.dimensions.iter().map(|d| d.name.as_str()).collect();
                        errors.add(
                            format!("spec.capacity.{dim}"),
                            format!(
                                "class {:?} has no dimension {dim:?} (it has {})",
                                self.class,
                                known.join(", ")
                            ),
                        );
                    }
                }
                if !self.items.is_empty() || self.cidr.is_some() {
                    errors.add(
                        "spec.items",
                        format!("class {:?} is counted: it has no items", self.class),
                    );
                }
            }
            ClassKind::Items => {
                if !self.capacity.is_empty() {
                    errors.add(
                        "spec.capacity",
                        format!(
                            "class {:?} is counted by items: use items or cidr",
                            self.class
                        ),
                    );
                }
                if !class.attributes.is_empty() {
                    match self.expand_items() {
                        Ok(items) => {
                            for (i, item) in items.iter().enumerate() {
                                for (name, ty) in &class.attributes {
                                    match item.attributes.get(name) {
                                        Some(v) if v.type_of() != *ty => errors.add(
                                            format!("spec.items[{i}].attributes.{name}"),
                                            format!("must be {ty}, is {}", v.type_of()),
                                        ),
                                        Some(_) => {}
                                        None => errors.add(
                                            format!("spec.items[{i}].attributes.{name}"),
                                            format!("required by class {:?}", self.class),
                                        ),
                                    }
                                }
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        errors.into_result()
    }
}

fn expand_cidr(cidr: &str, exclude: &[String]) -> Result<Vec<Item>, ValidationErrors> {
    let net: ipnet::IpNet = cidr.parse().map_err(|_| {
        ValidationErrors::one(
            "spec.cidr",
            format!("{cidr:?} is not a CIDR range like 10.0.0.0/24"),
        )
    })?;
    let excluded: Vec<IpAddr> = exclude
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>().map_err(|_| {
                ValidationErrors::one(
                    format!("spec.exclude[{i}]"),
                    format!("{a:?} is not an IP address"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    if host_bits > 16 {
        return Err(ValidationErrors::one(
            "spec.cidr",
            format!("{cidr} has more than {MAX_ITEMS} addresses; split it into several resources"),
        ));
    }
    let hosts: Box<dyn Iterator<Item = IpAddr>> = match net {
        // `hosts()` skips network and broadcast addresses where the prefix leaves room for them.
        ipnet::IpNet::V4(v4) => Box::new(v4.hosts().map(IpAddr::V4)),
        ipnet::IpNet::V6(v6) => Box::new(v6.hosts().map(IpAddr::V6)),
    };
    Ok(hosts
        .filter(|a| !excluded.contains(a))
        .map(|addr| Item {
            name: addr.to_string(),
            attributes: [(
                "address".to_string(),
                AttributeValue::String(addr.to_string()),
            )]
            .into_iter()
            .collect(),
        })
        .collect())
}

impl Kind for ResourceSpec {
    type Status = ResourceStatus;
    const INFO: &'static KindInfo = &KindInfo {
        kind: "Resource",
        plural: "resources",
        singular: "resource",
        short_names: &["res"],
        namespaced: false,
        user_writable: true,
    };

    fn validate(object: &Object<Self>, errors: &mut Errors) {
        let spec = &object.spec;
        if let Some(p) = names::object_name_problem(&spec.class) {
            errors.add("spec.class", p);
        }
        if let Some(node) = &spec.node
            && let Some(p) = names::object_name_problem(node)
        {
            errors.add("spec.node", p);
        }
        for (dim, q) in &spec.capacity {
            if q.is_negative() {
                errors.add(format!("spec.capacity.{dim}"), "must not be negative");
            }
        }
        for (dim, price) in &spec.unit_price {
            if !price.is_finite() || *price < 0.0 {
                errors.add(
                    format!("spec.unitPrice.{dim}"),
                    "must be a finite number >= 0",
                );
            }
        }
        if spec.watts.is_some_and(|w| !w.is_finite() || w < 0.0) {
            errors.add("spec.watts", "must be a finite number >= 0");
        }
        if !spec.items.is_empty() && spec.cidr.is_some() {
            errors.add("spec.cidr", "give either items or cidr, not both");
        }
        if spec.cidr.is_none() && !spec.exclude.is_empty() {
            errors.add("spec.exclude", "only applies to cidr");
        }
        if spec.items.len() > MAX_ITEMS {
            errors.add("spec.items", format!("at most {MAX_ITEMS} items"));
        }
        // Selectors are costed with these bounds (item_selector::cost).
        let common = spec.attributes.len() + usize::from(spec.cidr.is_some());
        check_attributes(
            || "spec.attributes".into(),
            &spec.attributes,
            common - spec.attributes.len(),
            errors,
        );
        let mut seen = std::collections::HashSet::new();
        for (i, item) in spec.items.iter().enumerate() {
            let inherited = spec
                .attributes
                .keys()
                .filter(|k| !item.attributes.contains_key(*k))
                .count();
            check_attributes(
                || format!("spec.items[{i}].attributes"),
                &item.attributes,
                inherited,
                errors,
            );
            if item.name.is_empty() || item.name.len() > 253 {
                errors.add(
                    format!("spec.items[{i}].name"),
                    "must be 1 to 253 characters",
                );
            }
            if !seen.insert(item.name.as_str()) {
                errors.add(
                    format!("spec.items[{i}].name"),
                    format!("duplicate item {:?}", item.name),
                );
            }
        }
        if spec.cidr.is_some()
            && let Err(e) = spec.expand_items()
        {
            for fe in e.0 {
                errors.add(fe.field, fe.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_expands_to_host_addresses() {
        let spec = ResourceSpec {
            class: "ipv4".into(),
            cidr: Some("10.0.0.0/29".into()),
            exclude: vec!["10.0.0.1".into()],
            ..Default::default()
        };
        let items = spec.expand_items().unwrap();
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            items[0].attributes["address"],
            AttributeValue::String("10.0.0.2".into())
        );
    }

    #[test]
    fn cidr_too_large_is_rejected() {
        let spec = ResourceSpec {
            cidr: Some("10.0.0.0/8".into()),
            ..Default::default()
        };
        assert_eq!(
            spec.expand_items().unwrap_err().first_field(),
            Some("spec.cidr")
        );
    }
}
