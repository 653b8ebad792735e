//! Snapshots with the real binary: taken while serving, verified before anything is replaced,
//! and restored after the state is wiped, giving back exactly the records and ledger of the
//! snapshot's position.

mod common;

use common::{OPS, Server, call, daena, ledger_size, run, stderr, stdout};
use reqwest::Method;
use serde_json::{Value, json};

async fn put(url: &str, class: &str, key: &str, n: u64) {
    let body = json!({"payload": {"n": n, "text": format!("record {key}")}});
    let (status, r) = call(Method::PUT, &format!("{url}/api/v1/memory/{class}/{key}"), None, Some(&body)).await;
    assert!((200..300).contains(&status), "{status} {r}");
}

/// Removes the state, ledger and cold tier of the data directory under `dir`.
fn wipe(dir: &std::path::Path) {
    for part in ["state.redb", "ledger", "l3"] {
        let p = dir.join("data").join(part);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("wipe");
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

async fn get(url: &str, class: &str, key: &str) -> (u16, Value) {
    call(Method::GET, &format!("{url}/api/v1/memory/{class}/{key}"), None, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_wipe_restore_gives_back_the_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..40 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    put(&server.url, "legal", "contract", 7).await;
    // Online, through the server.
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).expect("manifest");
    assert_eq!(m["records"], 41, "{m}");
    let size = m["ledger_size"].as_u64().expect("size");
    assert!(m["files"].as_array().expect("files").iter().all(|f| f["sha256"].as_str().map(str::len) == Some(64)));
    assert!(!m.to_string().contains("master.key") && !m.to_string().contains("ledger_signing.key"), "{m}");
    // Later writes are not in it.
    for i in 40..50 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    put(&server.url, "chat", "k0", 999).await;
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "list", "--json"]));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&o)).expect("list").as_array().map(Vec::len), Some(1));
    // A restore while serving goes through the server's admin API, which needs an ops key.
    let o = run(daena(tmp.path()).args(["snapshot", "restore", "latest"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("DAENA_API_KEY"), "{}", stderr(&o));
    server.stop();

    // A damaged archive is refused before anything is touched.
    let archive = std::fs::read_dir(tmp.path().join("data/snapshots"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .expect("archive");
    let mut bytes = std::fs::read(&archive).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = tmp.path().join("bad.tar.zst");
    std::fs::write(&bad, bytes).expect("write");
    let o = run(daena(tmp.path()).args(["snapshot", "restore", bad.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1));
    assert!(!tmp.path().join("data/replaced").exists(), "nothing replaced: {}", stderr(&o));

    // Wipe the state, ledger and cold tier; restore.
    wipe(tmp.path());
    let o = run(daena(tmp.path()).args(["snapshot", "restore", "latest", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let o = run(daena(tmp.path()).args(["ledger", "verify", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("verify");
    assert!(v["entries"].as_u64().unwrap_or(0) >= size, "{v}");

    let server = Server::start(tmp.path(), &[]);
    for i in 0..40u64 {
        let (status, body) = get(&server.url, "chat", &format!("k{i}")).await;
        assert_eq!(status, 200, "k{i}");
        assert_eq!(body["payload"]["n"], i, "k{i} as at the snapshot: {body}");
    }
    for i in 40..50 {
        assert_eq!(get(&server.url, "chat", &format!("k{i}")).await.0, 404, "k{i} came after the snapshot");
    }
    // The ledger's first `size` entries are the snapshot's: the same Merkle root.
    let (_, proof) =
        call(Method::GET, &format!("{}/api/v1/ledger/proof/consistency?from={size}", server.url), None, None).await;
    assert_eq!(proof["root_from"], m["ledger_root"], "{proof}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_passes_on_a_healthy_store_and_fails_on_a_corrupted_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..30 {
        put(&server.url, "chat", &format!("d{i}"), i).await;
    }
    let report = tmp.path().join("drill_report.json");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["drill", "--out", report.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["records"], 30);
    assert_eq!(r["sampled_reads"], 30);
    assert!(r["rto_seconds"].as_f64().unwrap_or(-1.0) > 0.0);
    assert!(!std::path::Path::new(r["scratch_dir"].as_str().expect("scratch")).exists(), "scratch removed");
    // The outcome is in the ledger.
    let (_, entries) = call(Method::GET, &format!("{}/api/v1/ledger/entries?limit=1000", server.url), None, None).await;
    assert!(entries.to_string().contains("ops.drill"), "{entries}");
    server.stop();

    // Corrupt one byte inside a ledger entry: the drill fails and says where.
    let seg = std::fs::read_dir(tmp.path().join("data/ledger"))
        .expect("ledger")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-")))
        .expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = bytes.windows(6).position(|w| w == b"\"key\":").expect("an entry with a key") + 8;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, bytes).expect("write");
    let o = run(daena(tmp.path()).args(["drill", "--out", report.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(r["passed"], false, "{r}");
    assert!(r["checks"].as_array().expect("checks").iter().any(|c| c["status"] == "FAIL"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_sequence_number_gives_the_state_at_that_point() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..20 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // After the snapshot: five overwrites, then the point, then more that must go away.
    for i in 0..5 {
        put(&server.url, "chat", &format!("k{i}"), 100 + i).await;
    }
    // A tenant whose first write comes after the snapshot: its data key is not in it.
    let late = format!("{}/api/v1/memory/chat/late", server.url);
    let (status, _) = call(Method::PUT, &late, Some("newco"), Some(&json!({"payload": {"n": 1}}))).await;
    assert!((200..300).contains(&status));
    let point = ledger_size(&server.url).await;
    for i in 5..10 {
        put(&server.url, "chat", &format!("k{i}"), 100 + i).await;
    }
    for i in 20..25 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let (status, _) = call(Method::DELETE, &format!("{}/api/v1/memory/chat/k19", server.url), None, None).await;
    assert!((200..300).contains(&status));
    let after = ledger_size(&server.url).await;
    server.stop();

    let o = run(daena(tmp.path()).args(["rollback", "--to", &(after + 5).to_string()]));
    assert_eq!(o.status.code(), Some(1), "a point after the end is refused");
    let o = run(daena(tmp.path()).args(["rollback", "--to", &point.to_string(), "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["to_seq"], point);
    // ops.snapshot, five overwrites and the late tenant's write.
    assert_eq!(report["replayed_entries"], 7, "{report}");
    assert_eq!(report["set_aside_entries"], after - point);

    let server = Server::start(tmp.path(), &[]);
    let (status, _) = call(Method::GET, &format!("{}/api/v1/memory/chat/late", server.url), Some("newco"), None).await;
    assert_eq!(status, 200, "the late tenant's record reads after the rollback");
    for i in 0..25u64 {
        let (status, body) = get(&server.url, "chat", &format!("k{i}")).await;
        let expected = match i {
            0..5 => Some(100 + i),
            5..20 => Some(i),
            _ => None,
        };
        match expected {
            Some(n) => {
                assert_eq!(status, 200, "k{i}");
                assert_eq!(body["payload"]["n"], n, "k{i} as at entry {point}: {body}");
            }
            None => assert_eq!(status, 404, "k{i} did not exist at entry {point}"),
        }
    }
}

async fn all_records(url: &str) -> Vec<(String, String, Value, Value)> {
    let (_, page) = call(Method::GET, &format!("{url}/api/v1/memory?limit=1000"), None, None).await;
    let mut out = Vec::new();
    for item in page["items"].as_array().expect("items") {
        let (class, key) = (item["class"].as_str().expect("class"), item["key"].as_str().expect("key"));
        let (status, body) = get(url, class, key).await;
        assert_eq!(status, 200);
        out.push((
            class.to_owned(),
            key.to_owned(),
            json!([item["version"], item["content_sha256"]]),
            body["payload"].clone(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_snapshot_and_a_ledger_rebuilds_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..15 {
        put(&server.url, "chat", &format!("r{i}"), i).await;
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).expect("manifest");
    for i in 0..6 {
        put(&server.url, "chat", &format!("r{i}"), 50 + i).await;
    }
    for i in 15..22 {
        put(&server.url, "ops_log", &format!("r{i}"), i).await;
    }
    let (status, _) = call(Method::DELETE, &format!("{}/api/v1/memory/chat/r14", server.url), None, None).await;
    assert!((200..300).contains(&status));
    let before = all_records(&server.url).await;
    assert_eq!(before.len(), 21);
    server.stop();

    // The ledger and the snapshot kept elsewhere; the data directory loses its state.
    let offsite = tmp.path().join("offsite");
    std::fs::create_dir_all(offsite.join("ledger")).expect("offsite");
    for e in std::fs::read_dir(tmp.path().join("data/ledger")).expect("ledger") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, offsite.join("ledger").join(p.file_name().expect("name"))).expect("copy");
    }
    let archive = tmp.path().join("data/snapshots").join(format!("{}.tar.zst", m["name"].as_str().expect("name")));
    std::fs::copy(&archive, offsite.join("snap.tar.zst")).expect("copy");
    std::fs::remove_dir_all(tmp.path().join("data/snapshots")).expect("wipe");
    std::fs::remove_dir_all(tmp.path().join("data/ledger")).expect("wipe");
    std::fs::remove_file(tmp.path().join("data/state.redb")).expect("wipe");

    let o = run(daena(tmp.path()).args([
        "replay",
        "--ledger",
        offsite.join("ledger").to_str().expect("path"),
        "--from-snapshot",
        offsite.join("snap.tar.zst").to_str().expect("path"),
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert!(report["replayed_entries"].as_u64().unwrap_or(0) >= 14, "{report}");

    let server = Server::start(tmp.path(), &[]);
    let after = all_records(&server.url).await;
    assert_eq!(before, after, "record by record: version, content hash and payload");
}

async fn last_entry(url: &str) -> Value {
    let size = ledger_size(url).await;
    let (_, page) = call(Method::GET, &format!("{url}/api/v1/ledger/entries?from={size}&limit=1"), None, None).await;
    page["entries"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_rollback_through_the_running_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..20 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).expect("manifest");
    for i in 20..30 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    put(&server.url, "chat", "k0", 999).await;

    // Clients keep calling through the maintenance window: they get answers, 503 while closed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (url, stop) = (server.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut unavailable_code = true;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r =
                    common::client().get(format!("{url}/api/v1/memory/chat/k1")).header("X-API-Key", OPS).send().await;
                if let Ok(r) = r {
                    let status = r.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    if status == 503 {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        unavailable_code &= body["error"]["code"] == "unavailable";
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (statuses, unavailable_code)
        })
    };
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "restore", "latest", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}\n{}", stdout(&o), stderr(&o), server.log_text());
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["manifest"]["records"], 20, "{report}");
    assert!(stderr(&o).contains(": done"), "phases are shown: {}", stderr(&o));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (statuses, unavailable_code) = poller.await.expect("poller");
    eprintln!("statuses through the restore: {statuses:?}");
    assert!(statuses.keys().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(unavailable_code, "503s carry the unavailable code");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");

    // The same process serves the snapshot's state, and its ledger continues the snapshot's.
    let (status, body) = get(&server.url, "chat", "k0").await;
    assert_eq!((status, body["payload"]["n"].clone()), (200, json!(0)), "{body}");
    assert_eq!(get(&server.url, "chat", "k25").await.0, 404);
    let size = m["ledger_size"].as_u64().expect("size");
    let (_, proof) =
        call(Method::GET, &format!("{}/api/v1/ledger/proof/consistency?from={size}", server.url), None, None).await;
    assert_eq!(proof["root_from"], m["ledger_root"], "{proof}");
    assert_eq!(last_entry(&server.url).await["action"], "ops.restore");
    let (_, ops) = call(Method::GET, &format!("{}/api/v1/admin/operations", server.url), None, None).await;
    assert_eq!(ops[0]["kind"], "restore", "{ops}");
    assert_eq!(ops[0]["state"], "succeeded", "{ops}");
    assert!(ops[0]["downtime_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{ops}");

    // A bad point is refused before the server stops serving.
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["rollback", "--to", "100000"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not before it"), "{}", stderr(&o));
    // A damaged archive fails in the window and the unchanged state is served again.
    let archive = tmp.path().join("data/snapshots").join(format!("{}.tar.zst", m["name"].as_str().expect("name")));
    let mut bytes = std::fs::read(&archive).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = tmp.path().join("bad.tar.zst");
    std::fs::write(&bad, bytes).expect("write");
    put(&server.url, "chat", "kept", 1).await;
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "restore", bad.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("failed"), "{}", stderr(&o));
    assert_eq!(get(&server.url, "chat", "kept").await.0, 200, "nothing replaced");
    assert_eq!(last_entry(&server.url).await["attrs"]["outcome"], "failed");

    // Rollback through the server to a sequence number.
    for i in 30..35 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let point = ledger_size(&server.url).await;
    for i in 35..40 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["rollback", "--to", &point.to_string(), "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}\n{}", stdout(&o), stderr(&o), server.log_text());
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["to_seq"], point);
    assert_eq!(report["set_aside_entries"], 5, "{report}");
    assert_eq!(get(&server.url, "chat", "k34").await.0, 200);
    assert_eq!(get(&server.url, "chat", "kept").await.0, 200);
    assert_eq!(get(&server.url, "chat", "k35").await.0, 404);
    assert_eq!(ledger_size(&server.url).await, point + 1, "the rollback itself is the next entry");
    assert_eq!(last_entry(&server.url).await["action"], "ops.rollback");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["ledger", "verify", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.stop().code(), Some(0));
}

/// With `storage.l3_path` the cold tier lives outside the data directory; a snapshot still
/// carries it, and a restore on a new machine (data directory and cold path both empty) reads
/// every archived record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_cold_tier_wherever_storage_l3_path_puts_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cold = tmp.path().join("cold-volume");
    std::fs::create_dir_all(tmp.path().join("config")).expect("config dir");
    std::fs::write(
        tmp.path().join("config/daena.toml"),
        format!("[storage]\nl3_path = {:?}\n", cold.display().to_string()),
    )
    .expect("write");
    std::fs::write(
        tmp.path().join("config/memory_config.yaml"),
        "aging:\n  interval_minutes: 0\n  rules:\n    - after_days: 0\n      action: archive\n",
    )
    .expect("write");
    let server = Server::start(tmp.path(), &[]);
    for i in 0..5 {
        put(&server.url, "chat", &format!("k{i}"), i).await;
    }
    let (status, report) =
        call(Method::POST, &format!("{}/api/v1/admin/aging/run", server.url), None, Some(&json!({}))).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["archived"], 5, "{report}");
    assert!(std::fs::read_dir(&cold).expect("cold dir").count() > 0, "the cold tier is at storage.l3_path");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["snapshot", "create", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A drill restores into its scratch directory only: the live cold volume is left as it is,
    // and the archived records read back from the snapshot's own cold tier.
    let listing = |dir: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        // Names, lengths and inodes: a file put back in place by a restore is another file.
        let mut files: Vec<(String, u64, u64)> = std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| {
                let (len, ino) = e.metadata().map_or((0, 0), |m| (m.len(), m.ino()));
                (e.file_name().to_string_lossy().into_owned(), len, ino)
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&cold);
    let report = tmp.path().join("drill_report.json");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["drill", "--out", report.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!((r["passed"].clone(), r["sampled_reads"].clone()), (json!(true), json!(5)), "{r}");
    assert_eq!(listing(&cold), before, "the drill left the live cold volume alone");
    server.stop();

    // A new machine: the snapshot archive is all that is left.
    wipe(tmp.path());
    std::fs::remove_dir_all(&cold).expect("wipe the cold volume");
    let o = run(daena(tmp.path()).args(["snapshot", "restore", "latest", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let server = Server::start(tmp.path(), &[]);
    for i in 0..5u64 {
        let (status, body) = get(&server.url, "chat", &format!("k{i}")).await;
        assert_eq!((status, &body["payload"]["n"]), (200, &json!(i)), "k{i}: {body}");
    }
}
