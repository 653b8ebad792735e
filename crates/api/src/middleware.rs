//! Cross-cutting request handling: per-route metrics, rate limits, agent analytics, timeouts
//! and JSON fallbacks.
//!
//! The per-request steps run as one middleware, [`around`], whose steps are plain async
//! functions awaited one inside the other: each `from_fn` layer would box its future and
//! clone the inner service on every request (docs/PERFORMANCE_NOTES.md, LLM cache, has the cost).

use crate::error::ApiError;
use crate::extract::AppState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use daena_app::error::ErrorCode;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestId, RequestId};

/// `X-Request-ID` for requests that come without one: a random (version 4) UUID from the
/// thread's generator, which, unlike tower-http's `MakeRequestUuid`, makes no system call per
/// request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = request_uuid(rand::random());
        axum::http::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// `bits` as a version 4, variant 1 UUID in its hyphenated form.
fn request_uuid(bits: u128) -> String {
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

/// Every request, outermost first: metrics (`track`), the tenant's rate limit
/// (`rate_limit`), agent analytics (`observe_agents`), then the handler under a timeout
/// (`timeout`).
///
/// The caller is authenticated here, once, and left in the request's extensions
/// ([`crate::extract::Authenticated`]): the rate limit, the analytics step and the handler
/// then check its role instead of digesting and looking the key up again.
///
/// A client address that presented too many unknown or revoked keys gets 429 before its key
/// is looked up ([`daena_app::failed_auth`]); the address is the TCP peer's.
pub async fn around(State(state): State<AppState>, matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if parts.headers.contains_key(crate::extract::API_KEY_HEADER)
        || parts.headers.contains_key(axum::http::header::AUTHORIZATION)
    {
        let peer = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| client_address(c.0.ip(), &parts.headers, &state.config().server.trusted_proxies));
        if let Some(ip) = peer
            && let Err(throttled) = state.governance().failed_auth().check(ip)
        {
            let mut e = daena_app::error::AppError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many unknown or revoked API keys from this address; retry after {} s",
                    throttled.retry_after_secs
                ),
            );
            e.retry_after = Some(throttled.retry_after_secs);
            let response = ApiError(e).into_response();
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            state.monitoring().metrics().observe_http(parts.method.as_str(), route, response.status().as_u16(), 0.0);
            return response;
        }
        // Replicas: first apply what the shared ledger holds, so this request sees every
        // write (and every key, revocation and limit) another replica acknowledged before it.
        if let Err(e) = state.commit().barrier().await {
            let response = ApiError(e).into_response();
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            state.monitoring().metrics().observe_http(parts.method.as_str(), route, response.status().as_u16(), 0.0);
            return response;
        }
        match crate::extract::authenticate(&state, &parts, daena_app::auth::Access::Any) {
            Ok(who) => {
                parts.extensions.insert(crate::extract::Authenticated(who));
            }
            Err(ApiError(e)) if e.code == ErrorCode::Unauthenticated => {
                if let Some(ip) = peer {
                    state.governance().failed_auth().failed(ip);
                }
            }
            Err(_) => {}
        }
    }
    track(&state, matched.as_ref(), Request::from_parts(parts, body), next).await
}

/// The address a request comes from: the peer, unless the peer is a trusted proxy; then the
/// nearest address of `X-Forwarded-For` (read from the right) that is not itself trusted.
/// An entry that is not an address stops the walk at the last trusted hop, so nothing a
/// client writes further left is believed.
pub fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[daena_app::config::TrustedProxy],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|t| t.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let parsed = hop
            .parse::<std::net::IpAddr>()
            .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
            .map(|ip| ip.to_canonical());
        let Ok(ip) = parsed else { return client };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// Counts the request and observes its latency under the matched route template, so the
