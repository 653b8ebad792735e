//! The 6×8 agent registry and heartbeats.

use crate::error::{ApiResult, AuthErrors, NotFound};
use crate::extract::{AnyKey, AppState, Auth, DataAccess, Path, Query};
use axum::extract::State;
use daena_app::agents::{AgentList, HeartbeatView, StructureView};
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    /// Only this department's agents.
    pub department: Option<String>,
}

/// The tenant's 48 agents with their sunflower cells, neighbours and liveness.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, body = AgentList), AuthErrors), security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who, _): Auth<AnyKey>,
    Query(q): Query<AgentQuery>,
) -> ApiResult<axum::Json<AgentList>> {
    Ok(axum::Json(state.governance().agents().list(&who, q.department.as_deref())?))
}

/// The 6×8 structure with its validation against 8 departments, 48 agents, 6 roles.
#[utoipa::path(get, path = "/api/v1/agents/structure", tag = "agents",
    responses((status = 200, body = StructureView), AuthErrors), security(("api_key" = [])))]
pub async fn structure(State(state): State<AppState>, Auth(who, _): Auth<AnyKey>) -> axum::Json<StructureView> {
    axum::Json(state.governance().agents().structure(&who))
}

/// Records that an agent is alive. An agent is active while its last heartbeat is younger
/// than `agents.heartbeat_window_secs`.
#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", tag = "agents",
    params(("id" = String, Path, description = "agent id, e.g. legal_synth")),
    responses((status = 200, body = HeartbeatView), AuthErrors, NotFound), security(("api_key" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<HeartbeatView>> {
    Ok(axum::Json(state.governance().agents().heartbeat(&who, &id)?))
}
