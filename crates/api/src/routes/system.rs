//! Health, metrics and the OpenAPI document.

use crate::error::{ApiError, AuthErrors};
use crate::extract::{AppState, MaybeAuth, authenticate};
use axum::Extension;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use daena_app::auth::Access;
use daena_app::health::{self, HealthReport, HealthStatus};
use std::sync::Arc;

/// Service health with real checks.
///
/// Without a key only the status is shown; with any valid key every check is shown with its
/// detail. HTTP 200 for `healthy` and `degraded`, 503 for `unhealthy`.
#[utoipa::path(get, path = "/health", tag = "system",
    responses(
        (status = 200, description = "healthy or degraded", body = HealthReport),
        (status = 503, description = "unhealthy", body = HealthReport),
    ))]
pub async fn health(State(state): State<AppState>, MaybeAuth(caller): MaybeAuth) -> Response {
    let detailed = caller.is_some();
    let report = tokio::task::spawn_blocking(move || health::check(&state, detailed)).await;
    match report {
        Ok(report) => {
            let status =
                if report.status == HealthStatus::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            (status, axum::Json(report)).into_response()
        }
        Err(e) => ApiError(daena_app::error::AppError::internal(format!("health check task: {e}"))).into_response(),
    }
}

/// Prometheus metrics in the text exposition format.
///
/// Needs an ops or auditor key (`X-API-Key`, or `Authorization: Bearer <key>`), unless
/// `server.metrics_public` is true.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"), AuthErrors))]
pub async fn metrics(State(state): State<AppState>, parts: Parts) -> Response {
    if !state.config().server.metrics_public
        && let Err(e) = authenticate(&state, &parts, Access::Read)
    {
        return e.into_response();
    }
    metrics_unkeyed(State(state)).await
}

/// `/metrics` on `server.metrics_listen`, which needs no key.
pub async fn metrics_unkeyed(State(state): State<AppState>) -> Response {
    let body = state.render_metrics();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI document", body = Object)))]
pub async fn openapi(Extension(doc): Extension<Arc<String>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()).into_response()
}
