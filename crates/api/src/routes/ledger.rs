//! The ledger: head, entries, inclusion and consistency proofs, checkpoints, the manifest,
//! and adopting a legacy Python ledger as genesis.

use crate::error::{ApiError, ApiResult, AuthErrors, BodyErrors, NotFound};
use crate::extract::{AnyKey, AppState, Auth, OpsOnly, Query, ReadAccess};
use axum::extract::State;
use daena_app::error::{AppError, ErrorCode};
use daena_app::ledger::{
    self, CheckpointView, ConsistencyView, EntriesPage, HeadView, InclusionView, LegacyImport, Manifest,
};
use daena_core::auth::Role;
use serde::Deserialize;

/// The ledger's size, head hash, Merkle root and newest signed checkpoint: every tenant's
/// activity, so for ops and auditor keys (agents read their tenant's entries).
#[utoipa::path(get, path = "/api/v1/ledger/head", tag = "ledger",
    responses((status = 200, body = HeadView), AuthErrors), security(("api_key" = [])))]
pub async fn head(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> ApiResult<axum::Json<HeadView>> {
    Ok(axum::Json(state.ledger().head()?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// First sequence number (default 1).
    pub from: Option<u64>,
    /// At most this many entries (1..=1000, default 100).
    pub limit: Option<usize>,
    /// Only this tenant's entries (non-ops keys only ever see their own tenant's).
    #[param(value_type = Option<String>)]
    pub tenant: Option<daena_core::ids::TenantId>,
    /// Include the (encrypted) operation bodies, base64.
    pub include_body: Option<bool>,
}

/// Entries in sequence order, tenant-scoped for non-ops keys.
#[utoipa::path(get, path = "/api/v1/ledger/entries", tag = "ledger", params(EntriesQuery),
    responses((status = 200, body = EntriesPage), AuthErrors), security(("api_key" = [])))]
pub async fn entries(
    State(state): State<AppState>,
    Auth(who, _): Auth<AnyKey>,
    Query(q): Query<EntriesQuery>,
) -> ApiResult<axum::Json<EntriesPage>> {
    let page = tokio::task::spawn_blocking(move || {
        state.ledger().entries(
            &who,
            q.from.unwrap_or(1),
            q.limit.unwrap_or(100),
            q.tenant.as_ref().map(daena_core::ids::TenantId::as_str),
            q.include_body.unwrap_or(false),
        )
    })
    .await
    .map_err(|e| AppError::internal(format!("entries task: {e}")))??;
    Ok(axum::Json(page))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The entry's sequence number.
    pub seq: u64,
    /// The tree size the proof is for (default: the current size).
    pub size: Option<u64>,
}

/// An RFC 6962 inclusion proof of entry `seq` in the tree of `size` entries. An agent key
/// gets proofs of its own tenant's entries only, against the newest signed checkpoint.
#[utoipa::path(get, path = "/api/v1/ledger/proof/inclusion", tag = "ledger", params(InclusionQuery),
    responses((status = 200, body = InclusionView), AuthErrors, NotFound), security(("api_key" = [])))]
pub async fn inclusion(
    State(state): State<AppState>,
    Auth(who, _): Auth<AnyKey>,
    Query(q): Query<InclusionQuery>,
) -> ApiResult<axum::Json<InclusionView>> {
    Ok(axum::Json(state.ledger().inclusion_for(&who, q.seq, q.size)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size (default: the current size).
    pub to: Option<u64>,
}

/// An RFC 6962 consistency proof between two tree sizes.
#[utoipa::path(get, path = "/api/v1/ledger/proof/consistency", tag = "ledger", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyView), AuthErrors, NotFound), security(("api_key" = [])))]
pub async fn consistency(
    State(state): State<AppState>,
    _auth: Auth<ReadAccess>,
    Query(q): Query<ConsistencyQuery>,
) -> ApiResult<axum::Json<ConsistencyView>> {
    Ok(axum::Json(state.ledger().consistency(q.from, q.to)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CheckpointQuery {
    /// Sign a checkpoint of the current size first (ops keys only).
    pub fresh: Option<bool>,
}

/// The newest signed checkpoint; keep a copy outside the operator's control.
#[utoipa::path(get, path = "/api/v1/ledger/checkpoint", tag = "ledger", params(CheckpointQuery),
    responses((status = 200, body = CheckpointView), AuthErrors), security(("api_key" = [])))]
pub async fn checkpoint(
    State(state): State<AppState>,
    Auth(who, _): Auth<AnyKey>,
    Query(q): Query<CheckpointQuery>,
) -> ApiResult<axum::Json<CheckpointView>> {
    let fresh = q.fresh.unwrap_or(false);
    if fresh && who.role() != Role::Ops {
        return Err(ApiError::new(ErrorCode::Forbidden, "only ops keys may sign a fresh checkpoint"));
    }
    Ok(axum::Json(ledger::checkpoint(&state, fresh).await?))
}

/// The last full verification of the ledger (`null` before the first), which runs in the
/// background every `ledger.verify_every_hours`.
#[utoipa::path(get, path = "/api/v1/ledger/verification", tag = "ledger",
    responses((status = 200, body = Option<daena_app::checks::Verification>), AuthErrors), security(("api_key" = [])))]
pub async fn last_verification(
    State(state): State<AppState>,
    _auth: Auth<ReadAccess>,
) -> axum::Json<Option<daena_app::checks::Verification>> {
    axum::Json(state.monitoring().background().verification(&state))
}

/// Verifies the whole ledger now (every entry hash, the chain, every signed checkpoint's
/// root) and answers with the outcome; it is also what `/health` shows from then on.
#[utoipa::path(post, path = "/api/v1/ledger/verification", tag = "ledger",
    responses((status = 200, body = daena_app::checks::Verification), AuthErrors), security(("api_key" = [])))]
pub async fn verify_now(
    State(state): State<AppState>,
    _auth: Auth<OpsOnly>,
) -> ApiResult<axum::Json<daena_app::checks::Verification>> {
    Ok(axum::Json(daena_app::checks::verify_ledger(&state).await?))
}

/// A manifest of the ledger (entries, root, first and last hash, checkpoint).
#[utoipa::path(get, path = "/api/v1/ledger/manifest", tag = "ledger",
    responses((status = 200, body = Manifest), AuthErrors), security(("api_key" = [])))]
pub async fn manifest(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> ApiResult<axum::Json<Manifest>> {
    Ok(axum::Json(ledger::manifest(&state)?))
}

/// Largest legacy ledger accepted by the import route.
pub const LEGACY_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Verifies a ledger written by the original Python Daena (the body, as JSONL text) and
/// records it as the genesis of this (empty) ledger.
#[utoipa::path(post, path = "/api/v1/admin/ledger/import-legacy", tag = "ledger",
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = LegacyImport), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn import_legacy(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<LegacyImport>> {
    let text = std::str::from_utf8(&body).map_err(|_| AppError::invalid("the legacy ledger is not UTF-8 text"))?;
    Ok(axum::Json(ledger::import_legacy(&state, &who, text).await?))
}
