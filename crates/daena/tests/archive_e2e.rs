//! `daena archive`: export from one server, verify, import into another; every record of
//! every tenant arrives intact, and a tampered archive is refused before anything is written.

mod common;

use common::{OPS, Server, call, daena, run, stderr, stdout};
use reqwest::Method;
use serde_json::{Value, json};

async fn put(url: &str, tenant: &str, key: &str, payload: Value) {
    let body = json!({"payload": payload, "meta": {"agent": "product_synth"}});
    let (status, r) =
        call(Method::PUT, &format!("{url}/api/v1/memory/research_note/{key}"), Some(tenant), Some(&body)).await;
    assert!((200..300).contains(&status), "{status} {r}");
}

async fn get(url: &str, tenant: &str, key: &str) -> Value {
    let (status, body) =
        call(Method::GET, &format!("{url}/api/v1/memory/research_note/{key}"), Some(tenant), None).await;
    assert!((200..300).contains(&status), "{tenant}/{key}: {status}");
    body
}

/// `daena archive export --out out --json` against the server holding `dir`: its summary.
fn export(dir: &std::path::Path, out: &std::path::Path) -> Value {
    let o = run(daena(dir).env("DAENA_API_KEY", OPS).args([
        "archive",
        "export",
        "--out",
        out.to_str().expect("path"),
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verify_import_round_trip() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a = Server::start(a_dir.path(), &[]);
    let mut expected = Vec::new();
    for (t, n) in [("default", 12), ("acme", 7)] {
        for i in 0..n {
            let payload =
                json!({"finding": format!("{t} note {i}"), "score": i, "tags": ["q4", "risk"], "unicode": "naïve ✓"});
            put(&a.url, t, &format!("n{i}"), payload.clone()).await;
            expected.push((t, format!("n{i}"), payload));
        }
    }
    let out = a_dir.path().join("backup");
    let s = export(a_dir.path(), &out);
    assert_eq!(s["records"], 19, "{s}");
    assert_eq!(s["tenants"], json!(["acme", "default"]));
    let file = std::path::PathBuf::from(s["path"].as_str().expect("path"));
    assert!(
        file.starts_with(&out) && file.file_name().is_some_and(|n| n.to_string_lossy().starts_with("legacy_archive_")),
        "{s}"
    );

    let o = run(daena(a_dir.path()).args(["archive", "verify", file.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // One payload changed inside an otherwise valid archive: refused, naming the record.
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(&file).expect("open")).expect("zstd")).expect("utf8");
    let tampered = text.replacen("default note 3", "default note 9", 1);
    assert_ne!(text, tampered);
    let bad = a_dir.path().join("tampered.json.zst");
    std::fs::write(&bad, zstd::encode_all(tampered.as_bytes(), 3).expect("zstd")).expect("write");
    let o = run(daena(a_dir.path()).args(["archive", "verify", bad.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("default/research_note/n3"), "{}", stderr(&o));
    // Cut short: refused.
    let short = a_dir.path().join("short.json.zst");
    let cut: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    std::fs::write(&short, zstd::encode_all(cut.as_bytes(), 3).expect("zstd")).expect("write");
    let o = run(daena(a_dir.path()).args(["archive", "verify", short.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no trailer"), "{}", stderr(&o));

    // Into a fresh server; the tampered archive writes nothing.
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = Server::start(b_dir.path(), &[]);
    let o = run(daena(b_dir.path()).env("DAENA_API_KEY", OPS).args(["archive", "import", bad.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1));
    let (status, _) = call(Method::GET, &format!("{}/api/v1/memory/research_note/n0", b.url), None, None).await;
    assert_eq!(status, 404, "nothing imported from a bad archive");
    // Signed by A: B refuses it, naming the key it expected, unless A's key is pinned.
    let o =
        run(daena(b_dir.path()).env("DAENA_API_KEY", OPS).args(["archive", "import", file.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not by the expected key") && stderr(&o).contains(&public_key(b_dir.path())),
        "{}",
        stderr(&o)
    );
    let o = run(daena(b_dir.path()).env("DAENA_API_KEY", OPS).args([
        "archive",
        "import",
        file.to_str().expect("path"),
        "--public-key",
        &public_key(a_dir.path()),
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (t, key, payload) in &expected {
        let got = get(&b.url, t, key).await;
        assert_eq!(&got["payload"], payload, "{t}/{key}");
    }
}

/// Whether `tenant`'s legal record `key` at `url` is in quarantine.
async fn quarantined(url: &str, key: &str) -> bool {
    let (status, body) = call(Method::GET, &format!("{url}/api/v1/memory/legal/{key}"), None, None).await;
    assert_eq!(status, 200, "legal/{key}: {body}");
    body["trust"]["quarantined"].as_bool().expect("trust.quarantined")
}

/// A data directory's signing public key (hex), as the ledger publishes it.
fn public_key(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("data/ledger/signing_key.pub")).expect("public key").trim().to_owned()
}

async fn ledgered_promotions(url: &str) -> Vec<Value> {
    let (status, body) = call(Method::GET, &format!("{url}/api/v1/ledger/entries?limit=1000"), None, None).await;
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "memory.promote")
        .map(|e| e["attrs"]["key"].clone())
        .collect()
}

/// Only an archive signed by this deployment brings promotions out of quarantine back: one
/// from another deployment (its key pinned) or accepted unsigned leaves every record of a
/// quarantined class in quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_promotes_only_what_this_deployment_signed() {
    // legal is quarantined on write by default; one record is promoted by a reviewer.
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a = Server::start(a_dir.path(), &[]);
    for key in ["contract-1", "contract-2"] {
        let body = json!({"payload": {"clause": format!("{key}: net-30, renews yearly")}});
        let (status, r) = call(Method::PUT, &format!("{}/api/v1/memory/legal/{key}", a.url), None, Some(&body)).await;
        assert!((200..300).contains(&status), "{status} {r}");
    }
    let (status, r) =
        call(Method::POST, &format!("{}/api/v1/memory/legal/contract-1/promote", a.url), None, None).await;
    assert_eq!(status, 200, "{r}");
    assert!(!quarantined(&a.url, "contract-1").await);
    let out = a_dir.path().join("backup");
    let s = export(a_dir.path(), &out);
    let file = s["path"].as_str().expect("path").to_owned();

    // Another deployment, A's key pinned (through a running server), and offline, unsigned.
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = Server::start(b_dir.path(), &[]);
    let o = run(daena(b_dir.path()).env("DAENA_API_KEY", OPS).args([
        "archive",
        "import",
        &file,
        "--public-key",
        &public_key(a_dir.path()),
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("stay in quarantine"), "{}", stderr(&o));
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(&file).expect("open")).expect("zstd")).expect("utf8");
    let unsigned: String = text
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("line");
            if let Some(t) = v.get_mut("trailer").and_then(Value::as_object_mut) {
                t.remove("signature");
            }
            format!("{v}\n")
        })
        .collect();
    let unsigned_file = b_dir.path().join("unsigned.json.zst");
    std::fs::write(&unsigned_file, zstd::encode_all(unsigned.as_bytes(), 3).expect("zstd")).expect("write");
    let c_dir = tempfile::tempdir().expect("tempdir");
    let o = run(daena(c_dir.path()).args(["archive", "import", unsigned_file.to_str().expect("path")]));
    assert_eq!(o.status.code(), Some(1), "unsigned is refused");
    assert!(stderr(&o).contains("is not signed"), "{}", stderr(&o));
    let o =
        run(daena(c_dir.path()).args(["archive", "import", unsigned_file.to_str().expect("path"), "--trust-unsigned"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c = Server::start(c_dir.path(), &[]);
    for url in [&b.url, &c.url] {
        assert!(quarantined(url, "contract-1").await, "{url}: a promotion made elsewhere is not taken over");
        assert!(quarantined(url, "contract-2").await, "{url}");
        assert!(ledgered_promotions(url).await.is_empty(), "{url}");
    }

    // Back into A itself (after the records are deleted): its own archive promotes again.
    for key in ["contract-1", "contract-2"] {
        let (status, r) = call(Method::DELETE, &format!("{}/api/v1/memory/legal/{key}", a.url), None, None).await;
        assert_eq!(status, 200, "{r}");
    }
    let o = run(daena(a_dir.path()).env("DAENA_API_KEY", OPS).args(["archive", "import", &file]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!quarantined(&a.url, "contract-1").await, "promoted again");
    assert!(quarantined(&a.url, "contract-2").await);
    assert_eq!(
        ledgered_promotions(&a.url).await,
        [json!("contract-1"), json!("contract-1")],
        "the reviewer's and the import's"
    );
}
