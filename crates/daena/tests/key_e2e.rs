//! Master key rotation with the real binary: under concurrent reads and writes with no failed
//! request, validated afterwards, the server restarts on the new key, and a snapshot sealed
//! under the old key is still restorable.

mod common;

use common::{OPS, Server, call, client, daena, ledger_size, run, stderr, stdout};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Both seeded tenants' records read.
async fn both_tenants_read(url: &str) {
    for t in ["default", "acme"] {
        let (status, body) = call(Method::GET, &format!("{url}/api/v1/memory/chat/seed5"), Some(t), None).await;
        assert_eq!(status, 200, "{t}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_loses_nothing_and_old_snapshots_restore() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();
    for t in ["default", "acme"] {
        for i in 0..10 {
            let url = format!("{}/api/v1/memory/chat/seed{i}", server.url);
            let (status, _) = call(Method::PUT, &url, Some(t), Some(&json!({"payload": {"i": i, "t": t}}))).await;
            assert!((200..300).contains(&status));
        }
    }
    // A cached answer, sealed under acme's first data key like its records.
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Rotate me."}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached before"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
    let cas = |url: &str, path: &str| format!("{url}/api/v1/cas/{path}");
    let (status, r) = call(
        Method::POST,
        &cas(&server.url, "store"),
        Some("acme"),
        Some(&json!({"request": chat, "response": answer})),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {r}");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let old_snapshot: Value = serde_json::from_str(&stdout(&o)).expect("manifest");
    let (_, status) = call(Method::GET, &format!("{}/api/v1/admin/key-status", server.url), None, None).await;
    let old_id = status["master_key_id"].as_str().expect("id").to_owned();

    // Readers and writers run through the rotation; every answer must be a success.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (http, url, stop, ok, failed) =
            (http.clone(), server.url.clone(), stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = if w % 2 == 0 { "default" } else { "acme" };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = if n.is_multiple_of(2) {
                    http.put(format!("{url}/api/v1/memory/chat/w{w}-{n}")).json(&json!({"payload": {"n": n}}))
                } else {
                    http.get(format!("{url}/api/v1/memory/chat/seed{}", n % 10))
                };
                let res = r.header("X-API-Key", OPS).header("X-Tenant-ID", tenant).send().await;
                if res.is_ok_and(|r| r.status().is_success()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "rotate", "--json"]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["old_key_id"], old_id.as_str());
    assert_ne!(report["new_key_id"], old_id.as_str());
    assert_eq!(report["tenants"], 2, "{report}");
    assert_eq!(report["new_data_key_versions"], 2, "{report}");
    assert!(report["records_reencrypted"].as_u64().unwrap_or(0) >= 20, "every seeded record sealed again: {report}");
    assert_eq!(report["reencryption"]["errors"], 0, "{report}");
    // Then the cache entry was sealed again and the first data key versions retired.
    assert_eq!(report["reencryption"]["cache_entries_resealed"], 1, "{report}");
    assert_eq!(report["reencryption"]["retirement_blocked"], Value::Null, "{report}");
    assert_eq!(report["reencryption"]["data_keys_retired"], 2, "{report}");
    let (_, lookup) = call(Method::POST, &cas(&server.url, "lookup"), Some("acme"), Some(&chat)).await;
    assert_eq!(lookup["hit"], true, "the cached answer reads under the new key: {lookup}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the rotation");
    // It ran as a background operation the CLI followed to its end.
    let (_, ops) = call(Method::GET, &format!("{}/api/v1/admin/operations", server.url), None, None).await;
    assert_eq!((ops[0]["kind"].as_str(), ops[0]["state"].as_str()), (Some("key.rotate"), Some("succeeded")), "{ops}");
    assert_eq!(ops[0]["result"]["new_key_id"], report["new_key_id"], "{ops}");
    // A dry run answers at once, with a finished operation.
    let (status, dry) =
        call(Method::POST, &format!("{}/api/v1/admin/key-rotation", server.url), None, Some(&json!({"dry_run": true})))
            .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["result"]["dry_run"], true, "{dry}");
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(
        !stdout(&o).contains(
            &std::fs::read_to_string(tmp.path().join("data/keys/master.key")).expect("key").trim().to_owned()
        )
    );

    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "validate", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("validation");
    assert_eq!(v["rotations"], 1);
    assert_eq!(v["records_under_old_data_keys"], 0, "{v}");
    assert_eq!(v["older_data_keys"], 0, "{v}");
    let (_, status) = call(Method::GET, &format!("{}/api/v1/admin/key-status", server.url), None, None).await;
    assert_eq!(status["data_keys"], 2, "one data key per tenant is left: {status}");
    assert!(v["records"].as_u64().unwrap_or(0) >= 20, "{v}");
    assert!(tmp.path().join(format!("data/keys/retired/master-{old_id}.key")).exists());
    // The rotation line is signed: a forged signature fails validation.
    let manifest = tmp.path().join("data/keys/rotations.jsonl");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let line: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    let sig = line["sig"].as_str().expect("signed").to_owned();
    let forged = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    std::fs::write(&manifest, text.replace(&sig, &forged)).expect("forge");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "validate"]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("signature does not verify"), "{}", stdout(&o));
    std::fs::write(&manifest, text).expect("restore");
    server.stop();

    // The new key opens the data after a restart.
    let server = Server::start(tmp.path(), &[]);
    let (status, _) = call(Method::GET, &format!("{}/api/v1/memory/chat/seed3", server.url), Some("acme"), None).await;
    assert!((200..300).contains(&status));
    let after = json!({"payload": {"after": true}});
    let (status, _) = call(Method::PUT, &format!("{}/api/v1/memory/chat/after", server.url), None, Some(&after)).await;
    assert!((200..300).contains(&status));
    let size = ledger_size(&server.url).await;
    let mut entries = Vec::new();
    while (entries.len() as u64) < size {
        let url = format!("{}/api/v1/ledger/entries?from={}&limit=1000", server.url, entries.len() + 1);
        let (_, page) = call(Method::GET, &url, None, None).await;
        let page = page["entries"].as_array().cloned().unwrap_or_default();
        assert!(!page.is_empty(), "entries up to {size}");
        entries.extend(page);
    }
    let retired: Vec<&Value> = entries.iter().filter(|e| e["action"] == "key.retire").collect();
    assert_eq!(retired.len(), 2, "one key.retire per tenant");
    let first_reseal =
        entries.iter().find(|e| e["action"] == "memory.age").and_then(|e| e["seq"].as_u64()).expect("a reseal entry");
    server.stop();

    // A rollback across the rotation replays records re-sealed under the new data key
    // versions, which only the current state holds.
    let to = size - 1;
    let o = run(daena(tmp.path()).args(["rollback", "--to", &to.to_string()]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let server = Server::start(tmp.path(), &[]);
    both_tenants_read(&server.url).await;
    server.stop();

    // A rollback to before the re-encryption: the records are under the retired versions
    // again, which the snapshot it starts from holds, so they read.
    let o = run(daena(tmp.path()).args(["rollback", "--to", &(first_reseal - 1).to_string()]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let server = Server::start(tmp.path(), &[]);
    both_tenants_read(&server.url).await;
    let (_, lookup) = call(Method::POST, &cas(&server.url, "lookup"), Some("acme"), Some(&chat)).await;
    assert_eq!(lookup["hit"], true, "{lookup}");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "validate", "--json"]));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("validation");
    assert_eq!((o.status.code(), &v["older_data_keys"]), (Some(1), &json!(2)), "not retired there: {v}");
    server.stop();

    // The snapshot sealed under the old key restores, its data keys re-wrapped under the new one.
    let archive =
        tmp.path().join("data/snapshots").join(format!("{}.tar.zst", old_snapshot["name"].as_str().expect("name")));
    let o = run(daena(tmp.path()).args(["snapshot", "restore", archive.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let server = Server::start(tmp.path(), &[]);
    let (_, body) = call(Method::GET, &format!("{}/api/v1/memory/chat/seed7", server.url), Some("acme"), None).await;
    assert_eq!(body["payload"], json!({"i": 7, "t": "acme"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_is_undone_or_completed_at_start() {
    use daena_app::keyring::{self, MasterKey};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let (status, _) =
        call(Method::PUT, &format!("{}/api/v1/memory/chat/x", server.url), None, Some(&json!({"payload": {"x": 1}})))
            .await;
    assert!((200..300).contains(&status));
    server.stop();
    let keys = tmp.path().join("data/keys");
    let old_text = std::fs::read_to_string(keys.join("master.key")).expect("key");
    let old = MasterKey::from_bytes(keyring::parse_master_key(&old_text, "old").expect("parse"), "old");
    let new_raw = [7u8; 32];
    let new = MasterKey::from_bytes(new_raw, "new");

    // Crashed before the data keys were re-wrapped: the next key is dropped.
    keyring::write_next_master(&keys, &new_raw).expect("next");
    let server = Server::start(tmp.path(), &[]);
    assert!(!keys.join("master.key.next").exists());
    assert_eq!(std::fs::read_to_string(keys.join("master.key")).expect("key"), old_text);
    server.stop();

    // Crashed after: the rotation is completed.
    keyring::write_next_master(&keys, &new_raw).expect("next");
    keyring::rewrap_file(&tmp.path().join("data/state.redb"), &old, &new).expect("rewrap");
    let server = Server::start(tmp.path(), &[]);
    assert!(!keys.join("master.key.next").exists());
    assert!(keys.join(format!("retired/master-{}.key", old.id)).exists());
    let (_, body) = call(Method::GET, &format!("{}/api/v1/memory/chat/x", server.url), None, None).await;
    assert_eq!(body["payload"], json!({"x": 1}), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shredded_tenant_is_unreadable_and_the_ledger_still_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let url = server.url.clone();
    let put = |tenant: &'static str, key: &'static str, v: i64| {
        let url = format!("{url}/api/v1/memory/chat/{key}");
        async move { call(Method::PUT, &url, Some(tenant), Some(&json!({"payload": {"v": v}}))).await.0 }
    };
    let get = |tenant: &'static str, key: &'static str| {
        let url = format!("{url}/api/v1/memory/chat/{key}");
        async move {
            let (status, body) = call(Method::GET, &url, Some(tenant), None).await;
            (status, body.to_string())
        }
    };
    for (t, k) in [("acme", "a1"), ("acme", "a2"), ("default", "d1")] {
        assert_eq!(put(t, k, 1).await, 201);
    }
    assert_eq!(get("acme", "a1").await.0, 200, "warm L1 with the plaintext");
    let chat =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarize the acme churn report."}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "secret acme answer"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
    let store = json!({"request": chat, "response": answer});
    let (status, r) = call(Method::POST, &format!("{}/api/v1/cas/store", server.url), Some("acme"), Some(&store)).await;
    assert!((200..300).contains(&status), "{status} {r}");

    let o =
        run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "shred", "--tenant", "acme", "--confirm", "acm"]));
    assert_eq!(o.status.code(), Some(1), "a wrong confirmation is refused");
    assert_eq!(get("acme", "a1").await.0, 200);
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args([
        "key",
        "shred",
        "--tenant",
        "acme",
        "--confirm",
        "acme",
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(r["data_keys_destroyed"], 1);
    assert_eq!(r["cache_entries_evicted"], 1);
    assert_eq!(r["records_unreadable"], 2);

    let (status, body) = get("acme", "a1").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shredded"), "{body}");
    assert!(!body.contains("\"v\""), "{body}");
    assert_eq!(get("default", "d1").await.0, 200, "other tenants are untouched");
    let (_, lookup) = call(Method::POST, &format!("{}/api/v1/cas/lookup", server.url), Some("acme"), Some(&chat)).await;
    assert_eq!(lookup["hit"], false, "{lookup}");
    // New data for the tenant gets a new key; the old stays unreadable, also after a restart.
    assert_eq!(put("acme", "a3", 3).await, 201);
    assert_eq!(get("acme", "a3").await.0, 200);
    server.stop();
    let o = run(daena(tmp.path()).args(["ledger", "verify"]));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let server = Server::start(tmp.path(), &[]);
    for (key, expected) in [("a2", 503), ("a3", 200)] {
        let (status, _) =
            call(Method::GET, &format!("{}/api/v1/memory/chat/{key}", server.url), Some("acme"), None).await;
        assert_eq!(status, expected, "{key}");
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "validate", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("validation");
    assert_eq!(v["shredded_tenants"], json!(["acme"]));
    assert_eq!(v["shredded_records"], 2, "{v}");
}
