//! Governance that holds under recovery, with the real binary: a revoked key and a shredded
//! tenant stay so through rollback (to a point after them, replayed; or before them, carried
//! forward) and restore.

mod common;

use common::{OPS, Server, call, daena, ledger_size, run, stderr, stdout};
use reqwest::Method;
use serde_json::{Value, json};

/// Runs a CLI command against the running server; its stdout as JSON.
fn cli(dir: &std::path::Path, args: &[&str]) -> Value {
    let o = run(daena(dir).env("DAENA_API_KEY", OPS).args(args).arg("--json"));
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}\n{}", stdout(&o), stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&o)))
}

/// GET of a record with `key`, acting for `tenant` when given; the status.
async fn read(url: &str, key: &str, tenant: Option<&str>, path: &str) -> u16 {
    let mut req = common::client().get(format!("{url}{path}")).header("X-API-Key", key);
    if let Some(t) = tenant {
        req = req.header("X-Tenant-ID", t);
    }
    req.send().await.expect("request").status().as_u16()
}

async fn write(url: &str, key: &str, tenant: Option<&str>, path: &str) {
    let mut req =
        common::client().put(format!("{url}{path}")).header("X-API-Key", key).json(&json!({"payload": {"a": 1}}));
    if let Some(t) = tenant {
        req = req.header("X-Tenant-ID", t);
    }
    let status = req.send().await.expect("request").status().as_u16();
    assert!(status == 200 || status == 201, "PUT {path}: {status}");
}

async fn actions_after(url: &str, from: u64) -> Vec<Value> {
    let (_, page) = call(Method::GET, &format!("{url}/api/v1/ledger/entries?from={from}&limit=1000"), None, None).await;
    page["entries"].as_array().cloned().unwrap_or_default()
}

/// The scenario: agent key, write, snapshot, write, revoke, ops write, rollback to the
/// revocation. The revoked key stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_after_a_revocation_keeps_the_key_revoked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let created = cli(tmp.path(), &["keys", "create", "--name", "victim", "--role", "agent", "--tenant", "acme"]);
    let key = created["key"].as_str().expect("key").to_owned();
    write(&server.url, &key, None, "/api/v1/memory/chat/x").await;
    cli(tmp.path(), &["snapshot", "create"]);
    write(&server.url, &key, None, "/api/v1/memory/chat/y").await;
    cli(tmp.path(), &["keys", "revoke", created["id"].as_str().expect("id")]);
    assert_eq!(read(&server.url, &key, None, "/api/v1/memory/chat/x").await, 401);
    let seq = ledger_size(&server.url).await;
    write(&server.url, OPS, None, "/api/v1/memory/chat/z").await;
    let report = cli(tmp.path(), &["rollback", "--to", &seq.to_string()]);
    assert_eq!(report["to_seq"], seq, "{report}");
    assert_eq!(read(&server.url, &key, None, "/api/v1/memory/chat/x").await, 401, "revoked after the rollback");
    assert_eq!(read(&server.url, OPS, Some("acme"), "/api/v1/memory/chat/y").await, 200, "the replayed write");
    assert_eq!(read(&server.url, OPS, None, "/api/v1/memory/chat/z").await, 404, "set aside");
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["ledger", "verify"]));
    assert!(o.status.success(), "{}", stderr(&o));
    server.stop();
}

