//! Allocations: written by the control plane only, and never deleted through the API (they end
//! when their claim is released or deleted).

use super::Strategy;
use crate::error::ApiError;

#[derive(Debug)]
pub struct Allocation;

impl Strategy for Allocation {
    fn check_delete(&self) -> Result<(), ApiError> {
        Err(ApiError::method_not_allowed(
            "allocations end when their claim is released or deleted; use `infraos release` or delete the claim",
        ))
    }
}