/// label set stays bounded whatever paths clients send.
async fn track(state: &AppState, matched: Option<&MatchedPath>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let start = Instant::now();
    let response = rate_limit(state, matched, req, next).await;
    let route = matched.map_or("unmatched", MatchedPath::as_str);
    state.monitoring().metrics().observe_http(
        method.as_str(),
        route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Answers 408 `timeout` when a handler runs longer than `server.request_timeout_secs`.
async fn timeout(state: &AppState, req: Request, next: Next) -> Response {
    // A cache miss waits for the upstream model, which has its own (longer) timeout.
    let secs = if req.uri().path() == "/v1/chat/completions" {
        state.config().server.request_timeout_secs.max(state.config().llm.timeout_secs + 5)
    } else {
        state.config().server.request_timeout_secs
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

/// Per-tenant rate limits on every authenticated request: 429 with `Retry-After` when the
/// tenant's burst is spent; `X-RateLimit-Limit` (per minute), `X-RateLimit-Remaining` and
/// `X-RateLimit-Reset` (seconds until the burst is full) on every answer.
async fn rate_limit(state: &AppState, matched: Option<&MatchedPath>, req: Request, next: Next) -> Response {
    use daena_core::gcra::Decision;
    let who = match req.extensions().get::<crate::extract::Authenticated>() {
        Some(crate::extract::Authenticated(who)) if state.governance().limiter().enabled() => who.clone(),
        _ => return observe_agents(state, matched, req, next).await,
    };
    let verdict = state.governance().limiter().check(who.tenant().as_str());
    let secs = |micros: i64| ((micros.max(0) + 999_999) / 1_000_000).to_string();
    let (mut response, remaining, reset) = match verdict.decision {
        Decision::Allow { remaining, reset } => (observe_agents(state, matched, req, next).await, remaining, reset),
        Decision::Deny { retry_after, reset } => {
            let wait = ((retry_after + 999_999) / 1_000_000).max(1) as u64;
            let mut e = daena_app::error::AppError::new(
                ErrorCode::RateLimited,
                format!(
                    "tenant {} exceeded its rate limit ({} requests per minute, burst {}); retry after {wait} s",
                    who.tenant(),
                    verdict.limit.rpm,
                    verdict.limit.burst
                ),
            )
            .with_details(serde_json::json!({"tenant": who.tenant(), "rpm": verdict.limit.rpm, "burst": verdict.limit.burst, "retry_after": wait}));
            e.retry_after = Some(wait);
            (ApiError(e).into_response(), 0, reset)
        }
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", verdict.limit.rpm.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", secs(reset)),
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    response
}

/// Feeds analytics with what the service sees of each agent: memory and LLM calls that carry
/// `X-Agent-ID`, their latency, server-side failures and cache hits.
async fn observe_agents(state: &AppState, matched: Option<&MatchedPath>, req: Request, next: Next) -> Response {
    use daena_app::analytics::Observed;
    let agent = req
        .headers()
        .get("x-agent-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| daena_core::ids::AgentId::new(a.trim()).ok());
    let route = matched.map(MatchedPath::as_str).unwrap_or("");
    let kind = match (req.method().as_str(), route) {
        ("GET", "/api/v1/memory/{class}/{key}") => Some(Observed::MemoryRead),
        ("PUT" | "DELETE", "/api/v1/memory/{class}/{key}") => Some(Observed::MemoryWrite),
        ("POST", "/v1/chat/completions") => Some(Observed::Llm { hit: false }),
        _ => None,
    };
    let (Some(agent), Some(kind)) = (agent, kind) else { return timeout(state, req, next).await };
    let (parts, body) = req.into_parts();
    // A key bound to another agent is refused by the handler; it is not observed either.
    let who = crate::extract::authenticate(state, &parts, daena_app::auth::Access::Data)
        .ok()
        .filter(|w| w.acting_agent(Some(agent.as_str())).is_ok());
    let req = Request::from_parts(parts, body);
    let start = Instant::now();
    let response = timeout(state, req, next).await;
    if let Some(who) = who {
        let kind = match kind {
            Observed::Llm { .. } => Observed::Llm {
                hit: response
                    .extensions()
                    .get::<daena_app::cas::chat::CacheStatus>()
                    .is_some_and(|s| s.served_from_cache()),
            },
            k => k,
        };
        let failed = response.status().is_server_error();
        state.monitoring().analytics().observe(
            who.tenant().as_str(),
            agent.as_str(),
            kind,
            start.elapsed().as_secs_f64() * 1e3,
            failed,
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::request_uuid;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use daena_app::config::LoadedConfig;
    use daena_app::{Daena, OpenOptions};
    use std::time::Duration;
    use tower::ServiceExt;

    /// The real middleware around a handler that takes `x-sleep-secs` seconds (virtual time),
    /// on the request-timeout route and on the chat-completions one.
    fn slow_app(dir: &tempfile::TempDir) -> Router {
        let mut loaded = LoadedConfig::in_dir(dir.path(), None);
        loaded.config.server.request_timeout_secs = 2;
        loaded.config.llm.timeout_secs = 20;
        loaded.config.rate_limit.enabled = false;
        let state = Daena::open(loaded, OpenOptions::offline("test")).expect("open");
        let slow = |headers: axum::http::HeaderMap| async move {
            let secs = headers.get("x-sleep-secs").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            "done"
        };
        Router::new()
            .route("/slow", get(slow))
            .route("/v1/chat/completions", post(slow))
            .layer(axum::middleware::from_fn_with_state(state.clone(), super::around))
            .with_state(state)
    }

    async fn call(app: &Router, method: &str, path: &str, secs: u64) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-sleep-secs", secs.to_string())
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_the_request_timeout_gets_408() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = slow_app(&dir);
        let (code, body) = call(&app, "GET", "/slow", 3).await;
        assert_eq!(code, StatusCode::REQUEST_TIMEOUT, "{body}");
        assert!(body.contains(r#""code":"timeout""#) && body.contains("2 s (server.request_timeout_secs)"), "{body}");
        assert_eq!(call(&app, "GET", "/slow", 1).await, (StatusCode::OK, "done".to_owned()));
        // A cache miss waits for the upstream: its limit is llm.timeout_secs + 5 = 25 s.
        assert_eq!(call(&app, "POST", "/v1/chat/completions", 24).await.0, StatusCode::OK);
        assert_eq!(call(&app, "POST", "/v1/chat/completions", 26).await.0, StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        assert_eq!(request_uuid(0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(request_uuid(u128::MAX), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(request_uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef), "01234567-89ab-4def-8123-456789abcdef");
        let a = request_uuid(rand::random());
        assert_eq!(a.len(), 36);
        assert_ne!(a, request_uuid(rand::random()));
    }
}

#[cfg(test)]
mod forwarded {
    use super::client_address;
    use axum::http::HeaderMap;

    fn resolve(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for v in xff {
            headers.append("x-forwarded-for", v.parse().expect("header"));
        }
        let trusted: Vec<_> = trusted.iter().map(|t| t.parse().expect("proxy")).collect();
        client_address(peer.parse().expect("peer"), &headers, &trusted).to_string()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        // Not from a trusted proxy: the header is the client's own claim and is ignored.
        assert_eq!(resolve("203.0.113.5", &["198.51.100.1"], &["10.0.0.0/8"]), "203.0.113.5");
        // From the load balancer: the address it appended.
        assert_eq!(resolve("10.0.0.2", &["198.51.100.1"], &["10.0.0.0/8"]), "198.51.100.1");
        // A client cannot hide behind a forged entry: the nearest untrusted hop wins.
        assert_eq!(resolve("10.0.0.2", &["1.1.1.1, 198.51.100.1"], &["10.0.0.0/8"]), "198.51.100.1");
        // Two proxies in a row, in one header or several, with ports and IPv6.
        assert_eq!(resolve("10.0.0.2", &["198.51.100.1, 10.0.0.9"], &["10.0.0.0/8"]), "198.51.100.1");
        assert_eq!(resolve("10.0.0.2", &["198.51.100.1:4711", "10.0.0.9"], &["10.0.0.0/8"]), "198.51.100.1");
        assert_eq!(resolve("10.0.0.2", &["2001:db8::7"], &["10.0.0.2"]), "2001:db8::7");
        // Garbage stops the walk at the last trusted hop; no header leaves the peer.
        assert_eq!(resolve("10.0.0.2", &["nonsense, 10.0.0.9"], &["10.0.0.0/8"]), "10.0.0.9");
        assert_eq!(resolve("10.0.0.2", &[], &["10.0.0.0/8"]), "10.0.0.2");
    }
}
