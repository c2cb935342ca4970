//! The InfraOS object model (`infraos.io/v1`): kinds, quantities, label and item selectors,
//! durations, validation, the audit chain's hashing and the verification of server signatures.
//!
//! Pure by design: no I/O, no async runtime, no clock reads. Every other crate depends on it
//! and it depends on none of ours.
#![forbid(unsafe_code)]

pub mod agent_protocol;
pub mod audit;
pub mod duration;
pub mod envelope;
pub mod instruction;
pub mod item_selector;
pub mod kinds;
pub mod labels;
pub mod meta;
pub mod names;
pub mod object;
pub mod path;
pub mod quantity;
mod registry;
pub mod signature;
pub mod text;
pub mod time;
pub mod validation;

pub use duration::Duration;
pub use envelope::{API_VERSION, Kind, KindInfo, Object};
pub use item_selector::{AttributeType, AttributeValue, Item, ItemSelector};
pub use kinds::TypedObject;
pub use labels::{LabelSelector, Labels};
pub use meta::{Condition, ObjectMeta, ObjectRef, OwnerReference};
pub use quantity::Quantity;
pub use time::Time;
pub use validation::{FieldError, ValidationErrors};
