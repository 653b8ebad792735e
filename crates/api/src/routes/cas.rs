//! The LLM cache: the OpenAI-compatible proxy, the cache-aside API and the cache's
//! monitoring routes.

use crate::error::{ApiError, ApiResult, AuthErrors, BodyErrors, ErrorBody, NotFound};
use crate::extract::{AppState, Auth, DataAccess, Json, JsonBytes, ReadAccess};
use crate::routes::memory::AGENT_HEADER;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use daena_app::cas::chat::{self, Body as ChatBody, ChatOptions, FeedbackResult, LookupResult, StoreResult};
use daena_app::cas::report::{self, CasReport, CostReport, Diagnostics};
use daena_app::error::ErrorCode;
use serde::Deserialize;

/// Errors particular to the proxy.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ProxyErrors {
    /// The upstream could not be reached (`upstream_error`).
    #[response(status = 502)]
    Upstream(ErrorBody),
    /// A miss with no upstream configured (`upstream_not_configured`).
    #[response(status = 503)]
    NotConfigured(ErrorBody),
}

/// A request's cache controls, read from its headers in place (a `HeaderMap` extractor
/// would copy every header).
pub struct Options(ChatOptions);

impl<S: Send + Sync> FromRequestParts<S> for Options {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Options(options(&parts.headers)?))
    }
}

/// The request's cache options from its headers; an empty header counts as absent, one that
/// is not text is refused.
fn options(headers: &HeaderMap) -> Result<ChatOptions, ApiError> {
    for name in ["x-daena-class", AGENT_HEADER] {
        if headers.get(name).is_some_and(|v| v.to_str().is_err()) {
            return Err(ApiError::new(ErrorCode::InvalidRequest, format!("{name} is not valid text")));
        }
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let directives: Vec<String> =
        get("cache-control").map(|v| v.split(',').map(|d| d.trim().to_ascii_lowercase()).collect()).unwrap_or_default();
    Ok(ChatOptions {
        no_cache: directives.iter().any(|d| d == "no-cache"),
        no_store: directives.iter().any(|d| d == "no-store"),
        near_off: get("x-daena-near-duplicates").is_some_and(|v| v.eq_ignore_ascii_case("off")),
        class: get("x-daena-class").map(str::to_owned),
        agent: get(AGENT_HEADER).map(str::to_owned),
    })
}

/// OpenAI-compatible chat completions through the cache. `X-Daena-Cache` says `hit`, `near`
/// (with `X-Daena-Distance`), `miss` or `bypass`; `X-Daena-Cache-Key` names the entry for
/// `POST /api/v1/cas/feedback`. `Cache-Control: no-cache` skips the lookup, `no-store` the
/// store; `X-Daena-Near-Duplicates: off` and `X-Daena-Class` control near-duplicate matching.
/// Upstream errors are passed through unchanged and never cached.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "llm",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    params(("Cache-Control" = Option<String>, Header), ("X-Agent-ID" = Option<String>, Header),
           ("X-Daena-Class" = Option<String>, Header), ("X-Daena-Near-Duplicates" = Option<String>, Header)),
    responses((status = 200, description = "a chat completion (JSON) or its event stream", body = Object),
              AuthErrors, BodyErrors, ProxyErrors),
    security(("api_key" = [])))]
pub async fn completions(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Options(opts): Options,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Response> {
    let out = chat::complete(&state, &who, body, opts).await?;
    let mut resp = match out.body {
        ChatBody::Json(v) => axum::Json(v).into_response(),
        ChatBody::JsonBytes(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        ChatBody::Raw { status, content_type, bytes } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        ChatBody::Stream(s) => {
            ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(s))
                .into_response()
        }
    };
    // The analytics middleware reads the outcome from here, typed.
    resp.extensions_mut().insert(out.status);
    let h = resp.headers_mut();
    h.insert("x-daena-cache", HeaderValue::from_static(out.status.as_str()));
    if let daena_app::cas::chat::CacheStatus::Near(d) = out.status
        && let Ok(v) = HeaderValue::from_str(&d.to_string())
    {
        h.insert("x-daena-distance", v);
    }
    if let Some(k) = out.key.and_then(|k| HeaderValue::from_str(&k).ok()) {
        h.insert("x-daena-cache-key", k);
    }
    Ok(resp)
}

/// Cache-aside lookup: the body is a chat completion request; nothing is called upstream.
#[utoipa::path(post, path = "/api/v1/cas/lookup", tag = "llm", request_body(content = Object),
    responses((status = 200, body = LookupResult), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn lookup(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Options(opts): Options,
    Json(request): Json<serde_json::Value>,
) -> ApiResult<axum::Json<LookupResult>> {
    Ok(axum::Json(chat::lookup(&state, &who, request, opts)?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreBody {
    /// The chat completion request.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// The model's chat completion answer (with `usage` for cost tracking).
    #[schema(value_type = Object)]
    pub response: serde_json::Value,
}

/// Cache-aside store: an answer the client got from a model itself.
#[utoipa::path(post, path = "/api/v1/cas/store", tag = "llm", request_body = StoreBody,
    responses((status = 200, body = StoreResult), AuthErrors, BodyErrors), security(("api_key" = [])))]
pub async fn store(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Options(opts): Options,
    Json(body): Json<StoreBody>,
) -> ApiResult<axum::Json<StoreResult>> {
    Ok(axum::Json(chat::store(&state, &who, body.request, body.response, opts).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// `X-Daena-Cache-Key` of the wrong answer.
    pub key: String,
    pub reason: Option<String>,
}

/// Reports a wrong cached answer: the entry is evicted and counted.
#[utoipa::path(post, path = "/api/v1/cas/feedback", tag = "llm", request_body = FeedbackBody,
    responses((status = 200, body = FeedbackResult), AuthErrors, BodyErrors, NotFound), security(("api_key" = [])))]
pub async fn feedback(
    State(state): State<AppState>,
    Auth(who, _): Auth<DataAccess>,
    Json(body): Json<FeedbackBody>,
) -> ApiResult<axum::Json<FeedbackResult>> {
    Ok(axum::Json(chat::feedback(&state, &who, &body.key, body.reason.as_deref()).await?))
}

/// Cache efficiency: requests, exact and near hits, misses, rates, entries, bytes, the
/// threshold in use, guard refusals, false-positive reports, per tenant.
#[utoipa::path(get, path = "/monitoring/memory/cas", tag = "monitoring",
    responses((status = 200, body = CasReport), AuthErrors), security(("api_key" = [])))]
pub async fn monitoring(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<CasReport> {
    axum::Json(report::cas(&state))
}

/// Upstream spend and the savings of hits (never added to spend), by model, tenant, agent, day.
#[utoipa::path(get, path = "/monitoring/memory/cost-tracking", tag = "monitoring",
    responses((status = 200, body = CostReport), AuthErrors), security(("api_key" = [])))]
pub async fn costs(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<CostReport> {
    axum::Json(report::costs(&state))
}

/// Everything `daena cas diagnostics` prints.
#[utoipa::path(get, path = "/api/v1/cas/diagnostics", tag = "llm",
    responses((status = 200, body = Diagnostics), AuthErrors), security(("api_key" = [])))]
pub async fn diagnostics(State(state): State<AppState>, _auth: Auth<ReadAccess>) -> axum::Json<Diagnostics> {
    axum::Json(report::diagnostics(&state))
}
