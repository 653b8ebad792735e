//! The LLM cache against a small OpenAI-compatible upstream started by the test.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{FakeUpstream, OPS, TestApp};
use serde_json::{Value, json};

const DAY: i64 = 86_400 * 1_000_000;

async fn app_with(upstream: &FakeUpstream) -> TestApp {
    let url = upstream.url.clone();
    TestApp::with_config(move |c| {
        c.llm.upstream_url = Some(url);
        c.llm
            .prices
            .insert("gpt-test".into(), daena_app::config::Price { input_per_million: 2.0, output_per_million: 10.0 });
    })
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-test", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are the finance department's assistant."},
        {"role": "user", "content": content}]})
}

async fn ask(app: &TestApp, key: &str, body: Value, headers: &[(&str, &str)]) -> common::Resp {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("x-api-key", key)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.send(req.body(Body::from(body.to_string())).expect("request")).await
}

fn cache(r: &common::Resp) -> String {
    r.headers.get("x-daena-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

const Q: &str = "Summarize the Q3 revenue report for the board in five bullet points and keep it short.";

#[tokio::test]
async fn miss_then_hit_then_near_duplicates() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    let r = ask(&app, OPS, chat(Q), &[]).await;
    assert_eq!((r.status, cache(&r).as_str()), (StatusCode::OK, "miss"), "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], format!("answer: {Q}"));
    let r = ask(&app, OPS, chat(Q), &[]).await;
    assert_eq!(cache(&r), "hit");
    assert_eq!(r.json()["choices"][0]["message"]["content"], format!("answer: {Q}"));
    assert_eq!(up.calls(), 1);
    // Whitespace, case and punctuation variants are near-duplicates.
    for variant in [
        "  Summarize the Q3 revenue report for the board   in five bullet points and keep it short. ",
        "summarize the q3 revenue report for the board in five bullet points and keep it short",
        "Summarize the Q3 revenue report, for the board, in five bullet points -- and keep it short!",
    ] {
        let r = ask(&app, OPS, chat(variant), &[]).await;
        assert!(matches!(cache(&r).as_str(), "near" | "hit"), "{variant}: {}", cache(&r));
        assert_eq!(r.json()["choices"][0]["message"]["content"], format!("answer: {Q}"));
        if cache(&r) == "near" {
            assert!(r.headers.get("x-daena-distance").is_some());
        }
    }
    assert_eq!(up.calls(), 1, "variants were served from the cache");
    let m = app.call("GET", "/monitoring/memory/cas", Some(OPS), None).await.json();
    // Whitespace is normalized away, so that variant is an exact hit; case and punctuation
    // are kept in the exact key, so those are near-duplicates.
    assert_eq!(m["exact_hits"], 2, "{m}");
    assert_eq!(m["near_hits"], 2, "{m}");
    assert_eq!(m["misses"], 1);
    assert_eq!(m["threshold"]["max_hamming_distance"], 7);
}

#[tokio::test]
async fn no_hit_when_it_would_be_wrong() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    ask(&app, OPS, chat(Q), &[]).await;
    let mut expected_calls = 1;
    let mut check = |label: &str, r: common::Resp| {
        assert_eq!(cache(&r), "miss", "{label}: {}", r.text());
        expected_calls += 1;
    };
    // A different number, a negation.
    check("number", ask(&app, OPS, chat(&Q.replace("Q3", "Q4")), &[]).await);
    check("number 2", ask(&app, OPS, chat(&Q.replace("five", "5")), &[]).await);
    check("negation", ask(&app, OPS, chat(&Q.replace("and keep it short", "and do not keep it short")), &[]).await);
    // A different model or any sampling parameter.
    let mut other_model = chat(Q);
    other_model["model"] = json!("gpt-other");
    check("model", ask(&app, OPS, other_model, &[]).await);
    for (param, value) in [
        ("temperature", json!(0.9)),
        ("top_p", json!(0.5)),
        ("max_tokens", json!(64)),
        ("seed", json!(7)),
        ("stop", json!(["\n"])),
    ] {
        let mut r = chat(Q);
        r[param] = value;
        check(param, ask(&app, OPS, r, &[]).await);
    }
    // Another tenant.
    let acme = app.key("acme", "agent", "acme", &[]).await;
    check("tenant", ask(&app, &acme, chat(Q), &[]).await);
    assert_eq!(up.calls(), expected_calls);
    let m = app.call("GET", "/monitoring/memory/cas", Some(OPS), None).await.json();
    assert!(
        m["guard_refusals"].as_u64().unwrap_or(0) >= 2,
        "the number and negation variants were refused by the guards: {m}"
    );
}

#[tokio::test]
async fn ttl_expiry_and_restart() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    ask(&app, OPS, chat(Q), &[]).await;
    // A restart keeps the entry and its near-duplicate index.
    let app = app.reopen(|_| {}).await;
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "hit");
    assert_eq!(cache(&ask(&app, OPS, chat(&Q.to_lowercase()), &[]).await), "near");
    // Hits do not extend the 7-day TTL.
    app.clock.advance(6 * DAY);
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "hit");
    app.clock.advance(DAY + 1);
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "miss");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn upstream_errors_pass_through_and_are_not_cached() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    for _ in 0..2 {
        let r = ask(&app, OPS, chat("please FAIL now"), &[]).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.json()["error"]["message"], "upstream exploded", "passed through unchanged");
    }
    assert_eq!(up.calls(), 2, "errors are never cached");
}

