//! Two real `daena serve` replicas on one PostgreSQL (and Redis) behave as one service:
//! read-your-write across replicas, no stale L1 after another replica's delete or overwrite,
//! keys and revocations in effect everywhere, a tenant limit that holds for the fleet, one
//! ledger that verifies, and no acknowledged write lost when a replica is killed mid-burst.
//! Reports through any replica count what every replica observed.

mod common;

use common::replicas::{Deployment, get, put, replica, with_key};
use common::{OPS, call, client};
use daena_store::pg::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behave_as_one_service() {
    let deployment = Deployment::new(2);
    let a = deployment.start(0, true);
    let b = deployment.start(1, true);

    // A write through A reads through B; a delete or an overwrite through B is never served
    // from A's L1, with no pause between them.
    assert_eq!(put(&a.url, "r1", "from-a").await, 201);
    assert_eq!(get(&a.url, "r1").await.1["payload"]["v"], "from-a", "A reads its write (and caches it)");
    assert_eq!(get(&b.url, "r1").await.1["payload"]["v"], "from-a", "B reads A's write");
    assert_eq!(put(&b.url, "r1", "from-b").await, 200);
    assert_eq!(get(&a.url, "r1").await.1["payload"]["v"], "from-b", "A serves B's overwrite, not its L1");
    assert_eq!(call(Method::DELETE, &format!("{}/api/v1/memory/chat/r1", b.url), Some("acme"), None).await.0, 200);
    assert_eq!(get(&a.url, "r1").await.0, 404, "A serves B's delete, not its L1");

    // A key made through A works through B; revoked through B, A refuses it at once.
    let made = client()
        .post(format!("{}/api/v1/admin/keys", a.url))
        .header("X-API-Key", OPS)
        .json(&json!({"name": "tiny-bot", "role": "agent", "tenant": "tiny"}))
        .send()
        .await
        .expect("create key");
    assert_eq!(made.status().as_u16(), 201);
    let made: serde_json::Value = made.json().await.expect("json");
    let (token, id) = (made["key"].as_str().expect("key").to_owned(), made["id"].as_str().expect("id").to_owned());
    let beat = |url: &str| format!("{url}/api/v1/agents/sales_synth/heartbeat");
    assert_eq!(with_key(Method::POST, &beat(&b.url), &token).await, 200, "B knows A's new key");

    // A tenant's limit holds for the sum of both replicas (within one burst of refill).
    let body = json!({"rpm": 60, "burst": 10});
    let set = call(Method::PUT, &format!("{}/api/v1/tenant-rate-limit/tiny", b.url), None, Some(&body)).await;
    assert_eq!(set.0, 200, "{}", set.1);
    let mut allowed = 0;
    for _ in 0..15 {
        for url in [&a.url, &b.url] {
            if with_key(Method::POST, &beat(url), &token).await == 200 {
                allowed += 1;
            }
        }
    }
    assert!((10..=12).contains(&allowed), "burst 10 across two replicas let {allowed} of 30 through");

    let revoked = call(Method::DELETE, &format!("{}/api/v1/admin/keys/{id}", b.url), None, None).await;
    assert_eq!(revoked.0, 200, "{}", revoked.1);
    assert_eq!(with_key(Method::POST, &beat(&a.url), &token).await, 401, "A refuses the key B revoked");

    // One ledger: the same head through both, and it verifies on each.
    let head = |url: String| async move { call(Method::GET, &format!("{url}/api/v1/ledger/head"), None, None).await.1 };
    let (ha, hb) = (head(a.url.clone()).await, head(b.url.clone()).await);
    assert_eq!(ha["head_hash"], hb["head_hash"], "{ha} / {hb}");
    for url in [&a.url, &b.url] {
        let (status, v) = call(Method::POST, &format!("{url}/api/v1/ledger/verification"), None, None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["ok"], true, "{v}");
    }
    // One newest checkpoint: what A signs, B reports once it looks (every half second).
    let signed = call(Method::GET, &format!("{}/api/v1/ledger/checkpoint?fresh=true", a.url), None, None).await;
    assert_eq!(signed.0, 200, "{}", signed.1);
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = call(Method::GET, &format!("{}/api/v1/ledger/checkpoint", b.url), None, None).await.1;
        if seen == signed.1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, signed.1, "B reports the checkpoint A signed");

    // Kill A with SIGKILL in the middle of a burst of writes: every write it acknowledged
    // reads back through B, and A restarted on its directory catches up.
    let roomy = json!({"rpm": 1_000_000, "burst": 100_000});
    let set = call(Method::PUT, &format!("{}/api/v1/tenant-rate-limit/acme", a.url), None, Some(&roomy)).await;
    assert_eq!(set.0, 200, "{}", set.1);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = a.url.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..400 {
                    let key = format!("burst-{w}-{i}");
                    let body = json!({"payload": {"v": key}});
                    let sent = client()
                        .put(format!("{url}/api/v1/memory/chat/{key}"))
                        .header("X-API-Key", OPS)
                        .header("X-Tenant-ID", "acme")
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 201 => acked.push(key),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    a.kill9();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(!acked.is_empty(), "some writes were acknowledged before the kill");
    eprintln!("{} of 3200 writes acknowledged before SIGKILL", acked.len());
    for key in &acked {
        let (status, v) = get(&b.url, key).await;
        assert_eq!((status, v["payload"]["v"].as_str()), (200, Some(key.as_str())), "acknowledged {key} lost");
    }
    let a = deployment.start(0, true);
    let (ha, hb) = (head(a.url.clone()).await, head(b.url.clone()).await);
    assert_eq!(ha["head_hash"], hb["head_hash"], "the restarted replica caught up: {ha} / {hb}");
    assert_eq!(get(&a.url, &acked[acked.len() - 1]).await.0, 200);

    // PostgreSQL keeps the records as the chain leaves them, written with each batch.
    let kept = kept_records(&deployment.db, &b.url).await;
    assert!(!kept.contains_key("r1"), "the record deleted through B is gone from PostgreSQL");
    for key in &acked {
        assert_eq!(kept.get(key).map(String::as_str), Some("L2"), "acknowledged {key} is kept in PostgreSQL");
    }

    // A deployment whose kept state is behind its chain (as after an upgrade) gets it rebuilt:
    // by the next batch, and by a replica's start. Meanwhile /health says so.
    deployment.execute("delete from daena_records; update daena_applied set seq = 0");
    let (status, health) = call(Method::GET, &format!("{}/health", b.url), None, None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("degraded")), "{health}");
    assert!(health.to_string().contains("the state it keeps is at entry 0 of the chain's"), "{health}");
    assert_eq!(put(&b.url, "after-wipe", "b").await, 201);
    let rebuilt = kept_records(&deployment.db, &b.url).await;
    assert_eq!(rebuilt.len(), kept.len() + 1, "rebuilt from B's copy, with B's new write");
    drop(a);
    deployment.execute(
        "delete from daena_records; delete from daena_docs where tbl = 'api_keys'; update daena_applied set seq = 0",
    );
    let a = deployment.start(0, true);
    assert_eq!(kept_records(&deployment.db, &a.url).await, rebuilt, "rebuilt by A's start");
    use daena_store::state::DocStore;
    let kept = daena_store::pg::PgState::open(&deployment.db.url).expect("the kept state");
    let key = kept.get_doc(daena_store::kv::API_KEYS, &id).expect("read").expect("the key record is rebuilt too");
    let key: Value = serde_json::from_slice(&key).expect("json");
    assert!(key["revoked_at"].is_i64(), "revoked through B: {key}");
    drop((a, b));
}