/// Going back to before a revocation and a shred (rollback, then restore) carries both
/// forward: they are applied and ledgered again, and the next open finds nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_shreds_are_carried_forward_past_rollback_and_restore() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let created = cli(tmp.path(), &["keys", "create", "--name", "globex-bot", "--role", "agent", "--tenant", "globex"]);
    let key = created["key"].as_str().expect("key").to_owned();
    write(&server.url, &key, None, "/api/v1/memory/chat/secret").await;
    write(&server.url, OPS, None, "/api/v1/memory/chat/kept").await;
    let snapshot = cli(tmp.path(), &["snapshot", "create"]);
    let point = snapshot["ledger_size"].as_u64().expect("position") + 1; // the ops.snapshot entry
    cli(tmp.path(), &["keys", "revoke", "globex-bot"]);
    cli(tmp.path(), &["key", "shred", "--tenant", "globex", "--confirm", "globex"]);
    assert_ne!(read(&server.url, OPS, Some("globex"), "/api/v1/memory/chat/secret").await, 200);

    let before = ledger_size(&server.url).await;
    let report = cli(tmp.path(), &["rollback", "--to", &point.to_string()]);
    assert_eq!(report["carried_forward"], 2, "{report}");
    assert_eq!(read(&server.url, &key, None, "/api/v1/memory/chat/secret").await, 401, "still revoked");
    assert_ne!(read(&server.url, OPS, Some("globex"), "/api/v1/memory/chat/secret").await, 200, "still shredded");
    assert_eq!(read(&server.url, OPS, None, "/api/v1/memory/chat/kept").await, 200, "other tenants unaffected");
    let entries = actions_after(&server.url, point + 1).await;
    let carried: Vec<&str> =
        entries.iter().filter(|e| e["attrs"]["carried_from"].is_u64()).filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(carried, ["key.revoke", "key.shred"], "ledgered again: {entries:?}");
    assert!(before > point);

    // A restore of the same snapshot: carried forward again (the rollback's ledger is replaced).
    let report = cli(tmp.path(), &["snapshot", "restore", "latest"]);
    assert_eq!(report["carried_forward"], 2, "{report}");
    assert_eq!(read(&server.url, &key, None, "/api/v1/memory/chat/secret").await, 401);
    assert_ne!(read(&server.url, OPS, Some("globex"), "/api/v1/memory/chat/secret").await, 200);

    // A restart has nothing left to carry: the facts are in the ledger and the state.
    let size = ledger_size(&server.url).await;
    server.stop();
    let server = Server::start(tmp.path(), &[]);
    assert_eq!(ledger_size(&server.url).await, size);
    assert_eq!(read(&server.url, &key, None, "/api/v1/memory/chat/secret").await, 401);
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["ledger", "verify"]));
    assert!(o.status.success(), "{}", stderr(&o));
    server.stop();
}

/// Snapshots carry the deployment's signature: another deployment restores one only with the
/// signer's key pinned, or with --trust-unsigned; a changed signature is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_signed_and_restores_check_the_signer() {
    const MASTER: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    let env = [("DAENA_MEMORY_AES_KEY", MASTER)];
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a = Server::start(a_dir.path(), &env);
    write(&a.url, OPS, None, "/api/v1/memory/chat/x").await;
    let m = cli(a_dir.path(), &["snapshot", "create"]);
    a.stop();
    let archive = a_dir.path().join("data/snapshots").join(format!("{}.tar.zst", m["name"].as_str().expect("name")));
    let a_key =
        std::fs::read_to_string(a_dir.path().join("data/ledger/signing_key.pub")).expect("key").trim().to_owned();

    let b_dir = tempfile::tempdir().expect("tempdir");
    Server::start(b_dir.path(), &env).stop(); // B has keys of its own
    let restore = |extra: &[&str]| {
        let mut cmd = daena(b_dir.path());
        cmd.env("DAENA_MEMORY_AES_KEY", MASTER).args(["snapshot", "restore"]).arg(&archive).args(extra);
        run(&mut cmd)
    };
    let o = restore(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let b_key =
        std::fs::read_to_string(b_dir.path().join("data/ledger/signing_key.pub")).expect("key").trim().to_owned();
    assert!(stderr(&o).contains(&format!("not by the expected key {b_key}")), "{}", stderr(&o));
    let o = restore(&["--public-key", &a_key, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["provenance"], "pinned", "{report}");

    // The same archive with its signature changed: refused even with the key pinned.
    let bytes = zstd::decode_all(std::fs::File::open(&archive).expect("open")).expect("zstd");
    let mut tar = tar::Archive::new(bytes.as_slice());
    let mut rebuilt = tar::Builder::new(Vec::new());
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
        if path == "manifest.sig" {
            let mut sig: Value = serde_json::from_slice(&data).expect("sig");
            let s = sig["signature"].as_str().expect("hex").to_owned();
            sig["signature"] = json!(format!("{}{}", if s.starts_with('0') { "1" } else { "0" }, &s[1..]));
            data = serde_json::to_vec(&sig).expect("json");
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        header.set_cksum();
        rebuilt.append_data(&mut header, &path, data.as_slice()).expect("append");
    }
    let forged = b_dir.path().join("forged.tar.zst");
    std::fs::write(&forged, zstd::encode_all(rebuilt.into_inner().expect("tar").as_slice(), 1).expect("zstd"))
        .expect("write");
    let mut cmd = daena(b_dir.path());
    cmd.env("DAENA_MEMORY_AES_KEY", MASTER).args(["snapshot", "restore"]).arg(&forged).args(["--public-key", &a_key]);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let mut cmd = daena(b_dir.path());
    cmd.env("DAENA_MEMORY_AES_KEY", MASTER)
        .args(["snapshot", "restore"])
        .arg(&forged)
        .args(["--trust-unsigned", "--json"]);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("report");
    assert_eq!(report["provenance"], "unverified", "{report}");
}
