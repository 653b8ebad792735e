//! Damage at rest: bytes flipped in a cold (L3) segment. The damaged record is refused with an
//! error that says so, never served wrong; its neighbours in the same segment still read; and
//! `daena key validate`'s check counts it as unreadable.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::json;

const DAY: i64 = 86_400 * 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_cold_segment_is_refused_not_served() {
    let app = TestApp::new();
    for k in ["first", "second", "third"] {
        let body = json!({"payload": {"text": format!("cold record {k}"), "pad": "x".repeat(200)}});
        let r = app.call("PUT", &format!("/api/v1/memory/chat/{k}"), Some(OPS), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    app.clock.advance(91 * DAY);
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!(rep["archived"], 3, "{rep}");
    app.daena.memory().l1.clear();
    let r = app.call("GET", "/api/v1/memory/chat/second", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L3", "{}", r.text());

    // The settler writes cold bodies into the segment behind the commit.
    app.daena.commit().settle().await.expect("settle");
    // Flip one byte in the middle of the segment: inside one record's sealed envelope.
    let segments: Vec<_> = std::fs::read_dir(app.daena.data().l3_dir())
        .expect("l3 dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).expect("segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&segments[0], &bytes).expect("write");
    app.daena.memory().l1.clear();

    let mut refused = Vec::new();
    for k in ["first", "second", "third"] {
        let r = app.call("GET", &format!("/api/v1/memory/chat/{k}"), Some(OPS), None).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.json()["payload"]["text"], format!("cold record {k}"), "served, and right");
        } else {
            assert!(r.status.is_server_error(), "{k}: {} {}", r.status, r.text());
            let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
            assert!(message.contains("corrupt"), "{k}: {message}");
            refused.push(k);
        }
    }
    assert_eq!(refused.len(), 1, "exactly the damaged record is refused: {refused:?}");

    let v = app.call("POST", "/api/v1/admin/key-validation", Some(OPS), None).await.json();
    assert_eq!((v["ok"].clone(), v["unreadable_count"].clone()), (json!(false), json!(1)), "{v}");
}
