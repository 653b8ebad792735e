//! An upstream model that misbehaves: it hangs, resets the connection, answers garbage, or
//! answers a body past `llm.max_response_bytes`. Each is a clear 502 `upstream_error`, nothing
//! is cached, the cache's counters say so, and the next good answer is served and cached.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 upstream whose behaviour is named by the last message: `HANG`, `RESET`,
/// `GARBAGE`, `HUGE`; anything else gets a proper chat completion.
async fn faulty_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by its Content-Length.
                let (head_end, len) = loop {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or_default();
                let last = req["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("")
                    .to_owned();
                let respond = |status: &str, ctype: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let out = if last.contains("HANG") {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    return;
                } else if last.contains("RESET") {
                    let _ = sock.set_zero_linger();
                    return; // dropped with SO_LINGER 0: a reset
                } else if last.contains("GARBAGE") {
                    respond("200 OK", "application/json", b"<html>\x00\xff not a model answer")
                } else if last.contains("HUGE") {
                    let filler = "x".repeat(3 * 1024 * 1024);
                    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": filler}}]});
                    respond("200 OK", "application/json", body.to_string().as_bytes())
                } else {
                    let body = json!({"id": "ok", "object": "chat.completion", "created": 1, "model": req["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer: {last}")}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3}});
                    respond("200 OK", "application/json", body.to_string().as_bytes())
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/v1")
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": content}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_fault_is_a_clear_502_and_nothing_is_cached() {
    let url = faulty_upstream().await;
    let app = TestApp::with_config(move |c| {
        c.llm.upstream_url = Some(url);
        c.llm.timeout_secs = 1;
        c.llm.max_response_bytes = 1024 * 1024;
    });
    let cases = [
        ("HANG", "timed out"),
        ("RESET", "upstream"),
        ("GARBAGE", "not JSON"),
        ("HUGE", "exceeds llm.max_response_bytes"),
    ];
    for (fault, says) in cases {
        let started = std::time::Instant::now();
        let r = app.call("POST", "/v1/chat/completions", Some(OPS), Some(chat(fault))).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_GATEWAY, "upstream_error"), "{fault}: {}", r.text());
        assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{fault}: {}", r.text());
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{fault} took {:?}", started.elapsed());
        let lookup = app.call("POST", "/api/v1/cas/lookup", Some(OPS), Some(chat(fault))).await.json();
        assert_eq!(lookup["hit"], false, "{fault} was cached: {lookup}");
    }
    let report = app.call("GET", "/monitoring/memory/cas", Some(OPS), None).await.json();
    assert_eq!(report["upstream_errors"], 4, "{report}");
    // The service goes on: a good answer is served, then a hit.
    let r = app.call("POST", "/v1/chat/completions", Some(OPS), Some(chat("fine"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "answer: fine");
    let r = app.call("POST", "/v1/chat/completions", Some(OPS), Some(chat("fine"))).await;
    assert_eq!(r.headers.get("x-daena-cache").and_then(|v| v.to_str().ok()), Some("hit"));
}
