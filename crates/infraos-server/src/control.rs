//! How the edge answers what the control plane reports: [`ControlError`]s become API
//! statuses, and refusals are audited with the answer's code, reason and message.

use infraos_control::ControlError;
use infraos_control::audit::Refused;

use crate::error::ApiError;

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Store(e) => ApiError::from(e),
            ControlError::NotFound { kind, name } => ApiError::not_found(&kind, &name),
            ControlError::Stale { kind, name } => ApiError::stale(&kind, &name),
            ControlError::Conflict {
                kind,
                name,
                message,
            } => ApiError::conflict(&kind, &name, message),
            ControlError::Gone(message) => ApiError::gone(message),
            e @ (ControlError::Internal(_)
            | ControlError::Profile(_)
            | ControlError::Signing(_)) => ApiError::internal(e.to_string()),
        }
    }
}

impl Refused for ApiError {
    fn code(&self) -> u16 {
        self.code.as_u16()
    }
    fn reason(&self) -> &str {
        self.reason
    }
    fn message(&self) -> &str {
        &self.message
    }
}
