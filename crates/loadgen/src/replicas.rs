//! One replica on the embedded backend against one and two replicas on PostgreSQL + Redis,
//! in the same run: memory PUT, memory GET and exact cache hits. Each replica runs in this
//! process on its own data directory; the replicas on PostgreSQL share a throwaway database
//! and the client spreads its connections over them, as a load balancer would.

use crate::Common;
use crate::client::{self, MakeRequest};
use crate::scenarios::{KEY, Running, payload, start};
use bytes::Bytes;
use daena_app::config::StorageBackend;
use std::sync::Arc;

/// Records written before the GET runs, read back at random.
const RECORDS: u64 = 20_000;

async fn replicas(n: usize, postgres: Option<&str>, redis: &str) -> anyhow::Result<Vec<Running>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            start(|c| {
                if let Some(url) = postgres {
                    c.storage.backend = StorageBackend::Postgres;
                    c.storage.postgres_url = Some(url.to_owned());
                    c.storage.redis_url = Some(redis.to_owned());
                }
            })
            .await?,
        );
    }
    Ok(out)
}

/// Shuts a set down before its data directories go: a dropped set's commit threads would go
/// on in the background of the next measurement, failing to write into removed directories.
async fn stop(set: Vec<Running>) -> anyhow::Result<()> {
    for r in set {
        r.stop().await?;
    }
    Ok(())
}

fn put_requests(tag: &'static str) -> MakeRequest {
    Arc::new(move |worker, n| {
        let body = serde_json::json!({"payload": payload(n)}).to_string();
        client::request("PUT", &format!("/api/v1/memory/chat/{tag}-{worker}-{n}"), KEY, Some(Bytes::from(body)))
    })
}

fn get_requests() -> MakeRequest {
    Arc::new(|worker, n| {
        let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        client::request("GET", &format!("/api/v1/memory/chat/k{}", (x >> 11) % RECORDS), KEY, None)
    })
}

fn chat() -> (serde_json::Value, serde_json::Value) {
    let request = serde_json::json!({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "user", "content": "Summarize the Q3 revenue report for the board in five bullet points."}]});
    let answer = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Revenue grew 12% year over year."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}});
    (request, answer)
}

/// Runs every measurement against one set of replicas and prints a line each.
async fn measure(label: &str, set: &[Running], c: &Common) -> anyhow::Result<[f64; 3]> {
    let addrs: Vec<_> = set.iter().map(|r| r.addr).collect();
    let put = client::run_spread(&addrs, c.concurrency, c.warmup, c.seconds, put_requests("w")).await?;
    println!("{}", put.line(&format!("{label}: PUT, new records")));
    // Seed the GET key space through the first replica, then read it at random through all.
    crate::scenarios::seed(&set[0].daena, RECORDS).await?;
    let get = client::run_spread(&addrs, c.concurrency, c.warmup, c.seconds, get_requests()).await?;
    println!("{}", get.line(&format!("{label}: GET, {RECORDS} records")));
    let (request, answer) = chat();
    let who = crate::scenarios::principal(&set[0].daena, daena_app::auth::Access::Data)?;
    daena_app::cas::chat::store(&set[0].daena, &who, request.clone(), answer, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let body = Bytes::from(request.to_string());
    let make: MakeRequest =
        Arc::new(move |_, _| client::request("POST", "/v1/chat/completions", KEY, Some(body.clone())));
    let hits = client::run_spread(&addrs, c.concurrency, c.warmup, c.seconds, make).await?;
    println!("{}", hits.line(&format!("{label}: exact cache hits")));
    for (what, r) in [("PUT", &put), ("GET", &get), ("hits", &hits)] {
        if r.errors > 0 {
            println!("  {label} {what}: {} answers were not 2xx", r.errors);
        }
    }
    Ok([put.rate(), get.rate(), hits.rate()])
}

pub async fn run(c: &Common, redis: &str) -> anyhow::Result<()> {
    println!("replicas, concurrency {}: embedded ×1, then PostgreSQL + Redis ×1 and ×2 (same database)", c.concurrency);
    let embedded = replicas(1, None, redis).await?;
    let e = measure("embedded ×1", &embedded, c).await?;
    stop(embedded).await?;
    let db1 = daena_store::pg::TestDatabase::create();
    let one = replicas(1, Some(&db1.url), redis).await?;
    let p1 = measure("postgres ×1", &one, c).await?;
    stop(one).await?;
    let db2 = daena_store::pg::TestDatabase::create();
    let two = replicas(2, Some(&db2.url), redis).await?;
    let p2 = measure("postgres ×2", &two, c).await?;
    stop(two).await?;
    let ratio = |a: &[f64; 3], i: usize| a[i] / e[i];
    for (name, i) in [("PUT", 0), ("GET", 1), ("exact hits", 2)] {
        println!("{name}: postgres ×1 / embedded {:.2}, postgres ×2 / embedded {:.2}", ratio(&p1, i), ratio(&p2, i));
    }
    Ok(())
}
