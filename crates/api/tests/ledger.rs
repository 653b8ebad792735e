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
    let r = app.call("GET", "/api/v1/ledger/proof/inclusion?seq=9", Some(OPS), None).await;
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
