//! Daena's HTTP API. [`router`] builds the axum router with its middleware stack and the
//! OpenAPI document generated from the handlers; [`serve`] runs it until shutdown.

mod doc_rules;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod routes;
pub mod serve;

use crate::extract::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Daena",
        description = "Memory, LLM cache and governance for fleets of AI agents. Every error answers \
                       `{\"error\": {\"code\", \"message\"}}` with a stable code.",
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(error::ErrorBody, daena_app::error::ErrorCode)),
    tags(
        (name = "system", description = "health, metrics, this document"),
        (name = "agents", description = "the 6x8 agent registry"),
        (name = "admin", description = "keys and switches (ops keys)"),
        (name = "ledger", description = "the Merkle ledger: head, entries, proofs, checkpoints"),
        (name = "memory", description = "records in three tiers, with trust and quarantine"),
        (name = "monitoring", description = "the runbook's monitoring routes"),
        (name = "analytics", description = "fleet analytics"),
        (name = "limits", description = "per-tenant rate limits"),
        (name = "llm", description = "the LLM cache: OpenAI-compatible proxy and cache-aside API"),
    )
)]
struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// The routes and the OpenAPI document they describe.
fn api_routes() -> OpenApiRouter<AppState> {
    use routes::{admin, agents, analytics, cas, dashboard, ledger, memory, monitoring, ratelimit, system};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(agents::list))
        .routes(routes!(agents::structure))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(admin::create_key, admin::list_keys))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::get_writes, admin::set_writes))
        .routes(routes!(admin::run_aging))
        .routes(routes!(admin::create_snapshot, admin::list_snapshots))
        .routes(routes!(admin::record_drill))
        .routes(routes!(admin::last_drill))
        .routes(routes!(admin::key_status))
        .routes(routes!(admin::export_archive))
        .routes(routes!(admin::rotate_key))
        .routes(routes!(admin::validate_keys))
        .routes(routes!(admin::shred_tenant))
        .routes(routes!(admin::reseal_keys))
        .routes(routes!(admin::restore))
        .routes(routes!(admin::rollback))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::list_operations))
        .routes(routes!(admin::get_operation))
        .routes(routes!(memory::put, memory::get, memory::delete))
        .routes(routes!(memory::list))
        .routes(routes!(memory::confirm))
        .routes(routes!(memory::promote))
        .routes(routes!(memory::reject))
        .routes(routes!(monitoring::memory))
        .routes(routes!(dashboard::series))
        .routes(routes!(cas::completions))
        .routes(routes!(cas::lookup))
        .routes(routes!(cas::store))
        .routes(routes!(cas::feedback))
        .routes(routes!(cas::monitoring))
        .routes(routes!(cas::costs))
        .routes(routes!(cas::diagnostics))
        .routes(routes!(analytics::interactions))
        .routes(routes!(analytics::summary))
        .routes(routes!(analytics::anomalies))
        .routes(routes!(analytics::efficiency))
        .routes(routes!(analytics::patterns))
        .routes(routes!(ratelimit::stats))
        .routes(routes!(ratelimit::status))
        .routes(routes!(ratelimit::set, ratelimit::remove))
        .routes(routes!(ledger::head))
        .routes(routes!(ledger::entries))
        .routes(routes!(ledger::inclusion))
        .routes(routes!(ledger::consistency))
        .routes(routes!(ledger::checkpoint))
        .routes(routes!(ledger::manifest))
        .routes(routes!(ledger::last_verification, ledger::verify_now))
        .routes(routes!(ledger::import_legacy).layer(DefaultBodyLimit::max(ledger::LEGACY_BODY_LIMIT)))
}

/// The OpenAPI document as JSON, with the limits of [`doc_rules`].
pub fn openapi_json() -> String {
    let (_, doc) = api_routes().split_for_parts();
    document(&doc)
}

fn document(doc: &utoipa::openapi::OpenApi) -> String {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    doc_rules::apply(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| "{}".to_owned())
}

/// The whole HTTP application over `state`.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api_routes().split_for_parts();
    let doc = Arc::new(document(&doc));
    let request_id = HeaderName::from_static("x-request-id");
    let body_limit = state.config().server.request_body_limit_bytes;
    // One layer, so each route is boxed once around the whole stack: every `Router::layer`
    // call boxes each route again, and a request clones each box it passes.
    let stack = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), middleware::RequestIds))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::around))
        .layer(CatchPanicLayer::custom(middleware::panic_response as fn(_) -> _))
        .layer(axum::Extension(doc))
        .layer(DefaultBodyLimit::max(body_limit));
    routes
        .route("/dashboard", axum::routing::get(routes::dashboard::page))
        .route("/dashboard/app.js", axum::routing::get(routes::dashboard::script))
        .route("/dashboard/app.css", axum::routing::get(routes::dashboard::style))
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(stack)
        .with_state(state)
}

/// What `daena serve` answers on its port while a restore, rollback or replay has the stores
/// closed: `/health` says `maintenance` with the operation's phase (no authentication, so no
/// more than kind, id and phase), every other route 503 `unavailable` with `Retry-After`.
pub fn maintenance_router(
    ops: Arc<daena_app::operations::Operations>,
    keys: Arc<daena_app::auth::FrozenKeys>,
) -> Router {
    use axum::response::IntoResponse;
    let health_ops = ops.clone();
    let health = move || {
        let ops = health_ops.clone();
        async move {
            let op = ops.running().map(|o| serde_json::json!({"id": o.id, "kind": o.kind, "phase": o.phase}));
            let body = serde_json::json!({"status": "maintenance", "operation": op});
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    };
    let unavailable = move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| {
        let (ops, keys) = (ops.clone(), keys.clone());
        async move {
            // Every route but /health needs a key: a caller without a valid one (as the keys
            // were when the window opened) gets 401 and learns nothing of the operation.
            let checked = extract::presented_key(&headers).map_err(|e| e.0).and_then(|key| keys.check(key));
            if let Err(e) = checked {
                return error::ApiError(e).into_response();
            }
            let what = ops
                .running()
                .map_or_else(|| "maintenance".to_owned(), |o| format!("{} {} ({})", o.kind, o.id, o.phase));
            // Starting another operation while one runs conflicts, as it does while open.
            let starts = ["/api/v1/admin/restores", "/api/v1/admin/rollbacks", "/api/v1/admin/replays"];
            if method == axum::http::Method::POST && starts.contains(&uri.path()) {
                let e = daena_app::error::AppError::new(
                    daena_app::error::ErrorCode::Conflict,
                    format!("another operation is running: {what}"),
                );
                return error::ApiError(e).into_response();
            }
            let mut e = daena_app::error::AppError::new(
                daena_app::error::ErrorCode::Unavailable,
                format!("the server is closed for maintenance: {what}; retry shortly"),
            );
            e.retry_after = Some(2);
            error::ApiError(e).into_response()
        }
    };
    Router::new().route("/health", axum::routing::get(health)).fallback(unavailable)
}

/// The log filter when `DAENA_LOG` is unset: `info`, and tower-http only from `warn`.
pub const LOG_FILTER: &str = "info,tower_http=warn";

/// Logs to stderr in `format`, filtered by `DAENA_LOG` (else [`LOG_FILTER`]). Each request
/// runs in a `request` span (method, path, request id), so every line a handler logs carries
/// its request id. `daena serve` and the load generator both log this way, so the load
/// numbers include the span each request pays for.
pub fn init_logging(format: daena_app::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAENA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        daena_app::config::LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        daena_app::config::LogFormat::Text => builder.try_init(),
    };
}

pub use serve::{NoDelay, no_delay, serve, serve_metrics};
