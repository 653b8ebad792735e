//! The simulation's HTTP side: the client each agent talks to Daena through, and the
//! stand-in OpenAI-compatible upstream the simulation starts when none is configured.

use super::*;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the scripted upstream saw.
#[derive(Debug, Default)]
pub(super) struct Upstream {
    pub(super) calls: AtomicU64,
}

/// Starts the scripted OpenAI-compatible upstream: a deterministic answer per prompt, usage
/// from the prompt's length, and ~15 ms of model time.
pub(super) async fn start_upstream(listen: &str) -> anyhow::Result<(Arc<Upstream>, String)> {
    use axum::routing::post;
    let state = Arc::new(Upstream::default());
    let seen = state.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(req): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
                let prompt: String = req["messages"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                let words = prompt.split_whitespace().count() as u64;
                let digest = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::hash::DefaultHasher::new();
                    prompt.hash(&mut h);
                    format!("{:016x}", h.finish())
                };
                axum::Json(json!({
                    "id": format!("chatcmpl-sim-{}", &digest[..12]), "object": "chat.completion",
                    "created": 0, "model": req["model"].clone(),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                        "content": format!("Simulated answer {}: three points on {} words of question.", &digest[..8], words)}}],
                    "usage": {"prompt_tokens": words * 4 / 3 + 8, "completion_tokens": 40,
                              "total_tokens": words * 4 / 3 + 48},
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("the scripted upstream cannot listen on {listen} (choose another with --upstream-listen)")
    })?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((state, format!("http://{addr}/v1")))
}

#[derive(Clone)]
pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) key: String,
    pub(super) tenant: Option<String>,
}

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) cache: Option<String>,
    pub(super) body: Value,
}

impl Client {
    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        agent: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).header("X-API-Key", &self.key);
        if let Some(t) = &self.tenant {
            req = req.header("X-Tenant-ID", t);
        }
        if let Some(a) = agent {
            req = req.header("X-Agent-ID", a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status().as_u16();
        let cache = resp.headers().get("x-daena-cache").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, cache, body })
    }

    /// Sends and records one request of `kind`.
    pub(super) async fn call(
        &self,
        stats: &Stats,
        kind: &'static str,
        method: reqwest::Method,
        path: &str,
        agent: &str,
        body: Option<&Value>,
    ) -> Option<Answer> {
        let t = Instant::now();
        let answer = self.send(method, path, Some(agent), body).await.ok();
        stats.record(kind, answer.as_ref().map(|a| a.status), t.elapsed().as_secs_f64() * 1000.0);
        answer
    }

    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let a = self.send(reqwest::Method::GET, path, None, None).await?;
        if a.status >= 300 {
            bail!("GET {path}: {} {}", a.status, error_text(&a.body));
        }
        Ok(a.body)
    }
}

pub(super) fn error_text(body: &Value) -> String {
    let e = &body["error"];
    match (e["message"].as_str(), e["code"].as_str()) {
        (Some(m), Some(c)) => format!("{m} ({c})"),
        _ => body.to_string(),
    }
}

pub(super) fn chat_request(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are an agent of the fleet. Answer precisely."},
        {"role": "user", "content": prompt}]})
}
