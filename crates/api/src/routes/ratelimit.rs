//! Per-tenant rate limits: statistics, a tenant's status, runtime overrides.

use crate::error::{ApiResult, AuthErrors, BodyErrors};
use crate::extract::{AnyKey, AppState, Auth, Json, OpsOnly, Path, ReadAccess};
use axum::extract::State;
use daena_app::error::AppError;
use daena_app::ratelimit::{self, LimitView, RateLimitStats, TenantStatus};
use daena_core::auth::Role;
use daena_core::ids::TenantId;

/// Every active tenant's limit, use, allowed and rejected counts, with the defaults.
#[utoipa::path(get, path = "/api/v1/tenant-rate-limit/stats", tag = "limits",
    responses((status = 200, body = RateLimitStats), AuthErrors), security(("api_key" = [])))]
pub async fn stats(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<RateLimitStats> {
    axum::Json(ratelimit::stats(&state))
}

/// One tenant's limit and use; agent keys may only ask about their own tenant.
#[utoipa::path(get, path = "/api/v1/tenant-rate-limit/{tenant}/status", tag = "limits",
    params(("tenant" = String, Path)), responses((status = 200, body = TenantStatus), AuthErrors), security(("api_key" = [])))]
pub async fn status(
    State(state): State<AppState>,
    Auth(who, _): Auth<AnyKey>,
    Path(tenant): Path<String>,
) -> ApiResult<axum::Json<TenantStatus>> {
    let tenant = TenantId::new(&tenant).map_err(AppError::from)?;
    if who.role() == Role::Agent && &tenant != who.tenant() {
        return Err(AppError::forbidden("agent keys may only read their own tenant's limit").into());
    }
    Ok(axum::Json(ratelimit::status(&state, &tenant)))
}

/// Overrides a tenant's limit at runtime (persisted, ledgered).
#[utoipa::path(put, path = "/api/v1/tenant-rate-limit/{tenant}", tag = "limits", request_body = LimitView,
    params(("tenant" = String, Path)), responses((status = 200, body = TenantStatus), AuthErrors, BodyErrors),
    security(("api_key" = [])))]
pub async fn set(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Path(tenant): Path<String>,
    Json(limit): Json<LimitView>,
) -> ApiResult<axum::Json<TenantStatus>> {
    let tenant = TenantId::new(&tenant).map_err(AppError::from)?;
    Ok(axum::Json(ratelimit::set_override(&state, &who, &tenant, Some(limit)).await?))
}

/// Removes a tenant's override: the defaults apply again.
#[utoipa::path(delete, path = "/api/v1/tenant-rate-limit/{tenant}", tag = "limits",
    params(("tenant" = String, Path)), responses((status = 200, body = TenantStatus), AuthErrors), security(("api_key" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Path(tenant): Path<String>,
) -> ApiResult<axum::Json<TenantStatus>> {
    let tenant = TenantId::new(&tenant).map_err(AppError::from)?;
    Ok(axum::Json(ratelimit::set_override(&state, &who, &tenant, None).await?))
}
