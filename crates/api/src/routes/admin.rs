//! Administration: API keys and the read-only switch. Every route needs an `ops` key,
//! except reading the switch, which auditors may do.

use crate::error::{ApiResult, AuthErrors, BodyErrors, Conflict, NotFound};
use crate::extract::{AppState, Auth, Json, OpsOnly, Path, ReadAccess};
use axum::extract::State;
use axum::http::StatusCode;
use daena_app::admin;
use daena_app::auth::{CreatedKey, KeyView, NewKey};
use daena_app::backup_trust::Trust;
use daena_app::error::AppError;
use daena_app::operations::{self, Maintenance, Operation};
use daena_core::auth::{KeyAttributes, Role};
use daena_core::ids::TenantId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A unique name for the key's holder, e.g. `legal-agents`.
    pub name: String,
    /// `ops`, `auditor` or `agent`.
    pub role: String,
    /// The tenant the key belongs to; `default` when omitted.
    pub tenant: Option<String>,
    /// ABAC roles such as `legal.officer`.
    #[serde(default)]
    pub roles: Vec<String>,
    pub department: Option<String>,
    /// Binds an `agent` key to one agent id: it then writes, confirms and sends heartbeats
    /// only as that agent.
    pub agent: Option<String>,
    /// Grants an `auditor` key every tenant (else it reads its own tenant only).
    #[serde(default)]
    pub all_tenants: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// Creates an API key. The key text is in this response only; it is stored hashed.
#[utoipa::path(post, path = "/api/v1/admin/keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), AuthErrors, BodyErrors, Conflict), security(("api_key" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedKey>)> {
    let role = Role::parse(&req.role)
        .ok_or_else(|| AppError::invalid(format!("role must be ops, auditor or agent, got {:?}", req.role)))?;
    let tenant = match req.tenant.as_deref() {
        Some(t) => TenantId::new(t).map_err(AppError::from)?,
        None => TenantId::default_tenant(),
    };
    let new = NewKey {
        name: req.name,
        role,
        tenant,
        attributes: KeyAttributes {
            roles: req.roles,
            department: req.department,
            agent: req.agent,
            all_tenants: req.all_tenants,
        },
    };
    let created = admin::create_key(&state, &who, new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Lists API keys (never their text or digest).
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "admin",
    responses((status = 200, body = KeyList), AuthErrors), security(("api_key" = [])))]
pub async fn list_keys(State(state): State<AppState>, _auth: Auth<OpsOnly>) -> axum::Json<KeyList> {
    axum::Json(KeyList { keys: state.governance().api_keys().list() })
}

/// Revokes a key by id or name; the next request with it gets 401.
#[utoipa::path(delete, path = "/api/v1/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "key id or name")),
    responses((status = 200, body = KeyView), AuthErrors, NotFound), security(("api_key" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyView>> {
    Ok(axum::Json(admin::revoke_key(&state, &who, &id).await?))
}

/// Whether memory writes are enabled (the runbook's "stop writes" switch).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WritesSwitch {
    pub enabled: bool,
}

/// Reads the read-only switch.
#[utoipa::path(get, path = "/api/v1/admin/writes", tag = "admin",
    responses((status = 200, body = WritesSwitch), AuthErrors), security(("api_key" = [])))]
