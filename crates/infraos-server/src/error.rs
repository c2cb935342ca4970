//! Errors: [`ServerError`] for start-up and background failures, [`ApiError`] for requests,
//! rendered as Kubernetes-style `Status` bodies with a reason and the field at fault.
//!
//! An error quotes what the request said (a name, a field) only cut to
//! [`ERROR_STRING_MAX`] bytes, and its whole message to [`REASON_MAX`]: a refusal of a
//! megabyte name is a small answer and a small audit record, never a copy of the input.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infraos_api::ValidationErrors;
use infraos_api::text::{ERROR_STRING_MAX, REASON_MAX, bound_owned, bounded};
use infraos_store::StoreError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("certificates: {0}")]
    Cert(String),
    #[error("data dir {0} is not initialised: run `infraos server init --data-dir {0}` first")]
    NotInitialised(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Profile(#[from] infraos_scheduler::ProfileError),
    #[error("signing key: {0}")]
    Signing(#[from] crate::signing::SigningError),
}

impl ServerError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ServerError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusCause {
    pub field: String,
    pub message: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// A failed request, as a Kubernetes `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<StatusDetails>>,
    /// Seconds, for 429/503 responses.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: bound_owned(message.into(), REASON_MAX),
            details: None,
            retry_after: None,
        }
    }

    fn with_target(mut self, kind: &str, name: &str) -> Self {
        let details = self.details.get_or_insert_with(Box::default);
        details.kind = bounded(kind, ERROR_STRING_MAX).into_owned();
        details.name = bounded(name, ERROR_STRING_MAX).into_owned();
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }
    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{kind} {:?} not found", bounded(name, ERROR_STRING_MAX)),
        )
        .with_target(kind, name)
    }
    pub fn no_route(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn already_exists(kind: &str, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!(
                "{kind} {:?} already exists",
                bounded(name, ERROR_STRING_MAX)
            ),
        )
        .with_target(kind, name)
    }
    pub fn conflict(kind: &str, name: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message).with_target(kind, name)
    }
    pub fn stale(kind: &str, name: &str) -> Self {
        Self::conflict(
            kind,
            name,
            format!(
                "operation cannot be fulfilled on {kind} {:?}: the object has been modified; apply your changes to the latest version and try again",
                bounded(name, ERROR_STRING_MAX)
            ),
        )
    }
    pub fn invalid(kind: &str, name: &str, errors: &ValidationErrors) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{kind} {:?} is invalid: {errors}",
                bounded(name, ERROR_STRING_MAX)
            ),
        )
        .with_target(kind, name);
        if let Some(d) = e.details.as_mut() {
            // Field errors are bounded where they are made (`infraos_api::validation`); cut
            // again here for errors assembled by hand, and listed up to REASON_MAX bytes in
            // all, as the message is: the answer stays within a few kilobytes.
            let mut budget = REASON_MAX;
            for (i, fe) in errors.0.iter().enumerate() {
                let field = bounded(&fe.field, ERROR_STRING_MAX).into_owned();
                let message = bounded(&fe.message, ERROR_STRING_MAX).into_owned();
                let cost = field.len() + message.len();
                if cost > budget {
                    d.causes.push(StatusCause {
                        field: String::new(),
                        message: format!("and {} more errors", errors.0.len() - i),
                        reason: "FieldValueInvalid".into(),
                    });
                    break;
                }
                budget -= cost;
                d.causes.push(StatusCause {
                    field,
                    message,
                    reason: "FieldValueInvalid".into(),
                });
            }
        }
        e
    }
    pub fn invalid_field(kind: &str, name: &str, field: &str, message: impl Into<String>) -> Self {
        Self::invalid(kind, name, &ValidationErrors::one(field, message))
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            message,
        )
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        );
        e.retry_after = Some(1);
        e
    }
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn to_status_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            // `message` is public and may have been extended since it was made.
            "message": bounded(&self.message, REASON_MAX),
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            v["details"] = serde_json::to_value(d).unwrap_or_default();
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { .. } => ApiError::gone(e.to_string()),
            StoreError::FutureRevision { .. } => ApiError::bad_request(e.to_string()),
            StoreError::ValueTooLarge { .. }
            | StoreError::KeyTooLarge { .. }
            | StoreError::TxnTooLarge(_) => ApiError::too_large(e.to_string()),
            // Nothing was written; writes succeed again once an operator frees space.
            StoreError::NoSpace(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                e.to_string(),
            ),
            StoreError::Closed => ApiError::unavailable("the server is shutting down"),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::unavailable(format!("store unavailable: {other}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code, axum::Json(self.to_status_json())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = http::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quoting_a_huge_name_stay_small() {
        let name = "n".repeat(2 << 20);
        let errors = ValidationErrors::one("metadata.name", "must be at most 253 characters");
        let mut many = infraos_api::validation::Errors::default();
        for i in 0..1000 {
            many.add(
                format!("metadata.labels.{name}{i}"),
                format!("{name:?} is bad"),
            );
        }
        let many = many.into_result().unwrap_err();
        for e in [
            ApiError::invalid("Claim", &name, &errors),
            ApiError::invalid("Claim", "ok", &many),
            ApiError::not_found("Claim", &name),
            ApiError::already_exists("Claim", &name),
            ApiError::stale("Claim", &name),
            ApiError::bad_request(format!("metadata.namespace {name:?} does not match")),
        ] {
            let body = serde_json::to_vec(&e.to_status_json()).unwrap();
            assert!(body.len() < 3 * REASON_MAX, "{} bytes", body.len());
            assert!(e.message.contains("bytes)"), "{}", e.message);
        }
        let mut extended = ApiError::bad_request("x");
        extended.message = name.clone();
        let body = serde_json::to_vec(&extended.to_status_json()).unwrap();
        assert!(body.len() < 2 * REASON_MAX, "{} bytes", body.len());
    }
}
