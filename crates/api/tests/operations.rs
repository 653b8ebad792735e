//! Long operations through the admin API: a re-encryption running in the background and
//! polled to its end, and maintenance requests refused where no `daena serve` can run them.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::{Value, json};

async fn wait(app: &TestApp, op: Value) -> Value {
    let id = op["id"].as_str().expect("id").to_owned();
    for _ in 0..500 {
        let r = app.call("GET", &format!("/api/v1/admin/operations/{id}"), Some(OPS), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let op = r.json();
        if op["state"] != "running" {
            return op;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("operation {id} did not end");
}

#[tokio::test]
async fn reseal_finishes_what_an_interrupted_rotation_left() {
    let app = TestApp::new();
    for i in 0..30 {
        let r =
            app.call("PUT", &format!("/api/v1/memory/chat/r{i}"), Some(OPS), Some(json!({"payload": {"i": i}}))).await;
        assert!(r.status.is_success());
    }
    // What a crash after the new data key versions and before the re-encryption leaves.
    app.daena.governance().data_keys().new_data_key_versions().expect("new versions");
    let v = app.call("POST", "/api/v1/admin/key-validation", Some(OPS), None).await.json();
    assert_eq!((v["ok"].as_bool(), v["records_under_old_data_keys"].as_u64()), (Some(false), Some(30)), "{v}");

    let r = app.call("POST", "/api/v1/admin/key-reseal", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let op = wait(&app, r.json()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["kind"], "key.reseal");
    assert_eq!(op["result"]["resealed"], 30, "{op}");
    assert_eq!(op["result"]["errors"], 0, "{op}");
    let v = app.call("POST", "/api/v1/admin/key-validation", Some(OPS), None).await.json();
    assert_eq!((v["ok"].as_bool(), v["records_under_old_data_keys"].as_u64()), (Some(true), Some(0)), "{v}");
    let got = app.call("GET", "/api/v1/memory/chat/r7", Some(OPS), None).await.json();
    assert_eq!(got["payload"], json!({"i": 7}));
    // Listed, newest first; an agent key may not start one.
    let list = app.call("GET", "/api/v1/admin/operations", Some(OPS), None).await.json();
    assert_eq!(list[0]["id"], op["id"]);
    let agent = app.key("bot", "agent", "default", &[]).await;
    assert_eq!(app.call("POST", "/api/v1/admin/key-reseal", Some(&agent), None).await.status, StatusCode::FORBIDDEN);
    let r = app.call("GET", "/api/v1/admin/operations/op-nope", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn maintenance_needs_the_serve_loop_and_checks_its_input_first() {
    let app = TestApp::new();
    // Outside `daena serve` nothing can close the stores: a clear 503, nothing started.
    let r = app.call("POST", "/api/v1/admin/rollbacks", Some(OPS), Some(json!({"to": "1"}))).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{}", r.text());
    assert!(r.text().contains("daena serve"), "{}", r.text());
    let r = app.call("POST", "/api/v1/admin/restores", Some(OPS), Some(json!({"snapshot": "latest"}))).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "no snapshot yet: {}", r.text());
    let r = app.call("POST", "/api/v1/admin/restores", Some(OPS), Some(json!({"snapshot": "x", "extra": 1}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let list = app.call("GET", "/api/v1/admin/operations", Some(OPS), None).await.json();
    assert_eq!(list, json!([]));
}
