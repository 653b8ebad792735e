//! The ledger end to end: SIGKILL during a burst of appends, and `daena ledger verify`
//! catching tampering with the right sequence number.

mod common;

use common::{OPS, Server, client, daena, run, stderr, stdout};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn verify_json(dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut cmd = daena(dir);
    cmd.args(["ledger", "verify", "--json"]).args(extra);
    let out = run(&mut cmd);
    let v = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
    (out.status.code(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_appends_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url, acked) = (http.clone(), server.url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = serde_json::json!({"name": format!("w{w}-{i}"), "role": "agent", "tenant": format!("t{w}")});
                let resp =
                    http.post(format!("{url}/api/v1/admin/keys")).header("X-API-Key", OPS).json(&body).send().await;
                match resp {
                    Ok(r) if r.status() == 201 => {
                        let v: serde_json::Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        acked.lock().expect("lock").insert(format!("key/{}", v["id"].as_str().unwrap_or_default()));
                    }
                    _ => return,
                }
            }
        }));
    }
    // Let the burst run, then kill without warning.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().expect("lock").len() >= 150 {
            break;
        }
    }
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 150);

    // The ledger verifies on disk as it was left.
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!(code, Some(0), "{v}");

    // The server restarts on it, and every acknowledged append is there.
    let server = Server::start(tmp.path(), &[]);
    let mut found = BTreeSet::new();
    let mut from = 1u64;
    loop {
        let page: serde_json::Value = http
            .get(format!("{}/api/v1/ledger/entries?from={from}&limit=1000", server.url))
            .header("X-API-Key", OPS)
            .send()
            .await
            .expect("entries")
            .json()
            .await
            .expect("json");
        for e in page["entries"].as_array().expect("entries") {
            if e["action"] == "key.create" {
                found.insert(e["ref"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page["next"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    let missing: Vec<&String> = acked.difference(&found).collect();
    assert!(missing.is_empty(), "acknowledged but not in the ledger: {missing:?}");
    server.stop();
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["checkpoints_verified"].as_array().is_some_and(|c| !c.is_empty()), "shutdown wrote a checkpoint: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_first_bad_sequence_number() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();
    for i in 0..6 {
        let body = serde_json::json!({"name": format!("k{i}"), "role": "agent", "tenant": "acme"});
        let r = http
            .post(format!("{}/api/v1/admin/keys", server.url))
            .header("X-API-Key", OPS)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    // Keep a checkpoint elsewhere, then stop.
    let cp = tmp.path().join("offsite-checkpoint.json");
    let out = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["ledger", "checkpoint", "--out"]).arg(&cp));
    assert!(out.status.success(), "{}", stderr(&out));
    server.stop();

    let seg = tmp.path().join("data/ledger").join(daena_store::ledger::segment_name(1));
    let original = std::fs::read_to_string(&seg).expect("segment");
    let local_checkpoints = tmp.path().join("data/ledger/checkpoints.jsonl");
    let saved_checkpoints = std::fs::read(&local_checkpoints).expect("checkpoints");

    // One changed byte in entry 4.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines[3] = lines[3].replacen("\"tenant\":\"acme\"", "\"tenant\":\"acmf\"", 1);
    std::fs::write(&seg, lines.join("\n") + "\n").expect("tamper");
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!((code, v["first_bad_seq"].as_u64()), (Some(1), Some(4)), "{v}");

    // A deleted entry 2.
    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(1);
    std::fs::write(&seg, lines.join("\n") + "\n").expect("delete");
    let (_, v) = verify_json(tmp.path(), &[]);
    assert_eq!(v["first_bad_seq"].as_u64(), Some(2), "{v}");

    // A truncated tail is only visible against the kept checkpoint.
    let lines: Vec<&str> = original.lines().take(4).collect();
    std::fs::write(&seg, lines.join("\n") + "\n").expect("truncate");
    std::fs::remove_file(tmp.path().join("data/ledger/checkpoints.jsonl")).expect("attacker removes local checkpoints");
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!(code, Some(0), "without the offsite checkpoint the shorter ledger is self-consistent: {v}");
    let (code, v) = verify_json(tmp.path(), &["--checkpoint", cp.to_str().expect("utf8")]);
    assert_eq!((code, v["first_bad_seq"].as_u64()), (Some(1), Some(5)), "{v}");

    // The server refuses to start on a ledger shorter than its own signed checkpoint.
    std::fs::write(&local_checkpoints, &saved_checkpoints).expect("restore checkpoints");
    std::fs::remove_file(tmp.path().join("data/ledger/hashes.bin")).expect("rm derived hashes");
    let out = run(daena(tmp.path()).env("DAENA_OPS_KEY", OPS).args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    // Restored, everything verifies again.
    std::fs::write(&seg, &original).expect("restore");
    let (code, v) = verify_json(tmp.path(), &["--checkpoint", cp.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{v}");
}

#[test]
fn a_fresh_installation_verifies() {
    // Start on a fresh directory, stop without a single write: the shutdown checkpoint covers
    // the empty ledger, and that must verify, offline and with the checkpoint kept elsewhere.
    let tmp = tempfile::tempdir().expect("tempdir");
    Server::start(tmp.path(), &[]).stop();
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!((code, v["entries"].as_u64()), (Some(0), Some(0)), "{v}");
    assert_eq!(v["checkpoints_verified"], serde_json::json!([0]), "{v}");
    let out = run(daena(tmp.path()).args(["ledger", "verify"]));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn legacy_verify_and_import_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/legacy_ledger.jsonl");
    let out = run(daena(tmp.path()).args(["ledger", "verify", "--legacy", "--json", "--ledger"]).arg(&fixture));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["report"]["merkle_root"], "967c68238f434cf63d5142d1abe13678236a896f2b1f8eb442d3918fc139edb9");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, std::fs::read_to_string(&fixture).expect("read").replace("item-2", "item-3")).expect("write");
    let out = run(daena(tmp.path()).args(["ledger", "verify", "--legacy", "--ledger"]).arg(&bad));
    assert_eq!(out.status.code(), Some(1));

    let out = run(daena(tmp.path()).args(["ledger", "import-legacy"]).arg(&fixture));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("adopted 6 legacy entries"), "{}", stdout(&out));
    let (code, v) = verify_json(tmp.path(), &[]);
    assert_eq!((code, v["entries"].as_u64()), (Some(0), Some(1)), "{v}");
    let again = run(daena(tmp.path()).args(["ledger", "import-legacy"]).arg(&fixture));
    assert_eq!(again.status.code(), Some(1), "only into an empty ledger");
}
