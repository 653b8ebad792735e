//! The runbook's monitoring routes.

use crate::error::{ApiResult, AuthErrors};
use crate::extract::{AppState, Auth, ReadAccess};
use axum::extract::State;
use daena_app::memory::monitor::{self, MemoryReport};

/// Memory per tier (records, bytes, compression, hit rate, latency p50/p95/p99), L2Q,
/// divergence, by class and tenant, growth, the ledger, and SLO status.
#[utoipa::path(get, path = "/monitoring/memory", tag = "monitoring",
    responses((status = 200, body = MemoryReport), AuthErrors), security(("api_key" = [])))]
pub async fn memory(
    State(state): State<AppState>,
    Auth(who, _): Auth<ReadAccess>,
) -> ApiResult<axum::Json<MemoryReport>> {
    Ok(axum::Json(monitor::report(&state, &who)))
}
