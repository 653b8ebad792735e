//! Application errors as HTTP responses: `{"error": {"code", "message", "details"?}}`.
//!
//! The status comes from [`status_of`], the one mapping of the public error codes
//! (`daena_app::error::ErrorCode`) to HTTP. Internal errors are logged with their detail and
//! the chain of causes (inside the request's span, which carries the request id) and answered
//! with a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use daena_app::error::{AppError, ErrorCode};
use serde::Serialize;

/// The error body every failing route answers with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code from the public table (`unauthenticated`, `not_found`, `writes_disabled`, ...).
    #[schema(example = "not_found")]
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// An [`AppError`] on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(AppError::new(code, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = status_of(e.code);
        let message = if e.code == ErrorCode::Internal {
            let causes = causes(&e);
            tracing::error!(detail = %e.message, causes = %causes, "internal error");
            "internal error; the server log has the detail under this request's x-request-id".to_owned()
        } else {
            e.message
        };
        let body = ErrorBody { error: ErrorDetail { code: e.code.as_str(), message, details: e.details.map(|d| *d) } };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = e.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The HTTP status of each public error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::PolicyDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidRequest | ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::VersionConflict => StatusCode::PRECONDITION_FAILED,
        ErrorCode::DivergenceAbort | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::WritesDisabled | ErrorCode::UpstreamNotConfigured | ErrorCode::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Internal | ErrorCode::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error's causes, outermost first, for the log (`-` when it has none).
fn causes(e: &AppError) -> String {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(c) = next {
        out.push(c.to_string());
        next = c.source();
    }
    if out.is_empty() { "-".to_owned() } else { out.join(": ") }
}

/// Error responses of a route that needs an API key.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// Missing `X-API-Key`, an unknown or a revoked key (`unauthenticated`), or too many
    /// failed attempts from this address (429).
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// A valid key whose role may not call the route, or an agent key naming another tenant
    /// in `X-Tenant-ID`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Malformed parameters or `X-Tenant-ID`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The tenant's rate limit is exhausted.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// Internal error.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Error responses of a route that also reads a JSON body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// The body is larger than `server.request_body_limit_bytes`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

/// The request conflicts with what exists (an active key of that name).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Conflict {
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// The address names nothing for this tenant.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum NotFound {
    #[response(status = 404)]
    NotFound(ErrorBody),
}
