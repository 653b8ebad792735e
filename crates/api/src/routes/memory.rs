//! Memory records: put, get, delete, list, and the trust actions on quarantined records.

use crate::error::{ApiError, ApiResult, AuthErrors, BodyErrors, ErrorBody, NotFound};
use crate::extract::{AppState, Auth, DataAccess, Json, Path, Query};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use daena_app::error::{AppError, ErrorCode};
use daena_app::memory::{self, DeleteResult, ListPage, ListQuery, PutRequest, SystemFields, TrustResult, WriteResult};
use serde::Deserialize;

pub const AGENT_HEADER: &str = "x-agent-id";

/// Errors particular to writes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum WriteErrors {
    /// An ABAC policy denies the operation on this class (`policy_denied`).
    #[response(status = 403)]
    PolicyDenied(ErrorBody),
    /// The overwrite diverges beyond the class's threshold (`divergence_abort`).
    #[response(status = 409)]
    Divergence(ErrorBody),
    /// `If-Match` did not match the current version (`version_conflict`).
    #[response(status = 412)]
    VersionConflict(ErrorBody),
    /// The service is read-only (`writes_disabled`).
    #[response(status = 503)]
    WritesDisabled(ErrorBody),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// A JSON object from the writer: agent id, department, tags, emotion, ...
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    /// Marks an overwrite as an intended revision: no divergence abort, not counted as divergence.
    #[serde(default)]
    pub intended_revision: bool,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("{name} is not valid text"))))
        .transpose()
}

/// A write's `If-Match` and `X-Agent-ID`, read from its headers in place (a `HeaderMap`
/// extractor would copy every header).
pub struct WriteHeaders {
    if_match: Option<u64>,
    agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for WriteHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(WriteHeaders {
            if_match: if_match(&parts.headers)?,
            agent: header_str(&parts.headers, AGENT_HEADER)?.map(str::to_owned),
        })
    }
}

/// `If-Match: 3` or `If-Match: "3"`: the version the caller expects.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match header_str(headers, "if-match")? {
        None => Ok(None),
        Some(v) => v
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .map(Some)
            .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "If-Match must be a record version number")),
    }
}

/// Writes a record. Acknowledged (200 overwrite, 201 create) once its ledger entry is durable.
#[utoipa::path(put, path = "/api/v1/memory/{class}/{key}", tag = "memory", request_body = PutBody,
    params(("class" = String, Path, description = "data class, e.g. chat, legal"),
           ("key" = String, Path, description = "record key within the class"),
           ("If-Match" = Option<String>, Header, description = "expected current version"),
           ("X-Agent-ID" = Option<String>, Header, description = "the writing agent, e.g. legal_synth")),
    responses((status = 200, body = WriteResult), (status = 201, body = WriteResult), AuthErrors, BodyErrors, WriteErrors),
    security(("api_key" = [])))]
pub async fn put(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
    headers: WriteHeaders,
    Json(body): Json<PutBody>,
) -> ApiResult<Response> {
    let req = PutRequest {
        class,
        key,
        payload: body.payload,
        meta: body.meta,
        if_match: headers.if_match,
        intended_revision: body.intended_revision,
        agent: headers.agent,
    };
    let result = memory::put(&state, &who, req).await?;
    let status = if result.created { StatusCode::CREATED } else { StatusCode::OK };
    let etag = HeaderValue::from_str(&format!("\"{}\"", result.record.version)).ok();
    let mut resp = (status, axum::Json(result)).into_response();
    if let Some(e) = etag {
        resp.headers_mut().insert(header::ETAG, e);
    }
    Ok(resp)
}

/// A record as stored, with its system fields.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RecordBody {
    #[serde(flatten)]
    fields: SystemFields,
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    #[schema(value_type = Object)]
    meta: serde_json::Value,
}

/// Reads a record: L1, else L2/L2Q, else L3. `X-Daena-Tier` says which served it.
#[utoipa::path(get, path = "/api/v1/memory/{class}/{key}", tag = "memory",
    params(("class" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = RecordBody), AuthErrors, NotFound), security(("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (view, served) = memory::get(&state, &who, &class, &key)?;
    let body = memory::record_json(&view, served, state.config().memory.trust.promote_threshold);
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", view.meta.version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut().insert("x-daena-tier", HeaderValue::from_static(served));
    Ok(resp)
}

/// Deletes a record (ledgered).
#[utoipa::path(delete, path = "/api/v1/memory/{class}/{key}", tag = "memory",
    params(("class" = String, Path), ("key" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = DeleteResult), AuthErrors, NotFound, WriteErrors), security(("api_key" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
    headers: WriteHeaders,
) -> ApiResult<axum::Json<DeleteResult>> {
    Ok(axum::Json(memory::delete(&state, &who, &class, &key, headers.if_match).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this class.
    pub class: Option<String>,
    /// Only keys starting with this (in every class the key may list, without `class`).
    pub prefix: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<usize>,
}

/// Lists the tenant's records (system fields only), in key order, skipping classes the
/// caller may not list.
#[utoipa::path(get, path = "/api/v1/memory", tag = "memory", params(ListParams),
    responses((status = 200, body = ListPage), AuthErrors), security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Query(q): Query<ListParams>,
) -> ApiResult<axum::Json<ListPage>> {
    let q = ListQuery { class: q.class, prefix: q.prefix, cursor: q.cursor, limit: q.limit };
    Ok(axum::Json(memory::list(&state, &who, q).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The confirming agent (else `X-Agent-ID`, else the key's name).
    pub agent_id: Option<String>,
}

/// A distinct agent confirms a quarantined record; at the promote threshold it moves to L2.
#[utoipa::path(post, path = "/api/v1/memory/{class}/{key}/confirm", tag = "memory",
    params(("class" = String, Path), ("key" = String, Path), ("X-Agent-ID" = Option<String>, Header)),
    request_body(content = Option<ConfirmBody>),
    responses((status = 200, body = TrustResult), AuthErrors, NotFound, WriteErrors), security(("api_key" = [])))]
pub async fn confirm(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<TrustResult>> {
    let body: ConfirmBody = if body.is_empty() {
        ConfirmBody::default()
    } else {
        serde_json::from_slice::<Option<ConfirmBody>>(&body)
            .map_err(|e| AppError::new(ErrorCode::InvalidJson, e.to_string()))?
            .unwrap_or_default()
    };
    let agent = body.agent_id.or(header_str(&headers, AGENT_HEADER)?.map(str::to_owned));
    Ok(axum::Json(memory::confirm(&state, &who, &class, &key, agent.as_deref()).await?))
}

/// A reviewer (ops key or ABAC role `trust.reviewer`) promotes a quarantined record to L2.
#[utoipa::path(post, path = "/api/v1/memory/{class}/{key}/promote", tag = "memory",
    params(("class" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = TrustResult), AuthErrors, NotFound, WriteErrors), security(("api_key" = [])))]
pub async fn promote(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
) -> ApiResult<axum::Json<TrustResult>> {
    Ok(axum::Json(memory::promote(&state, &who, &class, &key).await?))
}

/// A reviewer rejects a quarantined record: it is deleted (ledgered as `memory.reject`).
#[utoipa::path(post, path = "/api/v1/memory/{class}/{key}/reject", tag = "memory",
    params(("class" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = DeleteResult), AuthErrors, NotFound, WriteErrors), security(("api_key" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Path((class, key)): Path<(String, String)>,
) -> ApiResult<axum::Json<DeleteResult>> {
    Ok(axum::Json(memory::reject(&state, &who, &class, &key).await?))
}
