//! Committed holdings: for each resource, the allocations that hold it and what each holds,
//! as the plan applier last committed them, under `/infraos/holdings/<resource>`.
//!
//! The scheduler's snapshot is a cache fed by watches; it can lag or, through a bug, lose an
//! allocation (issue 17: a late deletion of a requeued claim's old allocation removed the new
//! one, and a batch planned in that gap handed the same GPUs out twice). A holdings record is
//! not a cache: it is written in the same transaction as every allocation that starts holding
//! the resource, so the plan applier can check each placement against what is committed
//! rather than against what it believes (see `controllers/ledger.rs` and
//! `docs/scheduler.md#the-holdings-ledger`).
//!
//! A record is a set keyed by allocation key (`namespace/name`), each holder with the uid of
//! the allocation it stands for:
//! - a new allocation of a claim replaces the holder under its key: the transaction that
//!   writes it also requires the allocation key to be absent, which proves the previous one
//!   ended;
//! - an ended allocation is pruned by uid: a late end of an older allocation under the same
//!   key cannot remove the newer holder.
//!
//! Both operations are idempotent, and what is used is always the sum over the holders, so
//! a record can only over-count (an ended holder not pruned yet), never under-count.

use std::collections::BTreeMap;

use infraos_api::Quantity;
use infraos_api::kinds::AllocatedResource;
use serde::{Deserialize, Serialize};

/// Where the records live (outside `/registry/`: no API kind reaches them).
pub const PREFIX: &str = "/infraos/holdings/";

/// The record key of a resource.
pub fn key(resource: &str) -> String {
    format!("{PREFIX}{resource}")
}

/// The resource a record key is for.
pub fn resource_of(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)
}

/// What holds one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holdings {
    #[serde(default)]
    pub holders: BTreeMap<String, Holder>,
}

/// One allocation's share of a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The allocation's uid: only its own end prunes it.
    pub uid: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub amount: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
}

impl Holder {
    /// An allocation's share of `resource`: its parts there, summed.
    pub fn of(uid: &str, resource: &str, parts: &[AllocatedResource]) -> Option<Holder> {
        let mut holder = Holder {
            uid: uid.to_string(),
            ..Holder::default()
        };
        let mut any = false;
        for part in parts.iter().filter(|p| p.resource == resource) {
            any = true;
            for (dim, q) in &part.amount {
                let total = holder.amount.entry(dim.clone()).or_insert(Quantity::ZERO);
                *total = total
                    .checked_add(*q)
                    .unwrap_or(Quantity::from_nanos(i128::MAX));
            }
            holder.items.extend(part.items.iter().cloned());
        }
        any.then_some(holder)
    }
}

/// What a resource offers, as the check needs it.
pub struct Offer<'a> {
    pub resource: &'a str,
    /// Capacity per dimension (counted classes); a dimension not listed has none.
    pub capacity: &'a BTreeMap<String, Quantity>,
    /// Whether an item of this name exists on the resource.
    pub has_item: &'a dyn Fn(&str) -> bool,
}

/// Why a placement does not fit what is committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HoldingsError {
    #[error(
        "resource {resource:?}: {dimension} would be {total} of {capacity} (committed holders: {holders})"
    )]
    OverCapacity {
        resource: String,
        dimension: String,
        total: Quantity,
        capacity: Quantity,
        holders: usize,
    },
    #[error("resource {resource:?}: item {item:?} is held by {holder} (uid {uid})")]
    ItemHeld {
        resource: String,
        item: String,
        holder: String,
        uid: String,
    },
    #[error("resource {resource:?} has no item {item:?}")]
    NoSuchItem { resource: String, item: String },
    #[error("resource {resource:?}: item {item:?} is asked for twice")]
    ItemTwice { resource: String, item: String },
}

impl Holdings {
    /// What the holders use of a dimension, in nano-units.
    pub fn used(&self, dimension: &str) -> i128 {
        self.holders
            .values()
            .filter_map(|h| h.amount.get(dimension))
            .map(Quantity::nanos)
            .fold(0i128, i128::saturating_add)
    }

    /// The holder of an item, with its uid.
    pub fn item_holder(&self, item: &str) -> Option<(&str, &str)> {
        self.holders
            .iter()
            .find(|(_, h)| h.items.iter().any(|i| i == item))
            .map(|(k, h)| (k.as_str(), h.uid.as_str()))
    }

    /// Whether `holder` (for allocation `key`) fits beside every holder but the one under
    /// `key` (which it replaces): each dimension within capacity, each item existing, asked
    /// for once, and held by nobody else.
    pub fn check(
        &self,
        key: &str,
        holder: &Holder,
        offer: &Offer<'_>,
    ) -> Result<(), HoldingsError> {
        for (dim, want) in &holder.amount {
            let others: i128 = self
                .holders
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .filter_map(|(_, h)| h.amount.get(dim))
                .map(Quantity::nanos)
                .fold(0i128, i128::saturating_add);
            let total = others.saturating_add(want.nanos());
            let capacity = offer.capacity.get(dim).copied().unwrap_or(Quantity::ZERO);
            if total > capacity.nanos() {
                return Err(HoldingsError::OverCapacity {
                    resource: offer.resource.to_string(),
                    dimension: dim.clone(),
                    total: Quantity::from_nanos(total),
                    capacity,
                    holders: self.holders.len(),
                });
            }
        }
        for (i, item) in holder.items.iter().enumerate() {
            if holder.items[..i].contains(item) {
                return Err(HoldingsError::ItemTwice {
                    resource: offer.resource.to_string(),
                    item: item.clone(),
                });
            }
            if !(offer.has_item)(item) {
                return Err(HoldingsError::NoSuchItem {
                    resource: offer.resource.to_string(),
                    item: item.clone(),
                });
            }
            let taken = self
                .holders
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .find(|(_, h)| h.items.iter().any(|x| x == item));
            if let Some((other, h)) = taken {
                return Err(HoldingsError::ItemHeld {
                    resource: offer.resource.to_string(),
                    item: item.clone(),
                    holder: other.clone(),
                    uid: h.uid.clone(),
                });
            }
        }
        Ok(())
    }

