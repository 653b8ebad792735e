//! The application's error type and the one table of public error codes.
//!
//! Every error a client can see has a stable code and a message written for the caller; `api`
//! maps each code to its HTTP status. Internal errors keep their detail (and the error that
//! caused them, as [`std::error::Error::source`]) for the log and show only a generic message.

use serde::Serialize;
use std::sync::Arc;

/// Stable public error codes. `daena_api::error::status_of` is the only mapping to HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No API key was given, or the key is unknown or revoked.
    Unauthenticated,
    /// A valid key whose role or tenant may not do this.
    Forbidden,
    /// An ABAC policy denied the operation on this data class.
    PolicyDenied,
    /// Nothing at this address for this tenant.
    NotFound,
    /// A parameter, identifier or body field is invalid.
    InvalidRequest,
    /// The body is not valid JSON or does not match the expected shape.
    InvalidJson,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// `If-Match` did not match the record's current version.
    VersionConflict,
    /// An overwrite diverges more than the class allows and was not marked as a revision.
    DivergenceAbort,
    /// Another long operation is running; wait for it (`GET /api/v1/admin/operations`).
    Conflict,
    /// The tenant's rate limit is exhausted; retry after `Retry-After` seconds.
    RateLimited,
    /// The service is read-only (`DAENA_NBMF_ENABLED=false` or the admin switch).
    WritesDisabled,
    /// A cache miss needs the upstream model, and none is configured.
    UpstreamNotConfigured,
    /// The upstream model endpoint failed or could not be reached.
    UpstreamError,
    /// The request took longer than the configured timeout.
    Timeout,
    /// A dependency is not available right now.
    Unavailable,
    /// Stored bytes fail their authentication: damaged at rest (or moved). The message names
    /// what; restore it from a snapshot or delete it.
    Corrupt,
    /// Something failed inside Daena; the log has the detail under the request id.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::DivergenceAbort => "divergence_abort",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::WritesDisabled => "writes_disabled",
            ErrorCode::UpstreamNotConfigured => "upstream_not_configured",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Corrupt => "data_corrupt",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::PolicyDenied,
        ErrorCode::NotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidJson,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::VersionConflict,
        ErrorCode::DivergenceAbort,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::WritesDisabled,
        ErrorCode::UpstreamNotConfigured,
        ErrorCode::UpstreamError,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Corrupt,
        ErrorCode::Internal,
    ];
}

/// An error of a use case. `message` is safe to show the caller, except for `Internal`,
/// whose message is logged and replaced by a generic one at the edge.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before retrying (rate limits).
    pub retry_after: Option<u64>,
    /// Structured details for the caller (e.g. which rule denied); boxed, as errors are
    /// returned far more often than they carry details.
    pub details: Option<Box<serde_json::Value>>,
    /// The error this one was made from, kept for the log (never shown to the caller).
    #[source]
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError { code, message: message.into(), retry_after: None, details: None, cause: None }
    }
    /// Keeps `cause` as this error's source.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, m)
    }
    /// A failure of the embedded store (redb, the cold segments): internal, named as storage.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        Self::internal(format!("storage: {e}"))
    }
}

impl From<daena_store::StoreError> for AppError {
    fn from(e: daena_store::StoreError) -> Self {
        if let daena_store::StoreError::Reopening(_) = e {
            return AppError::unavailable(format!("storage: {e}; retry shortly")).caused_by(e);
        }
        match e.io_error().and_then(disk_condition) {
            Some(condition) => {
                AppError::unavailable(format!("storage: {condition} ({e}); retry once the operator has fixed it"))
                    .caused_by(e)
            }
            None => AppError::storage(&e).caused_by(e),
        }
    }
}

/// A disk condition the operator can fix and the caller can wait out (503, not 500).
fn disk_condition(e: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    /// EIO on Linux: std gives it no kind of its own.
    const EIO: i32 = 5;
    match e.kind() {
        StorageFull | QuotaExceeded => Some("the disk holding the data directory is full"),
        ReadOnlyFilesystem => Some("the data directory is on a read-only file system"),
        _ if e.raw_os_error() == Some(EIO) => Some("the disk holding the data directory reported an I/O error"),
        _ => None,
    }
}

impl From<daena_core::ids::IdError> for AppError {
    fn from(e: daena_core::ids::IdError) -> Self {
        AppError::invalid(e.to_string()).caused_by(e)
    }
}

pub type AppResult<T> = Result<T, AppError>;