pub async fn get_writes(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<WritesSwitch> {
    axum::Json(WritesSwitch { enabled: state.writes_enabled() })
}

/// Turns writes on or off at runtime; off answers writes with 503 `writes_disabled`.
#[utoipa::path(put, path = "/api/v1/admin/writes", tag = "admin", request_body = WritesSwitch,
    responses((status = 200, body = WritesSwitch), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn set_writes(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<WritesSwitch>,
) -> ApiResult<axum::Json<WritesSwitch>> {
    Ok(axum::Json(WritesSwitch { enabled: admin::set_writes(&state, &who, req.enabled).await? }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgingRun {
    /// Only report what would happen.
    #[serde(default)]
    pub dry_run: bool,
}

/// Runs the aging rules now (tighten, archive, expire); every action is ledgered.
#[utoipa::path(post, path = "/api/v1/admin/aging/run", tag = "admin", request_body = AgingRun,
    responses((status = 200, body = daena_app::memory::aging::AgingReport), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn run_aging(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<AgingRun>,
) -> ApiResult<axum::Json<daena_app::memory::aging::AgingReport>> {
    Ok(axum::Json(daena_app::memory::aging::run(&state, &who.actor(), req.dry_run).await?))
}

/// Takes a consistent snapshot into the data directory's `snapshots/` while serving; returns
/// its manifest (ledger position, records, per-file SHA-256).
#[utoipa::path(post, path = "/api/v1/admin/snapshots", tag = "admin",
    responses((status = 201, body = daena_app::snapshot::Manifest), AuthErrors), security(("api_key" = [])))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    _auth: Auth<OpsOnly>,
) -> ApiResult<(StatusCode, axum::Json<daena_app::snapshot::Manifest>)> {
    Ok((StatusCode::CREATED, axum::Json(daena_app::snapshot::create(&state).await?)))
}

/// The snapshots in the data directory, oldest first.
#[utoipa::path(get, path = "/api/v1/admin/snapshots", tag = "admin",
    responses((status = 200, body = Vec<daena_app::snapshot::Manifest>), AuthErrors), security(("api_key" = [])))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    _auth: Auth<OpsOnly>,
) -> ApiResult<axum::Json<Vec<daena_app::snapshot::Manifest>>> {
    let list = daena_app::snapshot::list(&state.data().snapshots_dir())?;
    Ok(axum::Json(list.into_iter().map(|(_, m)| m).collect()))
}

/// Records the outcome of a DR drill (`daena drill`) in the ledger as `ops.drill`.
#[utoipa::path(post, path = "/api/v1/admin/drills", tag = "admin", request_body = daena_app::snapshot::DrillRecord,
    responses((status = 201, body = daena_app::snapshot::Ledgered), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn record_drill(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(r): Json<daena_app::snapshot::DrillRecord>,
) -> ApiResult<(StatusCode, axum::Json<daena_app::snapshot::Ledgered>)> {
    Ok((StatusCode::CREATED, axum::Json(daena_app::snapshot::record_drill(&state, &who, &r).await?)))
}

/// The newest drill's outcome (null when no drill has run).
#[utoipa::path(get, path = "/api/v1/admin/drills/last", tag = "admin",
    responses((status = 200, body = Option<daena_app::snapshot::LastDrill>), AuthErrors), security(("api_key" = [])))]
pub async fn last_drill(
    State(state): State<AppState>,
    _auth: Auth<ReadAccess>,
) -> ApiResult<axum::Json<Option<daena_app::snapshot::LastDrill>>> {
    Ok(axum::Json(daena_app::snapshot::last_drill(&state)?))
}

/// The key store without key material: master key id and source, data keys per tenant, ages.
#[utoipa::path(get, path = "/api/v1/admin/key-status", tag = "admin",
    responses((status = 200, body = daena_app::keyring::KeyStatus), AuthErrors), security(("api_key" = [])))]
