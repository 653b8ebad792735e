//! Shared helpers for the in-process API tests: a fresh data directory, a manual clock and
//! the router driven with `oneshot`.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use daena_app::clock::ManualClock;
use daena_app::config::{Config, LoadedConfig};
use daena_app::{Daena, OpenOptions};
use daena_core::time::Micros;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

pub const OPS: &str = "ops-key";

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub daena: Arc<Daena>,
    pub clock: Arc<ManualClock>,
    pub router: axum::Router,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestApp {
    pub fn new() -> TestApp {
        Self::with_config(|_| {})
    }

    pub fn with_config(edit: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        // The clock stands still in these tests, so a rate limit would never refill; the
        // rate-limit tests turn it back on.
        config.rate_limit.enabled = false;
        edit(&mut config);
        config.validate().expect("test config is valid");
        let clock = ManualClock::new(Micros(1_800_000_000_000_000));
        TestApp::open(dir, config, clock)
    }

    fn loaded(dir: &tempfile::TempDir, config: Config) -> LoadedConfig {
        LoadedConfig { config, ..LoadedConfig::in_dir(dir.path(), Some(OPS)) }
    }

    /// Opens the service on `dir` with `config` and the ops key, on `clock`.
    fn open(dir: tempfile::TempDir, config: Config, clock: Arc<ManualClock>) -> TestApp {
        let loaded = TestApp::loaded(&dir, config);
        let opts = OpenOptions { clock: Some(clock.clone()), ..OpenOptions::offline("test") };
        let daena = Daena::open(loaded, opts).expect("open daena");
        let router = daena_api::router(daena.clone());
        TestApp { dir, daena, clock, router }
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.expect("router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
        Resp { status, headers, body }
    }

    pub async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        self.call_as(method, path, key, None, body).await
    }

    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        tenant: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(t) = tenant {
            req = req.header("x-tenant-id", t);
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    /// Creates a key through the admin API and returns its text.
    pub async fn key(&self, name: &str, role: &str, tenant: &str, roles: &[&str]) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/admin/keys",
                Some(OPS),
                Some(serde_json::json!({"name": name, "role": role, "tenant": tenant, "roles": roles})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.json()["key"].as_str().expect("key text").to_owned()
    }
}

/// The operator key's principal with data access, for calling the use cases in process.
pub fn ops(d: &Daena) -> daena_app::auth::Principal {
    d.governance().api_keys().authenticate(Some(OPS), None, daena_app::auth::Access::Data).expect("ops key")
}

/// A small OpenAI-compatible upstream for tests: answers `answer: <last user message>` with
/// fixed usage, streams when asked, fails with 500 when the message contains "FAIL", and
/// counts its calls.
pub struct FakeUpstream {
    pub url: String,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        use axum::routing::post;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |axum::Json(req): axum::Json<Value>| {
                let counter = counter.clone();
                async move {
                    use axum::response::IntoResponse;
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let last = req["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("").to_owned();
                    if last.contains("FAIL") {
                        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({"error": {"message": "upstream exploded"}}))).into_response();
                    }
                    let content = format!("answer: {last}");
                    let usage = serde_json::json!({"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150});
                    let model = req["model"].clone();
                    if req["stream"] == true {
                        let mut events = Vec::new();
                        let chunk = |delta: Value, finish: Value| serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                        events.push(chunk(serde_json::json!({"role": "assistant", "content": ""}), Value::Null));
                        for piece in content.as_bytes().chunks(5) {
                            events.push(chunk(serde_json::json!({"content": String::from_utf8_lossy(piece)}), Value::Null));
                        }
                        events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
                        let mut last_chunk = chunk(serde_json::json!({}), Value::Null);
                        last_chunk["choices"] = serde_json::json!([]);
                        last_chunk["usage"] = usage;
                        events.push(last_chunk);
                        let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                        body.push_str("data: [DONE]\n\n");
                        return ([("content-type", "text/event-stream")], body).into_response();
                    }
                    axum::Json(serde_json::json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                        "usage": usage,
                    }))
                    .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeUpstream { url: format!("http://{addr}/v1"), calls }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl TestApp {
    /// Stops the service (as at shutdown) and opens it again on the same data directory.
    pub async fn reopen(self, edit: impl FnOnce(&mut Config)) -> TestApp {
        let TestApp { dir, daena, clock, router } = self;
        daena.shutdown().await.expect("shutdown");
        drop(router);
        let mut config = daena.config().as_ref().clone();
        edit(&mut config);
        drop(daena);
        TestApp::open(dir, config, clock)
    }

    /// Stops the service, runs `f` on the stopped data directory (an offline command), and
    /// opens the service again.
    pub async fn offline<R>(self, f: impl FnOnce(&LoadedConfig) -> R) -> (TestApp, R) {
        let TestApp { dir, daena, clock, router } = self;
        daena.shutdown().await.expect("shutdown");
        drop(router);
        let config = daena.config().as_ref().clone();
        drop(daena);
        let result = f(&TestApp::loaded(&dir, config.clone()));
        (TestApp::open(dir, config, clock), result)
    }
}
