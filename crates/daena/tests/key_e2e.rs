//! Master key rotation with the real binary: under concurrent reads and writes with no failed
//! request, validated afterwards, the server restarts on the new key, and a snapshot sealed
//! under the old key is still restorable.

mod common;

use common::{OPS, Server, client, daena, run, stderr, stdout};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_loses_nothing_and_old_snapshots_restore() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();
    for t in ["default", "acme"] {
        for i in 0..10 {
            let r = http
                .put(format!("{}/api/v1/memory/chat/seed{i}", server.url))
                .header("X-API-Key", OPS)
                .header("X-Tenant-ID", t)
                .json(&json!({"payload": {"i": i, "t": t}}))
                .send()
                .await
                .expect("put");
            assert!(r.status().is_success());
        }
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let old_snapshot: Value = serde_json::from_str(&stdout(&o)).expect("manifest");
    let status: Value = http
        .get(format!("{}/api/v1/admin/key-status", server.url))
        .header("X-API-Key", OPS)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
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
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the rotation");
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
    assert!(v["records"].as_u64().unwrap_or(0) >= 20, "{v}");
    assert!(tmp.path().join(format!("data/keys/retired/master-{old_id}.key")).exists());
    server.stop();

    // The new key opens the data after a restart.
    let server = Server::start(tmp.path(), &[]);
    let r = http
        .get(format!("{}/api/v1/memory/chat/seed3", server.url))
        .header("X-API-Key", OPS)
        .header("X-Tenant-ID", "acme")
        .send()
        .await
        .expect("get");
    assert!(r.status().is_success());
    server.stop();

    // The snapshot sealed under the old key restores, its data keys re-wrapped under the new one.
    let archive =
        tmp.path().join("data/snapshots").join(format!("{}.tar.zst", old_snapshot["name"].as_str().expect("name")));
    let o = run(daena(tmp.path()).args(["snapshot", "restore", archive.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let server = Server::start(tmp.path(), &[]);
    let body: Value = http
        .get(format!("{}/api/v1/memory/chat/seed7", server.url))
        .header("X-API-Key", OPS)
        .header("X-Tenant-ID", "acme")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["payload"], json!({"i": 7, "t": "acme"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_is_undone_or_completed_at_start() {
    use daena_app::crypto::{self, MasterKey};
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let r = client()
        .put(format!("{}/api/v1/memory/chat/x", server.url))
        .header("X-API-Key", OPS)
        .json(&json!({"payload": {"x": 1}}))
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success());
    server.stop();
    let keys = tmp.path().join("data/keys");
    let old_text = std::fs::read_to_string(keys.join("master.key")).expect("key");
    let old = MasterKey::from_bytes(crypto::parse_master_key(&old_text, "old").expect("parse"), "old");
    let new_raw = [7u8; 32];
    let new = MasterKey::from_bytes(new_raw, "new");

    // Crashed before the data keys were re-wrapped: the next key is dropped.
    crypto::write_next_master(&keys, &new_raw).expect("next");
    let server = Server::start(tmp.path(), &[]);
    assert!(!keys.join("master.key.next").exists());
    assert_eq!(std::fs::read_to_string(keys.join("master.key")).expect("key"), old_text);
    server.stop();

    // Crashed after: the rotation is completed.
    crypto::write_next_master(&keys, &new_raw).expect("next");
    crypto::rewrap_file(&tmp.path().join("data/state.redb"), &old, &new).expect("rewrap");
    let server = Server::start(tmp.path(), &[]);
    assert!(!keys.join("master.key.next").exists());
    assert!(keys.join(format!("retired/master-{}.key", old.id)).exists());
    let body: Value = client()
        .get(format!("{}/api/v1/memory/chat/x", server.url))
        .header("X-API-Key", OPS)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["payload"], json!({"x": 1}), "{body}");
}
