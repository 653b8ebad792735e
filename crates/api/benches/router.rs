//! The server's CPU per request without the network: requests driven through the whole
//! router (request id, tracing, metrics, rate limit, analytics, timeout, body limit,
//! handler) in process, one at a time. Loopback TCP and the load client dominate the HTTP
//! load runs and swing with the machine; this isolates what Daena's own stack costs.
//!
//! Run: `cargo bench -p daena-api --bench router`

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use daena_app::config::LoadedConfig;
use daena_app::{Daena, OpenOptions};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

const KEY: &str = "bench-ops-key";

fn request(method: &str, path: &str, body: Option<String>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = LoadedConfig::in_dir(dir.path(), Some(KEY));
    loaded.config.memory.aging.interval_minutes = 0;
    loaded.config.rate_limit.enabled = false;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let d = rt.block_on(async { Daena::open(loaded, OpenOptions::offline("bench")) }).expect("open");
    let router = daena_api::router(d.clone());
    let send = |req: Request<Body>| {
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let _ = resp.into_body().collect().await.expect("body");
            status
        }
    };
    let chat = json!({"model": "gpt-test", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are the finance department's assistant."},
        {"role": "user", "content": "Summarize the Q3 revenue report for the board in five bullet points."}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Revenue grew 12%."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5}});
    rt.block_on(async {
        let body = json!({"request": chat, "response": answer}).to_string();
        assert!(send(request("POST", "/api/v1/cas/store", Some(body))).await.is_success());
        let body = json!({"payload": {"text": "Customer asked about invoice 42."}}).to_string();
        assert!(send(request("PUT", "/api/v1/memory/chat/k1", Some(body))).await.is_success());
    });
    let chat = chat.to_string();
    let rows = |c: &mut Criterion, how: &str| {
        c.bench_function(&format!("POST /v1/chat/completions, exact hit, {how}"), |b| {
            b.iter(|| rt.block_on(send(request("POST", "/v1/chat/completions", Some(chat.clone())))))
        });
        c.bench_function(&format!("GET /api/v1/memory/chat/k1, L1 hit, {how}"), |b| {
            b.iter(|| rt.block_on(send(request("GET", "/api/v1/memory/chat/k1", None))))
        });
    };
    rows(c, "in process");
    // `daena serve` logs through a fmt subscriber at `info`, so every request span is
    // recorded; the rows above run with no subscriber. Same filter, output discarded.
    let logging = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(daena_api::LOG_FILTER))
        .with_ansi(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(logging, || rows(c, "serve's logging"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
