//! Reads on a replica skip the barrier's PostgreSQL read when the chain head in Redis says the
//! replica is current, and never miss a write another replica acknowledged without publishing
//! its head: neither a replica whose Redis is down nor one without Redis at all.

mod common;

use common::call;
use common::replicas::{Deployment, REDIS, get, put, replica};
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Requests the replica at `url` let through on Redis's head, and after the barrier.
async fn read_checks(url: &str) -> (u64, u64) {
    let r =
        common::client().get(format!("{url}/metrics")).header("X-API-Key", common::OPS).send().await.expect("metrics");
    let text = r.text().await.expect("text");
    let value = |result: &str| {
        let prefix = format!("daena_replica_read_checks{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().expect("a count"))
    };
    (value("redis_head"), value("barrier"))
}

/// Reads through `url` until one is let through on Redis's head (the fence over it is lowered
/// a few seconds after the last batch that raised it).
async fn until_reads_trust_redis(url: &str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = read_checks(url).await.0;
        for _ in 0..5 {
            get(url, "probe").await;
        }
        if read_checks(url).await.0 > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: reads never trusted the head in Redis: {:?}",
            read_checks(url).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_trust_the_head_in_redis_only_when_no_write_could_be_missing() {
    let deployment = Deployment::new(3);
    let dead = "redis://127.0.0.1:1/";
    let dir = |i: usize| deployment.dirs[i].path();
    // A's Redis does not answer (it cannot publish its batches' head); B's does.
    let a = replica(dir(0), &deployment.db, deployment.shared.path(), false, &[("DAENA_STORAGE_REDIS_URL", dead)]);
    let b = replica(dir(1), &deployment.db, deployment.shared.path(), false, &[("DAENA_STORAGE_REDIS_URL", REDIS)]);

    let roomy = serde_json::json!({"rpm": 1_000_000, "burst": 100_000});
    let set = call(Method::PUT, &format!("{}/api/v1/tenant-rate-limit/acme", b.url), None, Some(&roomy)).await;
    assert_eq!(set.0, 200, "{}", set.1);

    // Writes through B publish their head: once the fence a new deployment starts with is
    // down, B answers its reads on Redis's head, and reads through B see B's writes.
    assert_eq!(put(&b.url, "warm", "b").await, 201);
    until_reads_trust_redis(&b.url, "start").await;
    assert_eq!(get(&b.url, "warm").await.1["payload"]["v"], "b");

    // Every write through A, read through B at once: A raised the fence (and waited out B's
    // lease) before acknowledging, so B asks PostgreSQL instead of trusting the stale head.
    for round in 0..3 {
        let key = format!("from-a-{round}");
        assert_eq!(put(&a.url, &key, "a").await, 201);
        let (status, v) = get(&b.url, &key).await;
        assert_eq!((status, v["payload"]["v"].as_str()), (200, Some("a")), "round {round}: B missed A's write: {v}");
        let deleted = call(Method::DELETE, &format!("{}/api/v1/memory/chat/{key}", a.url), Some("acme"), None).await;
        assert_eq!(deleted.0, 200, "{}", deleted.1);
        assert_eq!(get(&b.url, &key).await.0, 404, "round {round}: B served a record A deleted");
    }
    let (_, by_barrier) = read_checks(&b.url).await;
    assert!(by_barrier > 0, "B's reads after A's writes went through the barrier");
    let health = call(Method::GET, &format!("{}/health", b.url), None, None).await.1.to_string();
    assert!(health.contains("the fence over the chain head in Redis is up"), "{health}");

    // A replica without Redis at all keeps the fence up the same way.
    let c = replica(dir(2), &deployment.db, deployment.shared.path(), false, &[]);
    drop(a);
    until_reads_trust_redis(&b.url, "after A").await;
    assert_eq!(put(&c.url, "from-c", "c").await, 201);
    assert_eq!(get(&b.url, "from-c").await.1["payload"]["v"], "c", "B missed the write through C");

    // With every writer on Redis again the fence comes down and stays down: B's own writes
    // and reads keep to Redis's head.
    drop(c);
    until_reads_trust_redis(&b.url, "after C").await;
    let before = read_checks(&b.url).await;
    for i in 0..20 {
        assert_eq!(put(&b.url, &format!("b-{i}"), "b").await, 201);
        assert_eq!(get(&b.url, &format!("b-{i}")).await.0, 200);
    }
    let after = read_checks(&b.url).await;
    assert!(after.0 >= before.0 + 20, "B's reads of its own writes trusted Redis: {before:?} → {after:?}");
    let health = call(Method::GET, &format!("{}/health", b.url), None, None).await.1.to_string();
    assert!(health.contains("reads skip the barrier when the chain head in Redis says"), "{health}");

    // A Redis that lost the head (restarted empty): reads take the barrier until a replica
    // publishes the chain's newest position again, with no write needed.
    let deployment_id = health.split("(deployment ").nth(1).and_then(|t| t.split(',').next()).expect("deployment id");
    let size = |v: Value| v["size"].as_u64().expect("size");
    let before = size(call(Method::GET, &format!("{}/api/v1/ledger/head", b.url), None, None).await.1);
    let mut redis = redis::Client::open(REDIS).and_then(|c| c.get_connection()).expect("redis");
    let removed: i64 = redis::cmd("DEL").arg(format!("daena:{deployment_id}:head")).query(&mut redis).expect("del");
    assert_eq!(removed, 1, "the head was kept under the deployment's prefix");
    until_reads_trust_redis(&b.url, "after Redis lost the head").await;
    let head: Option<u64> =
        redis::cmd("GET").arg(format!("daena:{deployment_id}:head")).query(&mut redis).expect("get");
    let after = size(call(Method::GET, &format!("{}/api/v1/ledger/head", b.url), None, None).await.1);
    assert!(head.is_some_and(|h| (before..=after).contains(&h)), "published again: {head:?}, chain {before}..{after}");
}