    /// Records `holder` under `key`, replacing what an earlier allocation of the key held.
    pub fn insert(&mut self, key: &str, holder: Holder) {
        self.holders.insert(key.to_string(), holder);
    }

    /// Removes the holders whose allocation ended (by uid); true when any was removed.
    pub fn prune(&mut self, ended: impl Fn(&str) -> bool) -> bool {
        let before = self.holders.len();
        self.holders.retain(|_, h| !ended(&h.uid));
        self.holders.len() != before
    }

    /// Whether any holder is the allocation `uid`.
    pub fn lists(&self, uid: &str) -> bool {
        self.holders.values().any(|h| h.uid == uid)
    }

    pub fn encode(&self) -> Vec<u8> {
        // A map of strings and quantities always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Holdings, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(resource: &str, cpu: i64, items: &[&str]) -> AllocatedResource {
        AllocatedResource {
            request: "main".into(),
            resource: resource.into(),
            class: "c".into(),
            amount: if cpu > 0 {
                [("cpu".to_string(), Quantity::from_units(cpu))].into()
            } else {
                BTreeMap::new()
            },
            items: items.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn offer<'a>(
        capacity: &'a BTreeMap<String, Quantity>,
        has: &'a dyn Fn(&str) -> bool,
    ) -> Offer<'a> {
        Offer {
            resource: "n1",
            capacity,
            has_item: has,
        }
    }

    #[test]
    fn a_placement_is_checked_against_every_other_holder() {
        let capacity: BTreeMap<String, Quantity> = [("cpu".into(), Quantity::from_units(8))].into();
        let has = |i: &str| i.starts_with('g');
        let mut h = Holdings::default();
        let a = Holder::of("u-a", "n1", &[part("n1", 5, &["g0"])]).unwrap();
        h.check("p/a", &a, &offer(&capacity, &has)).unwrap();
        h.insert("p/a", a);
        let b = Holder::of("u-b", "n1", &[part("n1", 4, &[])]).unwrap();
        assert!(matches!(
            h.check("p/b", &b, &offer(&capacity, &has)),
            Err(HoldingsError::OverCapacity { .. })
        ));
        let c = Holder::of("u-c", "n1", &[part("n1", 1, &["g0"])]).unwrap();
        assert!(matches!(
            h.check("p/c", &c, &offer(&capacity, &has)),
            Err(HoldingsError::ItemHeld { holder, .. }) if holder == "p/a"
        ));
        let d = Holder::of("u-d", "n1", &[part("n1", 0, &["x9"])]).unwrap();
        assert!(matches!(
            h.check("p/d", &d, &offer(&capacity, &has)),
            Err(HoldingsError::NoSuchItem { .. })
        ));
        let twice = Holder::of(
            "u-e",
            "n1",
            &[part("n1", 0, &["g1"]), part("n1", 0, &["g1"])],
        )
        .unwrap();
        assert!(matches!(
            h.check("p/e", &twice, &offer(&capacity, &has)),
            Err(HoldingsError::ItemTwice { .. })
        ));
        assert_eq!(h.used("cpu"), Quantity::from_units(5).nanos());
    }

    /// Issue 17: a claim placed again replaces its old holder (the commit proves the old
    /// allocation gone); the old allocation's late end, pruned by uid, leaves the new one.
    #[test]
    fn a_late_end_of_an_old_allocation_does_not_prune_the_new_one() {
        let capacity: BTreeMap<String, Quantity> = [("cpu".into(), Quantity::from_units(4))].into();
        let has = |_: &str| true;
        let mut h = Holdings::default();
        h.insert(
            "p/c",
            Holder::of("old", "n1", &[part("n1", 4, &["g6"])]).unwrap(),
        );
        let new = Holder::of("new", "n1", &[part("n1", 4, &["g6"])]).unwrap();
        h.check("p/c", &new, &offer(&capacity, &has))
            .expect("a claim's new allocation replaces its old one");
        h.insert("p/c", new);
        assert!(!h.prune(|uid| uid == "old"), "the old uid is gone already");
        assert_eq!(h.item_holder("g6"), Some(("p/c", "new")));
        let other = Holder::of("x", "n1", &[part("n1", 1, &["g6"])]).unwrap();
        assert!(h.check("p/other", &other, &offer(&capacity, &has)).is_err());
        assert!(h.prune(|uid| uid == "new"));
        assert!(h.holders.is_empty());
    }

    #[test]
    fn records_round_trip_and_refuse_unknown_fields() {
        let mut h = Holdings::default();
        h.insert(
            "p/c",
            Holder::of("u", "n1", &[part("n1", 2, &["g1"])]).unwrap(),
        );
        assert_eq!(Holdings::decode(&h.encode()).unwrap(), h);
        assert!(Holdings::decode(br#"{"holders":{},"extra":1}"#).is_err());
        assert_eq!(resource_of(&key("n1-gpu")), Some("n1-gpu"));
    }
}