/// The records PostgreSQL keeps for tenant `acme`, class `chat` (key → tier), after checking
/// that the kept state is at the chain's head as `url` reports it and that each record reads
/// back through `url`.
async fn kept_records(db: &TestDatabase, url: &str) -> std::collections::BTreeMap<String, String> {
    use daena_store::state::StateStore;
    // Every read passes a barrier, so each head is the shared chain's at that moment.
    let head =
        || async { call(Method::GET, &format!("{url}/api/v1/ledger/head"), None, None).await.1["size"].as_u64() };
    let before = head().await.expect("head");
    let kept = daena_store::pg::PgState::open(&db.url).expect("the kept state");
    let applied = kept.applied_seq().expect("applied");
    let after = head().await.expect("head");
    assert!(
        (before..=after).contains(&applied),
        "the kept state is at the chain's head: {before} <= {applied} <= {after}"
    );
    let prefix = daena_store::records::address_key("acme", "chat", "");
    let mut rows = std::collections::BTreeMap::new();
    kept.scan_records(&prefix, None, &mut |addr, row| {
        let key = String::from_utf8_lossy(&addr[prefix.len()..]).into_owned();
        rows.insert(key, row.tier.as_str().to_owned());
        Ok(true)
    })
    .expect("scan");
    for key in rows.keys() {
        assert_eq!(get(url, key).await.0, 200, "{key}, kept in PostgreSQL, reads back");
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_limits_are_per_replica_and_health_says_so() {
    let deployment = Deployment::new(1);
    let a = deployment.start(0, false);
    let (status, health) = call(Method::GET, &format!("{}/health", a.url), None, None).await;
    assert_eq!(status, 200, "{health}");
    let text = health.to_string();
    assert!(text.contains("each replica applies the tenant rate limits on its own"), "{text}");
    assert!(text.contains("over an unencrypted connection"), "no sslmode in the URL: {text}");
    assert!(text.contains("the state it keeps is at the chain's head"), "{text}");
    // Operations that replace one data directory's state refuse, naming what to use instead.
    let body = json!({"snapshot": "/srv/backups/daena-snapshot.tar.zst"});
    let (status, v) = call(Method::POST, &format!("{}/api/v1/admin/restores", a.url), None, Some(&body)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("pg_dump"), "{v}");
}

/// On a replica a snapshot holds its copy of the chain and the state, and an archive its
/// records; a drill restores the snapshot into a scratch single node (which must not join
/// the replicas), checks it, and records its outcome in the shared ledger, where every
/// replica reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_snapshots_and_passes_a_drill() {
    let deployment = Deployment::new(2);
    let a = deployment.start(0, false);
    let b = deployment.start(1, false);
    for i in 0..20 {
        assert_eq!(put(&b.url, &format!("d{i}"), "b").await, 201);
    }
    let (status, snap) = call(Method::POST, &format!("{}/api/v1/admin/snapshots", a.url), None, None).await;
    assert!((200..300).contains(&status), "{snap}");
    assert_eq!(snap["records"], 20, "A's snapshot holds B's writes: {snap}");
    // A logical archive through A holds them too, decrypted with the shared data keys.
    let body = json!({"tenant": "acme"});
    let (status, archive) = call(Method::POST, &format!("{}/api/v1/admin/archives", a.url), None, Some(&body)).await;
    assert_eq!((status, &archive["records"]), (201, &json!(20)), "{archive}");
    let l3 = deployment.shared.path().join("l3").display().to_string();
    let report = deployment.dirs[0].path().join("drill_report.json");
    let o = common::run(
        common::daena(deployment.dirs[0].path())
            .env("DAENA_API_KEY", OPS)
            .env("DAENA_STORAGE_BACKEND", "postgres")
            .env("DAENA_STORAGE_POSTGRES_URL", &deployment.db.url)
            .env("DAENA_STORAGE_L3_PATH", &l3)
            .args(["drill", "--out", report.to_str().expect("path")]),
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", common::stdout(&o), common::stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!((r["passed"].as_bool(), r["records"].as_u64()), (Some(true), Some(20)), "{r}");
    let (status, last) = call(Method::GET, &format!("{}/api/v1/admin/drills/last", b.url), None, None).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["passed"], true, "B reports the drill run against A: {last}");
    drop((a, b));
}

/// Polls `url` with the ops key for `tenant` until `done` holds of its body (30 s at most);
/// the last body either way.
async fn until(url: &str, tenant: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = call(Method::GET, url, Some(tenant), None).await;
        assert_eq!(status, 200, "{url}: {body}");
        if done(&body) || std::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reports_what_all_of_them_observed() {
    let deployment = Deployment::new(2);
    let a = deployment.start(0, false);
    let b = deployment.start(1, false);
    let talk = json!({"from": "legal_synth", "to": "sales_synth", "kind": "message", "latency_ms": 20.0,
        "tokens": 10, "cost_usd": 0.001});
    for (url, n) in [(&a.url, 3), (&b.url, 2)] {
        for _ in 0..n {
            let (status, v) =
                call(Method::POST, &format!("{url}/api/v1/analytics/interactions"), Some("acme"), Some(&talk)).await;
            assert_eq!(status, 201, "{v}");
        }
    }
    let beat = format!("{}/api/v1/agents/sales_synth/heartbeat", a.url);
    assert_eq!(call(Method::POST, &beat, Some("acme"), None).await.0, 200);
    let chat =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarize the acme churn report."}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "churn is down"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
    let store = json!({"request": chat, "response": answer});
    let (status, v) = call(Method::POST, &format!("{}/api/v1/cas/store", a.url), Some("acme"), Some(&store)).await;
    assert!((200..300).contains(&status), "{status} {v}");
    for url in [&a.url, &b.url] {
        let (status, v) = call(Method::POST, &format!("{url}/api/v1/cas/lookup"), Some("acme"), Some(&chat)).await;
        assert_eq!((status, &v["hit"]), (200, &json!(true)), "{v}");
    }
    // Each replica publishes what it observed every few seconds; both then report the sum.
    for url in [&a.url, &b.url] {
        let summary = until(&format!("{url}/api/v1/analytics/summary"), "acme", |s| {
            s["total_interactions"] == 5 && s["active_agents"] == 1
        })
        .await;
        assert_eq!(summary["total_interactions"], 5, "interactions through both replicas, seen by {url}: {summary}");
        assert_eq!(summary["active_agents"], 1, "a heartbeat through A, seen by {url}: {summary}");
        let cas = until(&format!("{url}/monitoring/memory/cas"), "acme", |c| c["exact_hits"] == 2).await;
        assert_eq!(cas["exact_hits"], 2, "a hit through each replica, seen by {url}: {cas}");
    }
    // The sum is of each replica's own figures: a restart of B reads its own back, not A's twice.
    drop(b);
    let b = deployment.start(1, false);
    let summary = until(&format!("{}/api/v1/analytics/summary", b.url), "acme", |s| s["total_interactions"] == 5).await;
    assert_eq!(summary["total_interactions"], 5, "after B's restart: {summary}");
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (_, summary) = call(Method::GET, &format!("{}/api/v1/analytics/summary", a.url), Some("acme"), None).await;
    assert_eq!(summary["total_interactions"], 5, "A, after B republished: {summary}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_guesser_gets_one_budget_from_the_fleet() {
    let deployment = Deployment::new(2);
    let a = deployment.start(0, true);
    let b = deployment.start(1, true);
    let (mut unauthorized, mut throttled) = (0, 0);
    for _ in 0..30 {
        for url in [&a.url, &b.url] {
            match with_key(Method::GET, &format!("{url}/api/v1/agents"), "not-a-key-of-this-fleet").await {
                401 => unauthorized += 1,
                429 => throttled += 1,
                other => panic!("a wrong key got {other}"),
            }
        }
    }
    // The default budget is 20 failures at once, one back every 2 s: the fleet allows 20,
    // plus the one failure that tells the second replica (and what refilled meanwhile).
    assert!(
        (20..=23).contains(&unauthorized),
        "{unauthorized} wrong keys tried through two replicas, {throttled} refused"
    );
    drop((a, b));
}

/// A replica started on an empty data directory begins from the state PostgreSQL keeps and
/// the chain up to it, applying nothing; when that state awaits a rebuild, from the newest
/// seed the lease holder wrote (its state, ledger copy and cold segments), copying only the
/// entries after it. Records archived to L3 read back either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_starts_from_postgres_or_the_seed_and_replays_only_the_rest() {
    let deployment = Deployment::new(3);
    let seeds = [("DAENA_STORAGE_SEED_EVERY_SECS", "1")];
    // Records archive to L3 at once, so the seed carries cold segments too.
    std::fs::create_dir_all(deployment.dirs[0].path().join("config")).expect("config dir");
    std::fs::write(
        deployment.dirs[0].path().join("config/memory_config.yaml"),
        "aging:\n  interval_minutes: 0\n  rules:\n    - after_days: 0\n      action: archive\n",
    )
    .expect("write");
    let a = replica(deployment.dirs[0].path(), &deployment.db, deployment.shared.path(), false, &seeds);
    for i in 0..30 {
        assert_eq!(put(&a.url, &format!("k{i}"), &format!("v{i}")).await, 201, "k{i}");
    }
    let (status, report) =
        call(Method::POST, &format!("{}/api/v1/admin/aging/run", a.url), None, Some(&json!({}))).await;
    assert_eq!((status, &report["archived"]), (200, &json!(30)), "{report}");
    let size = |v: &Value| v["size"].as_u64().unwrap_or(0);
    let seeded = size(&call(Method::GET, &format!("{}/api/v1/ledger/head", a.url), None, None).await.1);
    let seed_dir = deployment.shared.path().join("l3/seeds");
    let mut newest = 0;
    for _ in 0..100 {
        newest = std::fs::read_dir(&seed_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
            .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
            .map(|m| m["ledger_size"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if newest >= seeded {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(newest >= seeded, "a seed covers the {seeded} entries written so far (newest: {newest})");
    // Written after the seed: the new replica copies these from PostgreSQL.
    for i in 30..35 {
        assert_eq!(put(&a.url, &format!("k{i}"), &format!("v{i}")).await, 201, "k{i}");
    }

    // The kept state awaiting a rebuild (as after an upgrade): B starts from the seed, and
    // rebuilds the kept state as it starts.
    deployment.execute("update daena_applied set seq = 0");
    let b = deployment.start(1, false);
    let log = std::fs::read_to_string(&b.log).expect("log");
    assert!(log.contains("started from the seed"), "{log}");
    assert!(log.contains("rebuilt the state kept in PostgreSQL"), "{log}");
    // Only the entries after the seed were copied (none when a seed written meanwhile holds them).
    let copied: u64 = log
        .lines()
        .find(|l| l.contains("copied and applied the shared ledger's new entries"))
        .and_then(|l| l.rsplit("entries=").next())
        .map_or(0, |n| n.trim().parse().expect("a count"));
    assert!(copied <= 5, "B copied {copied} entries rather than the 5 after the seed: {log}");
    let (_, health) = call(Method::GET, &format!("{}/health", b.url), None, None).await;
    let replica = &health["checks"]["replica"];
    assert_eq!(replica["status"], "pass", "{health}");
    assert!(replica["detail"].as_str().unwrap_or("").contains("the newest seed for new replicas covers"), "{health}");
    for i in [0, 29, 30, 34] {
        let (status, v) = get(&b.url, &format!("k{i}")).await;
        assert_eq!((status, &v["payload"]["v"]), (200, &json!(format!("v{i}"))), "k{i} through B: {v}");
    }
    let (_, head_a) = call(Method::GET, &format!("{}/api/v1/ledger/head", a.url), None, None).await;
    let (_, head_b) = call(Method::GET, &format!("{}/api/v1/ledger/head", b.url), None, None).await;
    assert_eq!(head_a["head_hash"], head_b["head_hash"], "{head_a} / {head_b}");
    let (status, v) = call(Method::POST, &format!("{}/api/v1/ledger/verification", b.url), None, None).await;
    assert_eq!((status, &v["ok"]), (200, &json!(true)), "{v}");

    // C starts from what PostgreSQL keeps: no seed read, nothing applied after the copy.
    let c = deployment.start(2, false);
    let log = std::fs::read_to_string(&c.log).expect("log");
    assert!(log.contains("started from the state PostgreSQL keeps"), "{log}");
    assert!(!log.contains("started from the seed"), "{log}");
    assert!(!log.contains("copied and applied the shared ledger's new entries"), "nothing left to apply: {log}");
    for i in [0, 29, 30, 34] {
        let (status, v) = get(&c.url, &format!("k{i}")).await;
        assert_eq!((status, &v["payload"]["v"]), (200, &json!(format!("v{i}"))), "k{i} through C: {v}");
    }
    assert_eq!(put(&c.url, "k0", "from-c").await, 200, "C overwrites a record it copied");
    assert_eq!(get(&a.url, "k0").await.1["payload"]["v"], "from-c");
    let (_, head_c) = call(Method::GET, &format!("{}/api/v1/ledger/head", c.url), None, None).await;
    let (_, head_a) = call(Method::GET, &format!("{}/api/v1/ledger/head", a.url), None, None).await;
    assert_eq!(head_a["head_hash"], head_c["head_hash"], "{head_a} / {head_c}");
    let (status, v) = call(Method::POST, &format!("{}/api/v1/ledger/verification", c.url), None, None).await;
    assert_eq!((status, &v["ok"]), (200, &json!(true)), "{v}");

    // A replica stops cleanly on SIGTERM (its PostgreSQL connections closed off the runtime).
    for (name, server) in [("A", a), ("B", b), ("C", c)] {
        let log = server.log.clone();
        let status = server.stop();
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(status.success() && !text.contains("panicked"), "{name} stopped with {status}: {text}");
    }
}

/// A state's rows, comparable across backends: records by address (version, tier, content
/// digest, sequence number: an L3 body is a cold segment locally and inline in PostgreSQL),
/// cache entries and dictionaries by key with their bytes, and the governance documents the
/// chain decides (API key records but the one each replica provisions from its environment,
/// rate-limit overrides, the write switch).
#[derive(Debug, PartialEq)]
struct Rows {
    records: std::collections::BTreeMap<Vec<u8>, (u64, String, [u8; 32], u64)>,
    cache: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    dicts: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    docs: std::collections::BTreeMap<(String, String), serde_json::Value>,
}

fn rows_of(store: &dyn daena_store::state::StateStore) -> Rows {
    use daena_store::kv::DocTable;
    let mut rows = Rows {
        records: Default::default(),
        cache: Default::default(),
        dicts: Default::default(),
        docs: Default::default(),
    };
    for table in ["api_keys", "rate_limit_overrides", "settings"] {
        for (key, doc) in store.scan_docs(DocTable(table)).expect("documents") {
            if (table == "api_keys" && key == "env-ops") || (table == "settings" && key != "writes_switch") {
                continue;
            }
            let doc = serde_json::from_slice(&doc).expect("a JSON document");
            rows.docs.insert((table.to_owned(), key), doc);
        }
    }
    store
        .scan_records(b"", None, &mut |addr, r| {
            rows.records.insert(addr.to_vec(), (r.version, r.tier.as_str().to_owned(), r.content_sha256, r.seq));
            Ok(true)
        })
        .expect("records");
    store
        .scan_cache(&mut |k, v| {
            rows.cache.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .expect("cache");
    store
        .scan_dicts(&mut |k, v| {
            rows.dicts.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .expect("dictionaries");
    rows
}

/// The state PostgreSQL keeps is the state each replica derived from the chain on its own:
/// records written, overwritten, deleted and quarantined through either replica, cache
/// entries stored through one and evicted through the other, keys made and revoked, limits
/// set and removed, the write switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_state_every_replica_derives() {
    let deployment = Deployment::new(2);
    let a = deployment.start(0, false);
    let b = deployment.start(1, false);
    for i in 0..5 {
        assert_eq!(put(&a.url, &format!("k{i}"), "a").await, 201);
    }
    assert_eq!(put(&b.url, "k1", "b").await, 200);
    assert_eq!(call(Method::DELETE, &format!("{}/api/v1/memory/chat/k2", b.url), Some("acme"), None).await.0, 200);
    let held = json!({"payload": {"clause": "net 30"}});
    let (status, v) =
        call(Method::PUT, &format!("{}/api/v1/memory/legal/terms", a.url), Some("acme"), Some(&held)).await;
    assert_eq!(status, 201, "{v}");
    let mut keys = Vec::new();
    for topic in ["churn", "pricing"] {
        let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("Summarize the {topic} report.")}]});
        let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": topic}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let store = json!({"request": chat, "response": answer});
        let (status, v) = call(Method::POST, &format!("{}/api/v1/cas/store", b.url), Some("acme"), Some(&store)).await;
        assert_eq!(status, 200, "{v}");
        keys.push(v["key"].as_str().expect("key").to_owned());
    }
    let wrong = json!({"key": keys[0], "reason": "stale"});
    let (status, v) = call(Method::POST, &format!("{}/api/v1/cas/feedback", a.url), Some("acme"), Some(&wrong)).await;
    assert_eq!(status, 200, "{v}");
    // Governance: keys made through A, one revoked through B; limits set and removed; the
    // write switch turned off and on again.
    let mut ids = Vec::new();
    for name in ["bot-1", "bot-2"] {
        let body = json!({"name": name, "role": "agent", "tenant": "acme"});
        let (status, v) = call(Method::POST, &format!("{}/api/v1/admin/keys", a.url), None, Some(&body)).await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let (status, v) = call(Method::DELETE, &format!("{}/api/v1/admin/keys/{}", b.url, ids[0]), None, None).await;
    assert_eq!(status, 200, "{v}");
    for (tenant, url) in [("acme", &b.url), ("tiny", &a.url), ("gone", &a.url)] {
        let body = json!({"rpm": 600, "burst": 50});
        let (status, v) =
            call(Method::PUT, &format!("{url}/api/v1/tenant-rate-limit/{tenant}"), None, Some(&body)).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = call(Method::DELETE, &format!("{}/api/v1/tenant-rate-limit/gone", b.url), None, None).await;
    assert_eq!(status, 200, "{v}");
    for (enabled, url) in [(false, &a.url), (true, &b.url)] {
        let body = json!({"enabled": enabled});
        let (status, v) = call(Method::PUT, &format!("{url}/api/v1/admin/writes"), None, Some(&body)).await;
        assert_eq!(status, 200, "{v}");
    }
    // A read through each replica is a barrier: both have applied everything before they stop.
    for url in [&a.url, &b.url] {
        assert_eq!(get(url, "k1").await.1["payload"]["v"], "b");
    }
    assert!(a.stop().success() && b.stop().success(), "both replicas stop cleanly");

    let kept = rows_of(&daena_store::pg::PgState::open(&deployment.db.url).expect("the kept state"));
    let tier =
        |key: &str| kept.records.get(&daena_store::records::address_key("acme", "legal", key)).map(|r| r.1.clone());
    assert_eq!(tier("terms").as_deref(), Some("L2Q"), "quarantine is kept: {kept:?}");
    assert_eq!(kept.records.len(), 5, "k0, k1, k3, k4 and the quarantined record");
    assert_eq!(kept.cache.len(), 1, "one entry stored, one evicted");
    let doc = |table: &str, key: &str| kept.docs.get(&(table.to_owned(), key.to_owned())).cloned();
    assert!(doc("api_keys", &ids[0]).is_some_and(|k| k["revoked_at"].is_i64()), "the revoked key: {kept:?}");
    assert!(doc("api_keys", &ids[1]).is_some_and(|k| k["revoked_at"].is_null()), "the active key: {kept:?}");
    assert_eq!(doc("rate_limit_overrides", "tiny"), Some(json!({"rpm": 600, "burst": 50})));
    assert_eq!(doc("rate_limit_overrides", "gone"), None, "a removed override");
    assert_eq!(doc("settings", "writes_switch"), Some(json!(true)));
    for dir in &deployment.dirs {
        let local =
            daena_store::kv::Kv::open(&dir.path().join("data/state.redb"), 1 << 20).expect("the replica's state");
        assert_eq!(rows_of(local.store()), kept, "{} derived what PostgreSQL keeps", dir.path().display());
    }
}
