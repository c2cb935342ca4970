//! Validation errors that name the field at fault, e.g.
//! `spec.requests[1].amount: quantity "4Gx" is not valid`.
//!
//! Fields and messages often quote what the request said (a label key, a name): each is cut
//! to [`ERROR_STRING_MAX`] bytes and at most [`MAX_FIELD_ERRORS`] are kept, so that an
//! invalid object of megabytes gives an error of a few kilobytes (issue 16).

use std::fmt;

use serde::Serialize;

use crate::text::{ERROR_STRING_MAX, bound_owned};

/// Most field errors one validation reports; the rest are counted in a last entry.
pub const MAX_FIELD_ERRORS: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the offending field, `spec.requests[1].amount`.
    pub field: String,
    pub message: String,
}

/// One or more field errors; never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationErrors(vec![FieldError::bounded(field.into(), message.into())])
    }

    pub fn first_field(&self) -> Option<&str> {
        self.0.first().map(|e| e.field.as_str())
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.field.is_empty() {
                f.write_str(&e.message)?;
            } else {
                write!(f, "{}: {}", e.field, e.message)?;
            }
        }
        Ok(())
    }
}

impl FieldError {
    /// A field error whose field and message are cut to [`ERROR_STRING_MAX`] bytes each.
    pub fn bounded(field: String, message: String) -> Self {
        FieldError {
            field: bound_owned(field, ERROR_STRING_MAX),
            message: bound_owned(message, ERROR_STRING_MAX),
        }
    }
}

/// Collects field errors while a validator walks an object: the first
/// [`MAX_FIELD_ERRORS`], bounded, and how many more there were.
#[derive(Debug, Default)]
pub struct Errors {
    kept: Vec<FieldError>,
    dropped: usize,
}

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        if self.kept.len() >= MAX_FIELD_ERRORS {
            self.dropped += 1;
            return;
        }
        self.kept
            .push(FieldError::bounded(field.into(), message.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub fn into_result(mut self) -> Result<(), ValidationErrors> {
        if self.kept.is_empty() {
            return Ok(());
        }
        if self.dropped > 0 {
            self.kept.push(FieldError {
                field: String::new(),
                message: format!("and {} more errors", self.dropped),
            });
        }
        Err(ValidationErrors(self.kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_fields_and_messages_are_cut_and_counted() {
        let mut errors = Errors::default();
        let key = "k".repeat(1_000_000);
        for i in 0..100 {
            errors.add(
                format!("metadata.labels.{key}{i}"),
                format!("{key:?} is bad"),
            );
        }
        let e = errors.into_result().unwrap_err();
        assert_eq!(e.0.len(), MAX_FIELD_ERRORS + 1);
        assert!(
            e.0.iter()
                .all(|f| f.field.len() < 300 && f.message.len() < 300)
        );
        assert_eq!(e.0[MAX_FIELD_ERRORS].message, "and 68 more errors");
        assert!(e.to_string().len() < 40 * 600, "{}", e.to_string().len());
        let one = ValidationErrors::one("metadata.name", key);
        assert!(one.0[0].message.ends_with("…(1000000 bytes)"));
    }
}
