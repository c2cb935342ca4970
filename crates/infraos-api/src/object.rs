//! The object model's public face: the envelope ([`crate::envelope`]) and what the one
//! registry of kinds generates ([`crate::kinds`]: the list of kinds, lookups by name,
//! [`TypedObject`], schemas). Nothing in this crate imports through here, so the envelope and
//! the kinds do not import each other in a circle.

pub use crate::envelope::*;
pub use crate::kinds::{
    TypedObject, kind_by_any_name, kind_by_plural, kinds, object_schema, validate_value,
};
