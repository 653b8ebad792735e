//! Memory end to end with the real binary: SIGKILL during writes loses nothing acknowledged,
//! and a wrong master key refuses to start without touching anything.

mod common;

use common::{OPS, Server, client, daena, run, stderr};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // base64 of 32 bytes
const KEY_B: &str = "6666666666666666666666666666666666666666666666666666666666666666"; // hex of 32 bytes

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_writes_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = [("DAENA_MEMORY_AES_KEY", KEY_A)];
    let server = Server::start(tmp.path(), &env);
    let http = client();
    // key -> last acknowledged version's payload
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, url, acked) = (http.clone(), server.url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0i64.. {
                // Each worker overwrites a few keys so replay must get versions right too.
                let key = format!("w{w}-k{}", i % 7);
                let body = serde_json::json!({"payload": {"n": i, "text": format!("worker {w} write {i}")}});
                let resp = http
                    .put(format!("{url}/api/v1/memory/chat/{key}"))
                    .header("X-API-Key", OPS)
                    .json(&body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().expect("lock").insert(key, i);
                    }
                    _ => return,
                }
            }
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if acked.lock().expect("lock").len() >= 16 * 7 && tasks.iter().all(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break;
        }
    }
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();

    let server = Server::start(tmp.path(), &env);
    for (key, n) in &acked {
        let v: serde_json::Value = http
            .get(format!("{}/api/v1/memory/chat/{key}", server.url))
            .header("X-API-Key", OPS)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        // A write may have been durable but unacknowledged when the kill came; never older.
        let got = v["payload"]["n"].as_i64().unwrap_or(-1);
        assert!(got >= *n, "{key}: acknowledged n={n}, found {v}");
    }
    server.stop();
    let out = run(daena(tmp.path()).args(["ledger", "verify"]));
    assert!(out.status.success(), "{}", common::stdout(&out));
}

#[test]
fn wrong_master_key_refuses_to_start_and_touches_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[("DAENA_MEMORY_AES_KEY", KEY_A)]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let r = client()
            .put(format!("{}/api/v1/memory/chat/x", server.url))
            .header("X-API-Key", OPS)
            .json(&serde_json::json!({"payload": "secret"}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 201);
    });
    server.stop();
    let snapshot = |dir: &std::path::Path| -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).expect("dir") {
                let path = e.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if !path.ends_with("daena.lock") {
                    files.insert(path.display().to_string(), std::fs::read(&path).expect("read"));
                }
            }
        }
        files
    };
    let before = snapshot(&tmp.path().join("data"));
    let out = run(daena(tmp.path()).env("DAENA_MEMORY_AES_KEY", KEY_B).env("DAENA_OPS_KEY", OPS).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("not the one this data directory's keys were wrapped with"), "{err}");
    assert!(!err.contains(KEY_B) && !err.contains(KEY_A), "no key material in the error");
    let after = snapshot(&tmp.path().join("data"));
    let changed: Vec<&String> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.is_empty(), "files changed by the refused start: {changed:?}");
    let bad =
        run(daena(tmp.path()).env("DAENA_MEMORY_AES_KEY", "not-a-key").args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("32 bytes"), "{}", stderr(&bad));
    assert!(!stderr(&bad).contains("not-a-key"));
    // The right key still works.
    let server = Server::start(tmp.path(), &[("DAENA_MEMORY_AES_KEY", KEY_A)]);
    server.stop();
}
