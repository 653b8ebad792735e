//! A small client for a running server's API, used by commands when the data directory is
//! held by `daena serve`.

use anyhow::{Context, anyhow, bail};
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

    /// PUT on behalf of `tenant` (an ops key acting for it with `X-Tenant-ID`).
    pub async fn put_as<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        tenant: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let req = self.http.put(format!("{}{path}", self.base)).header("X-Tenant-ID", tenant).json(body);
        self.send(req, &format!("PUT {path}")).await
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
