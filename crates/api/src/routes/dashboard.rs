//! The operator dashboard: a static page (HTML, one script, one stylesheet, embedded in the
//! binary) that signs in with an API key and reads the service's own endpoints, and the one
//! endpoint it needs beyond them, the last 24 hours of samples.

use crate::error::{ApiError, ApiResult, AuthErrors};
use crate::extract::{AppState, Auth, ReadAccess};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use daena_app::dashboard::SeriesView;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/app.css");

/// Only this origin's script and style; no inline code, no framing, no third party.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`: the page (no key needed to load it; every figure needs one).
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The dashboard's history: one sample a minute for the last 24 hours (health, cache hits by
/// kind, tier latency p95, error rate, spend and savings, ledger size), plus one taken now.
#[utoipa::path(get, path = "/api/v1/dashboard/series", tag = "monitoring",
    responses((status = 200, body = SeriesView), AuthErrors), security(("api_key" = [])))]
pub async fn series(
    State(state): State<AppState>,
    Auth(_who, _): Auth<ReadAccess>,
) -> ApiResult<axum::Json<SeriesView>> {
    let view = tokio::task::spawn_blocking(move || state.monitoring().series().view(&state))
        .await
        .map_err(|e| ApiError(daena_app::error::AppError::internal(format!("dashboard series task: {e}"))))?;
    Ok(axum::Json(view))
}