pub async fn key_status(
    State(state): State<AppState>,
    _auth: Auth<ReadAccess>,
) -> ApiResult<axum::Json<daena_app::keyring::KeyStatus>> {
    Ok(axum::Json(daena_app::keyrotate::status(&state)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRequest {
    /// Only this tenant's records (default: every tenant).
    pub tenant: Option<String>,
}

/// Writes a portable logical backup (decrypted records as JSON lines, zstd) into the data
/// directory's `archives/`; returns its path, record count and SHA-256.
#[utoipa::path(post, path = "/api/v1/admin/archives", tag = "admin", request_body = ArchiveRequest,
    responses((status = 201, body = daena_app::archive::ArchiveSummary), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn export_archive(
    State(state): State<AppState>,
    _auth: Auth<OpsOnly>,
    Json(req): Json<ArchiveRequest>,
) -> ApiResult<(StatusCode, axum::Json<daena_app::archive::ArchiveSummary>)> {
    let tenant = req.tenant.as_deref().map(TenantId::new).transpose().map_err(AppError::from)?;
    let dir = daena_app::archive::archives_dir(&state);
    let summary = daena_app::archive::export(&state, tenant, dir).await?;
    Ok((StatusCode::CREATED, axum::Json(summary)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Only count what would be re-wrapped.
    #[serde(default)]
    pub dry_run: bool,
}

/// Rotates the master key while serving (when it lives in `keys/master.key`): every data key
/// re-wrapped under a new one in one transaction, then every record sealed again in the
/// background while requests go on; ledgered as `key.rotate`. Answers 202 with the operation
/// to poll (`GET /api/v1/admin/operations/{id}`), or 200 with a finished one for a dry run.
#[utoipa::path(post, path = "/api/v1/admin/key-rotation", tag = "admin", request_body = RotateRequest,
    responses((status = 202, body = Operation), (status = 200, body = Operation), (status = 409, body = crate::error::ErrorBody),
        AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<RotateRequest>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    let op = daena_app::keyrotate::start(&state, who, req.dry_run).await?;
    let status = if req.dry_run { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(op)))
}

/// Seals every record still under an older data key version again (finishes a rotation a
/// crash interrupted), in the background: 202 with the operation to poll.
#[utoipa::path(post, path = "/api/v1/admin/key-reseal", tag = "admin",
    responses((status = 202, body = Operation), (status = 409, body = crate::error::ErrorBody), AuthErrors),
    security(("api_key" = [])))]
pub async fn reseal_keys(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(daena_app::keyrotate::start_reseal(&state, who)?)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// `latest` (the newest in the data directory's `snapshots/`) or an absolute path on the server.
    pub snapshot: String,
    /// Accept a snapshot not signed by this deployment (or by `public_key`).
    #[serde(default)]
    pub trust_unsigned: bool,
    /// Another deployment's signing key (hex) whose snapshots are trusted.
    pub public_key: Option<String>,
}

/// Restores a snapshot into the running server: it stops serving (requests in flight finish),
/// verifies the archive, keeps the current state aside under `replaced/`, and serves the
/// restored state; 503 `unavailable` meanwhile. Answers 202 with the operation to poll.
#[utoipa::path(post, path = "/api/v1/admin/restores", tag = "admin", request_body = RestoreRequest,
    responses((status = 202, body = Operation), (status = 409, body = crate::error::ErrorBody), AuthErrors, BodyErrors, NotFound),
    security(("api_key" = [])))]
pub async fn restore(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<RestoreRequest>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    let archive = if req.snapshot == "latest" {
        let list = daena_app::snapshot::list(&state.data().snapshots_dir())?;
        match list.last() {
            Some((path, _)) => path.clone(),
            None => return Err(AppError::not_found("no snapshots in the data directory's snapshots/").into()),
        }
    } else {
        std::path::PathBuf::from(&req.snapshot)
    };
    let trust = Trust { trust_unsigned: req.trust_unsigned, public_key: req.public_key };
    let op = operations::request_maintenance(&state, &who.actor(), Maintenance::Restore { archive, trust })?;
    Ok((StatusCode::ACCEPTED, axum::Json(op)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A ledger sequence number or an RFC 3339 time: the state becomes what it was after it.
    pub to: String,
    /// Accept a snapshot not signed by this deployment (one taken before snapshots were signed).
    #[serde(default)]
    pub trust_unsigned: bool,
}

/// Point-in-time recovery in the running server: the newest snapshot at or before the point
/// plus the ledger up to it, served after a maintenance window like a restore. The current
/// state and the later ledger entries are kept under `replaced/`. 202 with the operation.
#[utoipa::path(post, path = "/api/v1/admin/rollbacks", tag = "admin", request_body = RollbackRequest,
    responses((status = 202, body = Operation), (status = 409, body = crate::error::ErrorBody), AuthErrors, BodyErrors, NotFound),
    security(("api_key" = [])))]
pub async fn rollback(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    let trust = Trust { trust_unsigned: req.trust_unsigned, public_key: None };
    let op = operations::request_maintenance(&state, &who.actor(), Maintenance::Rollback { to: req.to, trust })?;
    Ok((StatusCode::ACCEPTED, axum::Json(op)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// A ledger directory on the server (absolute path).
    pub ledger: String,
    /// A snapshot archive to start from (default: the newest at or before the point).
    pub from_snapshot: Option<String>,
    /// A sequence number or RFC 3339 time (default: the ledger's end).
    pub to: Option<String>,
    /// Accept a snapshot not signed by this deployment (or by `public_key`).
    #[serde(default)]
    pub trust_unsigned: bool,
    /// Another deployment's signing key (hex) whose snapshots are trusted.
    pub public_key: Option<String>,
}

/// Rebuilds the running server's state from a snapshot and a ledger's entries after it, in a
/// maintenance window like a restore. 202 with the operation.
#[utoipa::path(post, path = "/api/v1/admin/replays", tag = "admin", request_body = ReplayRequest,
    responses((status = 202, body = Operation), (status = 409, body = crate::error::ErrorBody), AuthErrors, BodyErrors, NotFound),
    security(("api_key" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Json(req): Json<ReplayRequest>,
) -> ApiResult<(StatusCode, axum::Json<Operation>)> {
    let trust = Trust { trust_unsigned: req.trust_unsigned, public_key: req.public_key };
    let op = Maintenance::Replay {
        ledger: req.ledger.into(),
        snapshot: req.from_snapshot.map(Into::into),
        to: req.to,
        trust,
    };
    let op = operations::request_maintenance(&state, &who.actor(), op)?;
    Ok((StatusCode::ACCEPTED, axum::Json(op)))
}

/// Long operations (key rotations, restores, rollbacks, replays), newest first.
#[utoipa::path(get, path = "/api/v1/admin/operations", tag = "admin",
    responses((status = 200, body = Vec<Operation>), AuthErrors), security(("api_key" = [])))]
pub async fn list_operations(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<Vec<Operation>> {
    axum::Json(state.operations().list())
}

/// One long operation: its phase, progress, and result or error.
#[utoipa::path(get, path = "/api/v1/admin/operations/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = Operation), NotFound, AuthErrors), security(("api_key" = [])))]
pub async fn get_operation(
    State(state): State<AppState>,
    _auth: Auth<ReadAccess>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Operation>> {
    match state.operations().get(&id) {
        Some(op) => Ok(axum::Json(op)),
        None => Err(AppError::not_found(format!("no operation {id} (the newest 32 are kept)")).into()),
    }
}

/// Validates keys: the rotation chain, every data key under the current master key, every
/// record readable.
#[utoipa::path(post, path = "/api/v1/admin/key-validation", tag = "admin",
    responses((status = 200, body = daena_app::keyrotate::ValidationReport), AuthErrors), security(("api_key" = [])))]
pub async fn validate_keys(
    State(state): State<AppState>,
    _auth: Auth<OpsOnly>,
) -> ApiResult<axum::Json<daena_app::keyrotate::ValidationReport>> {
    Ok(axum::Json(daena_app::keyrotate::validate(&state).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShredRequest {
    /// The tenant id again: crypto-shredding cannot be undone.
    pub confirm: String,
}

/// Crypto-shreds a tenant: its data keys are destroyed, its cache entries evicted; its records
/// stay sealed and unreadable and the ledger still verifies. Ledgered as `key.shred`.
#[utoipa::path(post, path = "/api/v1/admin/tenants/{tenant}/shred", tag = "admin", request_body = ShredRequest,
    params(("tenant" = String, Path)),
    responses((status = 200, body = daena_app::keyrotate::ShredReport), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn shred_tenant(
    State(state): State<AppState>,
    Auth(who, _): Auth<OpsOnly>,
    Path(tenant): Path<String>,
    Json(req): Json<ShredRequest>,
) -> ApiResult<axum::Json<daena_app::keyrotate::ShredReport>> {
    let tenant = TenantId::new(&tenant).map_err(AppError::from)?;
    Ok(axum::Json(daena_app::keyrotate::shred(&state, &who, &tenant, &req.confirm).await?))
}
