//! Ledger routes: head, tenant-scoped entries, proofs that verify, checkpoints, legacy genesis.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{OPS, TestApp};
use daena_core::merkle;

fn h(s: &serde_json::Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.as_str().expect("hex string"), &mut out).expect("hex");
    out
}

#[tokio::test]
async fn governance_actions_are_ledgered_and_provable() {
    let app = TestApp::new();
    let acme = app.key("acme-bot", "agent", "acme", &[]).await;
    app.key("globex-bot", "agent", "globex", &[]).await;
    let r = app.call("PUT", "/api/v1/admin/writes", Some(OPS), Some(serde_json::json!({"enabled": false}))).await;
    assert_eq!(r.status, StatusCode::OK);

    let head = app.call("GET", "/api/v1/ledger/head", Some(OPS), None).await.json();
    assert_eq!(head["size"], 3, "{head}");
    let all = app.call("GET", "/api/v1/ledger/entries", Some(OPS), None).await.json();
    let actions: Vec<&str> =
        all["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["key.create", "key.create", "admin.writes"]);
    assert!(!all.to_string().contains("dk_"), "no key material in the ledger");

    // An agent key only sees its tenant's entries, and cannot ask for another tenant's.
    let mine = app.call("GET", "/api/v1/ledger/entries", Some(&acme), None).await.json();
    let tenants: Vec<&str> =
        mine["entries"].as_array().expect("entries").iter().filter_map(|e| e["tenant"].as_str()).collect();
    assert_eq!(tenants, ["acme"]);
    let r = app.call("GET", "/api/v1/ledger/entries?tenant=globex", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Inclusion proofs verify against the root the head reports.
    let root = h(&head["root"]);
    for seq in 1..=3u64 {
        let p = app.call("GET", &format!("/api/v1/ledger/proof/inclusion?seq={seq}"), Some(OPS), None).await.json();
        let proof: Vec<[u8; 32]> = p["proof"].as_array().expect("proof").iter().map(h).collect();
        assert!(merkle::verify_inclusion(&h(&p["leaf_hash"]), seq - 1, 3, &proof, &root), "{p}");
        assert_eq!(merkle::leaf_hash(&h(&p["entry_hash"])), h(&p["leaf_hash"]));
    }
    let c = app.call("GET", "/api/v1/ledger/proof/consistency?from=1&to=3", Some(OPS), None).await.json();
    let proof: Vec<[u8; 32]> = c["proof"].as_array().expect("proof").iter().map(h).collect();
    assert!(merkle::verify_consistency(1, 3, &proof, &h(&c["root_from"]), &h(&c["root_to"])));
    // Past the ledger's end: nothing there yet.
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=9", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=0", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=abc", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn checkpoints_are_signed_and_fresh_ones_need_ops() {
    let app = TestApp::new();
    app.key("bot", "agent", "acme", &[]).await;
    let auditor = app.key("aud", "auditor", "default", &[]).await;
    let r = app.call("GET", "/api/v1/ledger/checkpoint?fresh=true", Some(&auditor), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let cp = app.call("GET", "/api/v1/ledger/checkpoint?fresh=true", Some(OPS), None).await.json();
    assert_eq!(cp["size"], 2);
    let view: daena_app::ledger::CheckpointView = serde_json::from_value(cp.clone()).expect("view");
    view.to_checkpoint().verify(None).expect("signature verifies");
    let head = app.call("GET", "/api/v1/ledger/head", Some(&auditor), None).await.json();
    assert_eq!(head["checkpoint"]["size"], 2);
    assert_eq!(head["checkpoint"]["root"], head["root"]);
    assert_eq!(head["public_key"], cp["public_key"]);
}

const LEGACY: &str = include_str!("../../core/tests/fixtures/legacy_ledger.jsonl");

async fn import(app: &TestApp, body: &str) -> common::Resp {
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/admin/ledger/import-legacy")
        .header("x-api-key", OPS)
        .header("content-type", "application/x-ndjson")
        .body(Body::from(body.to_owned()))
        .expect("request");
    app.send(req).await
}

#[tokio::test]
async fn legacy_ledger_becomes_genesis_of_an_empty_ledger_only() {
    let app = TestApp::new();
    let r = import(&app, &LEGACY.replace("\"records_rotated\": 12", "\"records_rotated\": 99")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a tampered legacy ledger is refused: {}", r.text());
    assert!(r.text().contains("line 6"));
    let r = import(&app, LEGACY).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["legacy_merkle_root"], "967c68238f434cf63d5142d1abe13678236a896f2b1f8eb442d3918fc139edb9");
    let e = app.call("GET", "/api/v1/ledger/entries", Some(OPS), None).await.json();
    assert_eq!(e["entries"][0]["action"], "ledger.import_legacy");
    assert_eq!(e["entries"][0]["attrs"]["legacy_entries"], 6);
    let r = import(&app, LEGACY).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "only once, as genesis");
}

/// An agent key sees its tenant's view: its entries, and proofs of them against the newest
/// signed checkpoint; the global head and consistency proofs are for ops and auditors. An
/// auditor reads its own tenant's entries unless granted every tenant.
#[tokio::test]
async fn agents_get_their_tenants_view_of_the_ledger() {
    let app = TestApp::new();
    let acme = app.key("acme-bot", "agent", "acme", &[]).await;
    app.key("globex-bot", "agent", "globex", &[]).await;
    let r = app.call("PUT", "/api/v1/memory/chat/k", Some(&acme), Some(serde_json::json!({"payload": 1}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mine = app.call("GET", "/api/v1/ledger/entries", Some(&acme), None).await.json();
    let seqs: Vec<u64> =
        mine["entries"].as_array().expect("entries").iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 3], "key.create of acme-bot and its write");

    assert_eq!(app.call("GET", "/api/v1/ledger/head", Some(&acme), None).await.status, StatusCode::FORBIDDEN);
    let r = app.call("GET", "/api/v1/ledger/proof/consistency?from=1&to=2", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=2", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "globex's entry: {}", r.text());
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=3", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "not yet under a checkpoint: {}", r.text());
    assert!(r.text().contains("not yet covered by a signed checkpoint"), "{}", r.text());
    let cp = app.call("GET", "/api/v1/ledger/checkpoint?fresh=true", Some(OPS), None).await.json();
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=1&size=2", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the size is the checkpoint's");
    let cp_size = cp["size"].as_u64().expect("size");
    assert!(cp_size >= 3);
    let p = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=3", Some(&acme), None).await.json();
    assert_eq!((p["size"].as_u64(), &p["root"]), (Some(cp_size), &cp["root"]), "{p}");
    let proof: Vec<[u8; 32]> = p["proof"].as_array().expect("proof").iter().map(h).collect();
    assert!(merkle::verify_inclusion(&h(&p["leaf_hash"]), 2, cp_size, &proof, &h(&cp["root"])));

    let auditor = app.key("aud", "auditor", "acme", &[]).await;
    assert_eq!(app.call("GET", "/api/v1/ledger/head", Some(&auditor), None).await.status, StatusCode::OK);
    let r = app.call("GET", "/api/v1/ledger/entries?tenant=globex", Some(&auditor), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.call_as("GET", "/api/v1/analytics/summary", Some(&auditor), Some("globex"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let body = serde_json::json!({"name": "aud-all", "role": "auditor", "tenant": "acme", "all_tenants": true});
    let granted = app.call("POST", "/api/v1/admin/keys", Some(OPS), Some(body)).await.json();
    let granted = granted["key"].as_str().expect("key").to_owned();
    let r = app.call("GET", "/api/v1/ledger/entries?tenant=globex", Some(&granted), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call_as("GET", "/api/v1/analytics/summary", Some(&granted), Some("globex"), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The full verification runs on demand (and in the background), says what it verified, and
/// a ledger changed on disk makes it fail and /health unhealthy.
#[tokio::test]
async fn the_full_verification_checks_and_health_reports_it() {
    let app = TestApp::new();
    assert_eq!(app.call("GET", "/api/v1/ledger/verification", Some(OPS), None).await.json(), serde_json::Value::Null);
    for i in 0..5 {
        let r = app
            .call("PUT", &format!("/api/v1/memory/chat/k{i}"), Some(OPS), Some(serde_json::json!({"payload": i})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    app.call("GET", "/api/v1/ledger/checkpoint?fresh=true", Some(OPS), None).await;
    let v = app.call("POST", "/api/v1/ledger/verification", Some(OPS), None).await.json();
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64(), v["checkpoints_verified"].as_u64()),
        (Some(true), Some(5), Some(1)),
        "{v}"
    );
    let h = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(h["checks"]["ledger_verified"]["status"], "pass", "{h}");
    assert_eq!(h["checks"]["upstream"]["status"], "pass", "none configured: {h}");
    let agent = app.key("bot", "agent", "acme", &[]).await;
    assert_eq!(app.call("POST", "/api/v1/ledger/verification", Some(&agent), None).await.status, StatusCode::FORBIDDEN);

    // One byte of entry 3 changed on disk.
    let dir = app.daena.data().ledger_dir();
    let seg = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-")))
        .expect("segment");
    let text = std::fs::read_to_string(&seg).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let changed = lines[2].replacen("\"seq\":3", "\"seq\":3 ", 1);
    assert_ne!(changed, lines[2]);
    let tampered = text.replacen(lines[2], &changed, 1);
    std::fs::write(&seg, tampered).expect("write");
    let v = app.call("POST", "/api/v1/ledger/verification", Some(OPS), None).await.json();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["failure"].as_str().is_some_and(|f| f.starts_with("entry 3")), "{v}");
    let r = app.call("GET", "/health", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["checks"]["ledger_verified"]["status"], "fail");
}

/// The upstream is probed: an answer of any status is reachable, a refused connection is not.
#[tokio::test]
async fn the_upstream_probe_feeds_health() {
    let up = common::FakeUpstream::start().await;
    let app = TestApp::with_config(|c| c.llm.upstream_url = Some(up.url.clone()));
    daena_app::checks::probe_upstream(&app.daena).await;
    let h = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(h["checks"]["upstream"]["status"], "pass", "{h}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let app = TestApp::with_config(|c| c.llm.upstream_url = Some(format!("http://{closed}/v1")));
    daena_app::checks::probe_upstream(&app.daena).await;
    let h = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(h["checks"]["upstream"]["status"], "warn", "{h}");
    assert!(h["checks"]["upstream"]["detail"].as_str().is_some_and(|d| d.contains("cannot be reached")), "{h}");
}
