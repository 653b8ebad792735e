//! Replicas of one deployment on PostgreSQL (and Redis), as `daena serve` processes.

use super::{Server, call, client};
use daena_store::pg::TestDatabase;
use reqwest::Method;
use serde_json::json;
use std::path::Path;

pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// One deployment: its database, the path its replicas share for cold segments, and a data
/// directory per replica.
pub struct Deployment {
    pub db: TestDatabase,
    pub shared: tempfile::TempDir,
    pub dirs: Vec<tempfile::TempDir>,
}

impl Deployment {
    pub fn new(replicas: usize) -> Deployment {
        let dirs = (0..replicas).map(|_| tempfile::tempdir().expect("data dir")).collect();
        Deployment { db: TestDatabase::create(), shared: tempfile::tempdir().expect("shared dir"), dirs }
    }

    /// Runs `sql` on the deployment's database.
    pub fn execute(&self, sql: &str) {
        self.db.execute(sql);
    }

    /// Starts (or restarts) replica `i` on its data directory.
    pub fn start(&self, i: usize, redis: bool) -> Server {
        replica(self.dirs[i].path(), &self.db, self.shared.path(), redis, &[])
    }
}

pub fn replica(dir: &Path, db: &TestDatabase, shared: &Path, redis: bool, extra: &[(&str, &str)]) -> Server {
    let l3 = shared.join("l3").display().to_string();
    let mut env = vec![
        ("DAENA_STORAGE_BACKEND", "postgres"),
        ("DAENA_STORAGE_POSTGRES_URL", db.url.as_str()),
        ("DAENA_STORAGE_L3_PATH", l3.as_str()),
        ("DAENA_RATE_LIMIT_ENABLED", "true"),
    ];
    if redis {
        env.push(("DAENA_STORAGE_REDIS_URL", REDIS));
    }
    env.extend_from_slice(extra);
    Server::start(dir, &env)
}

pub async fn put(url: &str, key: &str, v: &str) -> u16 {
    let body = json!({"payload": {"v": v}});
    call(Method::PUT, &format!("{url}/api/v1/memory/chat/{key}"), Some("acme"), Some(&body)).await.0
}

pub async fn get(url: &str, key: &str) -> (u16, serde_json::Value) {
    call(Method::GET, &format!("{url}/api/v1/memory/chat/{key}"), Some("acme"), None).await
}

pub async fn with_key(method: Method, url: &str, key: &str) -> u16 {
    client().request(method, url).header("X-API-Key", key).send().await.expect("request").status().as_u16()
}
