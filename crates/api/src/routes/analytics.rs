//! Fleet analytics: interactions in, summary, anomalies, efficiency and communication out.

use crate::error::{ApiResult, AuthErrors, BodyErrors};
use crate::extract::{AppState, Auth, DataAccess, Json, Query, ReadAccess};
use axum::extract::State;
use axum::http::StatusCode;
use daena_app::analytics::{self, AnomalyReport, EfficiencyReport, Interactions, Patterns, Recorded, Summary};
use serde::Deserialize;

/// Records an agent-to-agent interaction (agent ids such as `legal_synth`), or a batch of up
/// to 1000 as a JSON array (all or none). `at` places a late report in its minute.
#[utoipa::path(post, path = "/api/v1/analytics/interactions", tag = "analytics", request_body = Interactions,
    responses((status = 201, body = Recorded), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn interactions(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Json(i): Json<Interactions>,
) -> ApiResult<(StatusCode, axum::Json<Recorded>)> {
    Ok((StatusCode::CREATED, axum::Json(analytics::record(&state, &who, i)?)))
}

/// Totals, error rates (5 min, 1 h), active agents, top agents, top paths, recent anomalies.
#[utoipa::path(get, path = "/api/v1/analytics/summary", tag = "analytics",
    responses((status = 200, body = Summary), AuthErrors), security(("api_key" = [])))]
pub async fn summary(State(state): State<AppState>, Auth(who, _): Auth<ReadAccess>) -> axum::Json<Summary> {
    axum::Json(analytics::summary(&state, &who))
}

/// Anomalies per agent and metric, with method, baseline, observed value, score, severity, window.
#[utoipa::path(get, path = "/api/v1/analytics/anomalies", tag = "analytics",
    responses((status = 200, body = AnomalyReport), AuthErrors), security(("api_key" = [])))]
pub async fn anomalies(State(state): State<AppState>, Auth(who, _): Auth<ReadAccess>) -> axum::Json<AnomalyReport> {
    axum::Json(analytics::anomalies(&state, &who))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DepartmentQuery {
    pub department: Option<String>,
}

/// Per agent: tasks, success rate, latency, tokens, cost per task, own cache hit rate,
/// memory reads and writes.
#[utoipa::path(get, path = "/api/v1/analytics/agents/efficiency", tag = "analytics", params(DepartmentQuery),
    responses((status = 200, body = EfficiencyReport), AuthErrors), security(("api_key" = [])))]
pub async fn efficiency(
    State(state): State<AppState>,
    Auth(who, _): Auth<ReadAccess>,
    Query(q): Query<DepartmentQuery>,
) -> ApiResult<axum::Json<EfficiencyReport>> {
    Ok(axum::Json(analytics::efficiency(&state, &who, q.department.as_deref())?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    /// Only pairs this agent sends or receives.
    #[param(value_type = Option<String>)]
    pub agent_id: Option<daena_core::ids::AgentId>,
}

/// Agent and department message matrices, neighbour vs cross-department share, bottlenecks.
#[utoipa::path(get, path = "/api/v1/analytics/communication-patterns", tag = "analytics", params(AgentQuery),
    responses((status = 200, body = Patterns), AuthErrors), security(("api_key" = [])))]
pub async fn patterns(
    State(state): State<AppState>,
    Auth(who, _): Auth<ReadAccess>,
    Query(q): Query<AgentQuery>,
) -> axum::Json<Patterns> {
    axum::Json(analytics::patterns(&state, &who, q.agent_id.as_ref().map(daena_core::ids::AgentId::as_str)))
}
