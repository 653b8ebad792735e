//! Shared helpers for the in-process API tests: a fresh data directory, a manual clock and
//! the router driven with `oneshot`.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use daena_app::clock::ManualClock;
use daena_app::config::{Config, LoadedConfig, Secret, Secrets};
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
        edit(&mut config);
        config.validate().expect("test config is valid");
        let clock = ManualClock::new(Micros(1_800_000_000_000_000));
        let loaded = LoadedConfig {
            config,
            secrets: Secrets { ops_key: Some(Secret::new(OPS)), ..Secrets::default() },
            files: Vec::new(),
            config_dir: dir.path().join("config"),
        };
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
