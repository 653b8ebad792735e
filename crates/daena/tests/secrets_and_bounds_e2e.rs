//! The real server, logging at `debug`, through a run that touches every kind of secret: the
//! ops key, an agent key, a wrong key, the master key, record payloads and a cached answer,
//! each a planted string; then the log is scanned for every one of them. And the request
//! bounds over a real socket: an oversized body (413), an oversized header and a deeply
//! nested JSON body (400-class answers), each leaving the server serving.

mod common;

use common::{OPS, Server, call, client, daena, run, stdout};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_never_reach_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[("DAENA_LOG", "debug")]);
    let url = server.url.clone();
    let http = client();
    let o = run(daena(tmp.path())
        .env("DAENA_API_KEY", OPS)
        .args(["keys", "create", "--name", "planted", "--role", "agent", "--tenant", "acme", "--json"]));
    let agent = serde_json::from_str::<Value>(&stdout(&o)).expect("key")["key"].as_str().expect("text").to_owned();
    let payload_secret = "PLANTED-PAYLOAD-9d41c0";
    let answer_secret = "PLANTED-ANSWER-5be2a7";
    let wrong_key = "dk_PLANTED-WRONG-KEY-31f0e8";

    let r = http
        .put(format!("{url}/api/v1/memory/chat/plan"))
        .header("X-API-Key", &agent)
        .json(&json!({"payload": {"text": payload_secret}, "meta": {"note": payload_secret}}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let r = http.get(format!("{url}/api/v1/memory/chat/plan")).header("X-API-Key", &agent).send().await.expect("get");
    assert!(r.text().await.expect("body").contains(payload_secret), "the owner reads it back");
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "the plan?"}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_secret}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3}});
    let r = http
        .post(format!("{url}/api/v1/cas/store"))
        .header("X-API-Key", &agent)
        .json(&json!({"request": chat, "response": answer}))
        .send()
        .await
        .expect("store");
    assert!(r.status().is_success());
    let r = http.post(format!("{url}/api/v1/cas/lookup")).header("X-API-Key", &agent).json(&chat).send().await;
    assert!(r.expect("lookup").text().await.expect("body").contains(answer_secret));
    for _ in 0..3 {
        let r = http.get(format!("{url}/api/v1/memory/chat/plan")).header("X-API-Key", wrong_key).send().await;
        assert_eq!(r.expect("wrong key").status(), 401);
    }
    let r = http.get(format!("{url}/api/v1/agents")).bearer_auth(&agent).send().await.expect("bearer");
    assert_eq!(r.status(), 200);
    let (status, _) = call(Method::POST, &format!("{url}/api/v1/admin/snapshots"), None, None).await;
    assert_eq!(status, 201);
    let o = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["key", "rotate"]));
    assert_eq!(o.status.code(), Some(0));
    let log = server.log_text();
    server.stop();

    assert!(log.contains("DEBUG") || log.contains("debug"), "the run logged at debug: {log}");
    let master = std::fs::read_to_string(tmp.path().join("data/keys/master.key")).expect("master key");
    let planted = [
        ("the ops key", OPS.to_owned()),
        ("the agent key", agent.clone()),
        ("the agent key's secret part", agent.trim_start_matches("dk_").to_owned()),
        ("a wrong key", wrong_key.to_owned()),
        ("the master key", master.trim().to_owned()),
        ("a payload", payload_secret.to_owned()),
        ("a cached answer", answer_secret.to_owned()),
    ];
    for (what, secret) in planted {
        assert!(!log.contains(&secret), "{what} is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_requests_are_refused_and_the_server_serves_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A 64 KiB limit, so that an oversized body is written whole before the answer comes (a
    // multi-megabyte one may meet a closed socket first, as it should).
    let limits = [("DAENA_SERVER_REQUEST_BODY_LIMIT_BYTES", "65536"), ("DAENA_MEMORY_MAX_PAYLOAD_BYTES", "32768")];
    let server = Server::start(tmp.path(), &limits);
    let url = server.url.clone();
    let http = client();
    let put = |body: Vec<u8>| {
        http.put(format!("{url}/api/v1/memory/chat/x"))
            .header("X-API-Key", OPS)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A body past server.request_body_limit_bytes.
    let big = format!("{{\"payload\": \"{}\"}}", "x".repeat(80 * 1024));
    let r = put(big.into_bytes()).await.expect("big body");
    assert_eq!(r.status(), 413);
    // JSON nested far deeper than any parser should follow.
    let deep = format!("{{\"payload\": {}{}}}", "[".repeat(20_000), "]".repeat(20_000));
    let r = put(deep.into_bytes()).await.expect("deep body");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    // A header far past what any client sends.
    let r = http
        .get(format!("{url}/api/v1/agents"))
        .header("X-API-Key", OPS)
        .header("X-Padding", "p".repeat(1024 * 1024))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(matches!(r.status().as_u16(), 400 | 413 | 431), "{}", r.status());
    }
    // And the server serves on.
    let (status, _) = call(Method::GET, &format!("{url}/api/v1/agents"), None, None).await;
    assert_eq!(status, 200);
    assert!(server.log_text().find("panicked").is_none(), "{}", server.log_text());
    server.stop();
}
