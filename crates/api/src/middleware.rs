//! Cross-cutting request handling: per-route metrics, timeouts and JSON fallbacks.

use crate::error::ApiError;
use crate::extract::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use daena_app::error::ErrorCode;
use std::time::{Duration, Instant};

/// Counts the request and observes its latency under the matched route template, so the
/// label set stays bounded whatever paths clients send.
pub async fn track(State(state): State<AppState>, matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str).to_owned();
    let start = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe_http(&method, &route, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// Answers 408 `timeout` when a handler runs longer than `server.request_timeout_secs`.
pub async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // A cache miss waits for the upstream model, which has its own (longer) timeout.
    let secs = if req.uri().path() == "/v1/chat/completions" {
        state.config.server.request_timeout_secs.max(state.config.llm.timeout_secs + 5)
    } else {
        state.config.server.request_timeout_secs
    };
    let limit = Duration::from_secs(secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request took longer than {} s (server.request_timeout_secs)", limit.as_secs()),
        )
        .into_response(),
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", req.method(), req.uri().path()))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

/// Turns a panic inside a handler into a logged 500 with the JSON error shape.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned());
    ApiError::new(ErrorCode::Internal, format!("handler panicked: {detail}")).into_response()
}