#[tokio::test]
async fn no_upstream_serves_hits_and_refuses_misses() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    ask(&app, OPS, chat(Q), &[]).await;
    let app = app.reopen(|c| c.llm.upstream_url = None).await;
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "hit");
    let r = ask(&app, OPS, chat("something never asked"), &[]).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "upstream_not_configured"));
}

#[tokio::test]
async fn streaming_both_ways() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    let mut req = chat(Q);
    req["stream"] = json!(true);
    // A streamed miss is passed through ...
    let r = ask(&app, OPS, req.clone(), &[]).await;
    assert_eq!(cache(&r), "miss");
    assert!(r.headers["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    let text = r.text();
    assert!(text.contains("data: [DONE]"), "{text}");
    // ... and cached once complete, for JSON and streamed callers alike.
    let r = ask(&app, OPS, chat(Q), &[]).await;
    assert_eq!(cache(&r), "hit", "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], format!("answer: {Q}"));
    let r = ask(&app, OPS, req, &[]).await;
    assert_eq!(cache(&r), "hit");
    let mut a = daena_app::cas::sse::Assembler::default();
    a.push(&r.body);
    let assembled = a.finish().expect("a well-formed replayed stream");
    assert_eq!(assembled["choices"][0]["message"]["content"], format!("answer: {Q}"));
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn cache_control_costs_and_feedback() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    let r = ask(&app, OPS, chat(Q), &[("cache-control", "no-store")]).await;
    assert_eq!(cache(&r), "miss");
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "miss", "no-store stored nothing");
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[("cache-control", "no-cache")]).await), "bypass");
    let r = ask(&app, OPS, chat(Q), &[("x-agent-id", "finance_synth")]).await;
    assert_eq!(cache(&r), "hit");
    let key = r.headers["x-daena-cache-key"].to_str().expect("key").to_owned();
    assert_eq!(up.calls(), 3);
    // Spend: 3 upstream calls × (100 × $2 + 50 × $10) per million = 3 × $0.0007. Savings: 1 hit.
    let c = app.call("GET", "/monitoring/memory/cost-tracking", Some(OPS), None).await.json();
    assert!((c["spend_usd"].as_f64().unwrap_or(0.0) - 0.0021).abs() < 1e-9, "{c}");
    assert!((c["saved_usd"].as_f64().unwrap_or(0.0) - 0.0007).abs() < 1e-9, "{c}");
    assert_eq!(c["tokens_saved"], 150);
    assert_eq!(c["by_agent"]["finance_synth"]["hits"], 1);
    assert_eq!(c["by_model"]["gpt-test"]["misses"], 3);
    // A wrong hit is reported: evicted and counted.
    let r =
        app.call("POST", "/api/v1/cas/feedback", Some(OPS), Some(json!({"key": key, "reason": "stale numbers"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "miss");
    let m = app.call("GET", "/monitoring/memory/cas", Some(OPS), None).await.json();
    assert_eq!(m["false_positive_reports"], 1);
    let r = app.call("POST", "/api/v1/cas/feedback", Some(OPS), Some(json!({"key": "zz"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cache_aside_and_bad_requests() {
    let app = TestApp::new();
    let acme = app.key("acme", "agent", "acme", &[]).await;
    let r = app.call("POST", "/api/v1/cas/lookup", Some(&acme), Some(chat(Q))).await;
    assert_eq!(r.json()["hit"], false);
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1}});
    let r =
        app.call("POST", "/api/v1/cas/store", Some(&acme), Some(json!({"request": chat(Q), "response": answer}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.call("POST", "/api/v1/cas/lookup", Some(&acme), Some(chat(Q))).await.json();
    assert_eq!(
        (r["hit"].as_bool(), r["response"]["choices"][0]["message"]["content"].as_str()),
        (Some(true), Some("42"))
    );
    // Served by the proxy too, with no upstream configured.
    assert_eq!(cache(&ask(&app, &acme, chat(Q), &[]).await), "hit");
    // A new answer stored for the same request replaces the one served from memory.
    let mut newer = answer.clone();
    newer["choices"][0]["message"]["content"] = json!("43");
    let r =
        app.call("POST", "/api/v1/cas/store", Some(&acme), Some(json!({"request": chat(Q), "response": newer}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = ask(&app, &acme, chat(Q), &[]).await;
    assert_eq!((cache(&r).as_str(), r.json()["choices"][0]["message"]["content"].as_str()), ("hit", Some("43")));
    let r = app.call("POST", "/api/v1/cas/lookup", Some(&acme), Some(chat(Q))).await.json();
    assert_eq!(r["response"]["choices"][0]["message"]["content"], "43");
    for bad in [
        json!({"messages": []}),
        json!({"model": "m"}),
        json!({"model": "m", "messages": [{"content": "x"}]}),
        json!([1]),
    ] {
        let r = ask(&app, &acme, bad.clone(), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = ask(&app, &acme, chat(Q), &[("x-agent-id", "bad agent")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let auditor = app.key("aud", "auditor", "acme", &[]).await;
    assert_eq!(ask(&app, &auditor, chat(Q), &[]).await.status, StatusCode::FORBIDDEN);
    let d = app.call("GET", "/api/v1/cas/diagnostics", Some(OPS), None).await.json();
    assert!(d["top_repeated_prompts"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(!d.to_string().contains("Summarize"), "prompts are never shown in plaintext");
}

/// Stores arriving together, past the tenant's cap, land in the same commit batches, so
/// victims must be chosen counting the evictions the batch already holds. Each evicted
/// entry is evicted once, and the cache ends exactly at the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_past_the_cap_evict_each_victim_once() {
    use tower::ServiceExt;
    let cap = 5u64;
    let app = TestApp::with_config(|c| c.memory.cas.max_entries_per_tenant = cap);
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1}});
    let stores = 48u64;
    let mut tasks = Vec::new();
    for i in 0..stores {
        let router = app.router.clone();
        let body = json!({"request": chat(&format!("Question {i} about the quarterly report")), "response": answer});
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method("POST")
                .uri("/api/v1/cas/store")
                .header("x-api-key", OPS)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("request");
            router.oneshot(req).await.expect("router").status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("store"), StatusCode::OK);
    }
    let (entries, _) =
        app.daena.ledger().reader.entries(1, 10_000, 100_000, &|e| e.action.starts_with("llm.cache_")).expect("ledger");
    let stored = entries.iter().filter(|e| e.action == "llm.cache_store").count() as u64;
    let evicted: Vec<&str> =
        entries.iter().filter(|e| e.action == "llm.cache_evict").filter_map(|e| e.attrs["key"].as_str()).collect();
    let distinct: std::collections::HashSet<&str> = evicted.iter().copied().collect();
    assert_eq!(stored, stores);
    assert_eq!(distinct.len(), evicted.len(), "an entry was evicted twice: {evicted:?}");
    assert_eq!(evicted.len() as u64, stores - cap);
    let m = app.call("GET", "/monitoring/memory/cas", Some(OPS), None).await.json();
    assert_eq!(m["entries"], cap, "{m}");
}

/// A body the proxy has seen is looked up by its digest, without parsing. What a hit needs
/// from the request (the agent, the stream flag) still comes from this request, and a
/// remembered body whose entry is gone goes upstream again.
#[tokio::test]
async fn a_body_sent_again_is_looked_up_by_its_digest() {
    use daena_app::cas::memo::{BodyMemo, Memo};
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    let r = ask(&app, OPS, chat(Q), &[("x-agent-id", "finance_synth")]).await;
    assert_eq!(cache(&r), "miss", "{}", r.text());
    assert_eq!(app.daena.cas().memo.len(), 1, "the validated body is remembered");
    let key = r.headers["x-daena-cache-key"].to_str().expect("key").to_owned();
    for agent in ["finance_synth", "finance_audit"] {
        let r = ask(&app, OPS, chat(Q), &[("x-agent-id", agent)]).await;
        assert_eq!(cache(&r), "hit");
        assert_eq!(r.headers["x-daena-cache-key"].to_str().ok(), Some(key.as_str()));
        assert_eq!(r.json()["choices"][0]["message"]["content"], format!("answer: {Q}"));
    }
    let c = app.call("GET", "/monitoring/memory/cost-tracking", Some(OPS), None).await.json();
    assert_eq!(
        (c["by_agent"]["finance_synth"]["hits"].as_u64(), c["by_agent"]["finance_audit"]["hits"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    // The request's own headers are still checked.
    assert_eq!(ask(&app, OPS, chat(Q), &[("x-agent-id", "bad agent")]).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(ask(&app, OPS, chat(Q), &[("x-daena-class", "Not A Class!")]).await.status, StatusCode::BAD_REQUEST);
    // Another tenant sending the same bytes has its own digest, and its own cache.
    let acme = app.key("acme", "agent", "acme", &[]).await;
    assert_eq!(cache(&ask(&app, &acme, chat(Q), &[]).await), "miss");
    assert_eq!(up.calls(), 2);
    // A remembered body whose entry was evicted is a miss again.
    let r = app.call("POST", "/api/v1/cas/feedback", Some(OPS), Some(json!({"key": key}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(cache(&ask(&app, OPS, chat(Q), &[]).await), "miss");
    assert_eq!(up.calls(), 3);

    // The digest path does not parse: a remembered digest is served even for bytes that
    // are not JSON. (Shown by planting one; no real body can reach it without SHA-256
    // colliding.)
    let r = ask(&app, OPS, chat(Q), &[]).await;
    let exact: [u8; 32] =
        hex::decode(r.headers["x-daena-cache-key"].to_str().expect("key")).expect("hex").try_into().expect("32 bytes");
    let raw = |bytes: &str, ctype: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("x-api-key", OPS)
            .header("content-type", ctype)
            .body(Body::from(bytes.to_owned()))
            .expect("request")
    };
    let r = app.send(raw("not json", "application/json")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_json"), "{}", r.text());
    let who = common::ops(&app.daena);
    let memo = Memo { exact, model: "gpt-test".into(), stream: true, include_usage: false };
    app.daena.cas().memo.insert(BodyMemo::digest(who.tenant().as_str(), b"not json"), memo);
    let r = app.send(raw("not json", "application/json")).await;
    assert_eq!((r.status, cache(&r).as_str()), (StatusCode::OK, "hit"), "{}", r.text());
    assert!(
        r.headers["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"),
        "the remembered stream flag"
    );
    // Content type and size are checked before any lookup.
    let r = app.send(raw("not json", "text/plain")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let r = app.send(raw("{}", "application/vnd.daena+json; charset=utf-8")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a +json type is JSON: {}", r.text());
    assert_eq!(app.send(raw("{}", "application/jsonx")).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!(r#"{{"model":"gpt-test","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(3 << 20));
    let r = app.send(raw(&big, "application/json")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
}

#[tokio::test]
async fn an_agents_cache_hits_are_observed_from_the_typed_outcome() {
    let up = FakeUpstream::start().await;
    let app = app_with(&up).await;
    let agent = [("x-agent-id", "finance_synth")];
    let first = ask(&app, OPS, chat(Q), &agent).await;
    assert_eq!(cache(&first), "miss");
    for _ in 0..3 {
        assert_eq!(cache(&ask(&app, OPS, chat(Q), &agent).await), "hit");
    }
    // A bypassed call is an LLM call but not a hit.
    let bypass = ask(&app, OPS, chat(Q), &[agent[0], ("cache-control", "no-cache")]).await;
    assert_eq!(cache(&bypass), "bypass");
    let e = app.call("GET", "/api/v1/analytics/agents/efficiency", Some(OPS), None).await.json();
    let a = e["agents"].as_array().expect("agents").iter().find(|a| a["agent_id"] == "finance_synth").cloned();
    let a = a.expect("the agent is observed");
    assert_eq!(a["llm_calls"], 5, "{a}");
    assert_eq!(a["cache_hit_rate"], 0.6, "{a}");
}
