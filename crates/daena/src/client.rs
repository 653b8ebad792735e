//! A small client for a running server's API, used by commands when the data directory is
//! held by `daena serve`.

use anyhow::{Context, anyhow, bail};
use daena_app::operations::{OpState, Operation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Remote {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl Remote {
    pub fn new(base: &str, api_key: &str) -> anyhow::Result<Remote> {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(600)).build().context("building the HTTP client")?;
        Ok(Remote { base: base.trim_end_matches('/').to_owned(), api_key: api_key.to_owned(), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<T> {
        let resp = req
            .header("X-API-Key", &self.api_key)
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("{what}: reading the response"))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    Some(format!(
                        "{} ({})",
                        e.get("message")?.as_str()?,
                        e.get("code").and_then(|c| c.as_str()).unwrap_or("?")
                    ))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{what}: server answered {status}: {detail}");
        }
        serde_json::from_slice(&body).map_err(|e| anyhow!("{what}: unexpected response: {e}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)), &format!("GET {path}")).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body), &format!("POST {path}")).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body), &format!("PUT {path}")).await
    }

    /// A request on behalf of `tenant` (an ops key acting for it with `X-Tenant-ID`).
    pub async fn send_as<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let what = format!("{method} {path}");
        let req = self.http.request(method, format!("{}{path}", self.base)).header("X-Tenant-ID", tenant).json(body);
        self.send(req, &what).await
    }

    pub async fn post_text<T: DeserializeOwned>(&self, path: &str, body: String) -> anyhow::Result<T> {
        let req =
            self.http.post(format!("{}{path}", self.base)).header("content-type", "application/x-ndjson").body(body);
        self.send(req, &format!("POST {path}")).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)), &format!("DELETE {path}")).await
    }
}

impl Remote {
    /// GET without failing on an error status: `(status, body)`, or `None` when the server
    /// cannot be reached (closed for a moment during maintenance).
    async fn try_get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", &self.api_key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// Polls a long operation until it ends, showing its phases (and a progress line on a
    /// terminal); through a maintenance window the phase comes from `/health`.
    pub async fn wait_operation(&self, mut op: Operation) -> anyhow::Result<Operation> {
        let path = format!("/api/v1/admin/operations/{}", segment(&op.id));
        let (mut phase, mut bar) = (String::new(), None::<crate::output::Progress>);
        let mut unreachable_since: Option<std::time::Instant> = None;
        loop {
            if op.phase != phase {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                eprintln!("{} {}: {}", op.kind, op.id, op.phase);
                phase = op.phase.clone();
            }
            if let (Some(total), None) = (op.total, &bar) {
                bar = Some(crate::output::Progress::new(&op.phase, Some(total)));
            }
            if let Some(b) = &mut bar {
                b.set(op.done);
            }
            if op.state != OpState::Running {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                return Ok(op);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            match self.try_get(&path).await {
                Some((200, v)) => {
                    op = serde_json::from_value(v).map_err(|e| anyhow!("GET {path}: unexpected response: {e}"))?;
                    unreachable_since = None;
                }
                Some((404, _)) => bail!(
                    "the server no longer knows operation {} (did it restart?); see its log and                      GET /api/v1/admin/operations",
                    op.id
                ),
                other => {
                    if let Some((503, _)) = &other
                        && let Some((_, health)) = self.try_get("/health").await
                        && let Some(p) = health["operation"]["phase"].as_str()
                    {
                        op.phase = p.to_owned();
                    }
                    let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                    if other.is_none() && since.elapsed() > Duration::from_secs(600) {
                        bail!("{} has not answered for 10 minutes during operation {}", self.base, op.id);
                    }
                }
            }
        }
    }
}

/// The report of a finished operation, or its error.
pub fn finished<T: serde::de::DeserializeOwned>(op: Operation) -> anyhow::Result<T> {
    match (op.state, op.result) {
        (OpState::Succeeded, Some(v)) => Ok(serde_json::from_value(v)?),
        _ => bail!("{} {} failed: {}", op.kind, op.id, op.error.unwrap_or_else(|| "no result".to_owned())),
    }
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
