//! Memory over HTTP: tiers, tenancy, ABAC, trust, divergence, aging, read-only mode, and no
//! plaintext at rest.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::{Value, json};

const DAY: i64 = 86_400 * 1_000_000;

async fn put(app: &TestApp, key: &str, path: &str, body: Value) -> common::Resp {
    app.call("PUT", &format!("/api/v1/memory/{path}"), Some(key), Some(body)).await
}

/// An in-process write of `payload` to `chat/{key}`, without `If-Match`, meta or agent.
fn chat_put(key: impl Into<String>, payload: Value) -> daena_app::memory::PutRequest {
    daena_app::memory::PutRequest {
        class: "chat".into(),
        key: key.into(),
        payload,
        meta: None,
        if_match: None,
        intended_revision: false,
        agent: None,
    }
}

/// Reads count from the hot cache, from L2 with the count not yet saved, and after a
/// restart, from the count saved in redb.
#[tokio::test]
async fn access_statistics_count_every_read_across_tiers_and_restarts() {
    let app = TestApp::new();
    async fn get(app: &TestApp) -> common::Resp {
        app.call("GET", "/api/v1/memory/chat/stats", Some(OPS), None).await
    }
    assert_eq!(put(&app, OPS, "chat/stats", json!({"payload": {"n": 1}})).await.status, StatusCode::CREATED);
    for _ in 0..3 {
        get(&app).await;
    }
    app.clock.advance(DAY);
    app.daena.memory().l1.clear();
    let r = get(&app).await;
    assert_eq!((r.headers["x-daena-tier"].to_str().ok(), r.json()["access_count"].as_u64()), (Some("L2"), Some(4)));
    let read_at = r.json()["last_accessed"].clone();
    assert!(read_at.is_string(), "{read_at}");

    let app = app.reopen(|_| {}).await;
    app.clock.advance(DAY);
    let r = get(&app).await;
    assert_eq!((r.headers["x-daena-tier"].to_str().ok(), r.json()["access_count"].as_u64()), (Some("L2"), Some(5)));
    assert!(r.json()["last_accessed"].as_str() > read_at.as_str(), "{} after {read_at}", r.json()["last_accessed"]);
    let r = app.call("GET", "/api/v1/memory/chat/absent", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A record deleted and created again starts its statistics afresh, whether the old
/// record's counts were still unsaved or already in redb (saved by a restart).
#[tokio::test]
async fn a_record_created_again_after_a_delete_counts_reads_from_zero() {
    let mut app = TestApp::new();
    let path = "/api/v1/memory/chat/again";
    for saved in [false, true] {
        assert_eq!(put(&app, OPS, "chat/again", json!({"payload": {"n": 1}})).await.status, StatusCode::CREATED);
        for _ in 0..3 {
            app.call("GET", path, Some(OPS), None).await;
        }
        if saved {
            app = app.reopen(|_| {}).await;
        }
        app.clock.advance(1_000_000);
        assert_eq!(app.call("DELETE", path, Some(OPS), None).await.status, StatusCode::OK);
        app.clock.advance(1_000_000);
        assert_eq!(put(&app, OPS, "chat/again", json!({"payload": {"n": 2}})).await.status, StatusCode::CREATED);
        let v = app.call("GET", path, Some(OPS), None).await.json();
        assert_eq!((v["payload"]["n"].as_u64(), v["access_count"].as_u64()), (Some(2), Some(1)), "{v}");
        assert_eq!(app.call("DELETE", path, Some(OPS), None).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn round_trip_through_every_tier() {
    let app = TestApp::new();
    let r =
        put(&app, OPS, "chat/greeting", json!({"payload": {"text": "hello"}, "meta": {"agent": "sales_synth"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["version"], 1);
    assert_eq!(r.headers["etag"], "\"1\"");

    // A write leaves L1 to the reads: the first read comes from L2 and makes the record hot.
    let r = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L2");
    let v = r.json();
    assert_eq!(v["payload"], json!({"text": "hello"}));
    assert_eq!(v["meta"]["agent"], "sales_synth");
    assert_eq!(v["access_count"], 1);
    let r = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L1");
    assert_eq!((r.json()["payload"].clone(), r.json()["access_count"].clone()), (json!({"text": "hello"}), json!(2)));

    // An overwrite drops the hot copy: the next read sees the new version, from L2. Reads of
    // the address keep counting across versions (a delete clears them).
    let r = put(&app, OPS, "chat/greeting", json!({"payload": {"text": "hello again"}})).await;
    assert_eq!((r.status, r.json()["version"].clone()), (StatusCode::OK, json!(2)), "{}", r.text());
    let r = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L2", "{}", r.text());
    let v = r.json();
    assert_eq!(
        (&v["payload"], &v["version"], &v["access_count"]),
        (&json!({"text": "hello again"}), &json!(2), &json!(3))
    );

    // Evicted from L1, the record comes from L2.
    app.daena.memory().l1.clear();
    let r = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L2", "{}", r.text());
    assert_eq!(r.json()["access_count"], 4);

    // After 90 idle days aging archives chat records to L3; reads still work.
    app.clock.advance(91 * DAY);
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!(rep["archived"], 1, "{rep}");
    let r = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L3", "{}", r.text());
    assert_eq!(r.json()["payload"], json!({"text": "hello again"}));

    // Read often enough from L3, it moves back to L2 (promote_after_accesses = 5).
    for _ in 0..4 {
        app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await;
    }
    let mut tier = String::new();
    for _ in 0..200 {
        app.daena.memory().l1.clear();
        tier = app.call("GET", "/api/v1/memory/chat/greeting", Some(OPS), None).await.headers["x-daena-tier"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        if tier == "L2" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(tier, "L2");
    let actions: Vec<String> = app.call("GET", "/api/v1/ledger/entries", Some(OPS), None).await.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(actions, ["memory.put", "memory.put", "memory.age", "memory.reheat"]);
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let app = TestApp::new();
    let acme = app.key("acme", "agent", "acme", &[]).await;
    let globex = app.key("globex", "agent", "globex", &[]).await;
    assert_eq!(put(&app, &acme, "chat/plan", json!({"payload": "acme secret plan"})).await.status, StatusCode::CREATED);
    let r = app.call("GET", "/api/v1/memory/chat/plan", Some(&globex), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert!(!r.text().contains("acme secret"));
    let r = app.call_as("GET", "/api/v1/memory/chat/plan", Some(&globex), Some("acme"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "an agent key cannot name another tenant");
    assert_eq!(app.call("DELETE", "/api/v1/memory/chat/plan", Some(&globex), None).await.status, StatusCode::NOT_FOUND);
    let listed = app.call("GET", "/api/v1/memory", Some(&globex), None).await.json();
    assert_eq!(listed["items"], json!([]));
    // The same key in another tenant is a different record.
    assert_eq!(put(&app, &globex, "chat/plan", json!({"payload": "globex"})).await.status, StatusCode::CREATED);
    assert_eq!(
        app.call("GET", "/api/v1/memory/chat/plan", Some(&acme), None).await.json()["payload"],
        "acme secret plan"
    );
    // Ops acts for a tenant only when it says so.
    assert_eq!(app.call("GET", "/api/v1/memory/chat/plan", Some(OPS), None).await.status, StatusCode::NOT_FOUND);
    let r = app.call_as("GET", "/api/v1/memory/chat/plan", Some(OPS), Some("acme"), None).await;
    assert_eq!(r.json()["payload"], "acme secret plan");
}

#[tokio::test]
async fn abac_matrix_for_the_runbook_classes() {
    let app = TestApp::with_config(|c| {
        c.policy = serde_norway::from_str(include_str!("../../../config/policy_config.yaml")).expect("policy");
        c.memory.trust.require_quarantine.clear();
    });
    let officer = app.key("officer", "agent", "acme", &["legal.officer"]).await;
    let analyst = app.key("analyst", "agent", "acme", &["finance.analyst"]).await;
    let controller = app.key("controller", "agent", "acme", &["finance.controller"]).await;
    let guest = app.key("guest", "agent", "acme", &["guest"]).await;
    let plain = app.key("plain", "agent", "acme", &[]).await;
    // (key, class, allowed)
    let cases = [
        (&officer, "pii", true),
        (&officer, "legal", true),
        (&officer, "finance", false),
        (&officer, "chat", true),
        (&analyst, "pii", false),
        (&analyst, "legal", false),
        (&analyst, "finance", false),
        (&analyst, "chat", true),
        (&controller, "finance", true),
        (&controller, "legal", false),
        (&guest, "pii", false),
        (&guest, "finance", false),
        (&guest, "chat", true),
        (&plain, "legal", false),
        (&plain, "ops_log", true),
    ];
    for (i, (key, class, allowed)) in cases.iter().enumerate() {
        let w = put(&app, key, &format!("{class}/r{i}"), json!({"payload": {"n": i}})).await;
        let expected = if *allowed { StatusCode::CREATED } else { StatusCode::FORBIDDEN };
        assert_eq!(w.status, expected, "write {class} case {i}: {}", w.text());
        if !allowed {
            assert_eq!(w.code(), "policy_denied");
            assert!(w.json()["error"]["details"]["rules"].as_array().is_some_and(|r| !r.is_empty()));
            // Seed the record as ops to check reads and deletes too.
            let seeded = app
                .call_as(
                    "PUT",
                    &format!("/api/v1/memory/{class}/r{i}"),
                    Some(OPS),
                    Some("acme"),
                    Some(json!({"payload": 1})),
                )
                .await;
            assert_eq!(seeded.status, StatusCode::CREATED, "ops (ABAC role admin) may write {class}");
        }
        let r = app.call("GET", &format!("/api/v1/memory/{class}/r{i}"), Some(key), None).await;
        assert_eq!(r.status == StatusCode::OK, *allowed, "read {class} case {i}: {}", r.text());
        let l = app.call("GET", &format!("/api/v1/memory?class={class}"), Some(key), None).await;
        assert_eq!(l.status == StatusCode::OK, *allowed, "list {class} case {i}");
        let d = app.call("DELETE", &format!("/api/v1/memory/{class}/r{i}"), Some(key), None).await;
        assert_eq!(d.status == StatusCode::OK, *allowed, "delete {class} case {i}: {}", d.text());
    }
    let denies = app.call("GET", "/api/v1/ledger/entries?limit=1000", Some(OPS), None).await.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "policy.deny")
        .count();
    assert!(denies >= 7 * 4, "every denial is ledgered ({denies})");
    let m = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
    assert_eq!(m["operations"]["policy_denies"], denies as u64);
}

#[tokio::test]
async fn quarantine_promote_and_reject() {
    let app = TestApp::new();
    let writer = app.key("writer", "agent", "acme", &["legal.officer"]).await;
    let r =
        app.call("PUT", "/api/v1/memory/legal/nda", Some(&writer), Some(json!({"payload": {"term": "2 years"}}))).await;
    assert_eq!(r.json()["tier"], "L2Q");
    assert_eq!(r.json()["trust"]["quarantined"], true);
    let advisor_a = app.key("advisor-a", "agent", "acme", &["legal.officer"]).await;
    let advisor_b = app.key("advisor-b", "agent", "acme", &["legal.officer"]).await;
    let confirm = |key: &str, agent: &'static str| {
        let app = &app;
        let key = key.to_owned();
        async move {
            app.call("POST", "/api/v1/memory/legal/nda/confirm", Some(&key), Some(json!({"agent_id": agent}))).await
        }
    };
    // The writer's key cannot confirm its own write, under any agent id it claims; a key
    // counts once, whatever agent ids it names.
    for agent in ["legal_executor", "legal_analyst", "legal_reviewer", "legal_advisor"] {
        let own = confirm(&writer, agent).await;
        assert_eq!(own.status, StatusCode::FORBIDDEN, "{}", own.text());
    }
    let first = confirm(&advisor_a, "legal_advisor").await.json();
    assert_eq!((first["score"].as_f64(), first["promoted"].as_bool()), (Some(0.5), Some(false)));
    let again = confirm(&advisor_a, "legal_reviewer").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "the same key under another agent id: {}", again.text());
    let second = confirm(&advisor_b, "legal_advisor").await.json();
    assert_eq!(second["promoted"], true, "two distinct keys reach 0.66: {second}");
    assert_eq!(second["tier"], "L2");
    let got = app.call("GET", "/api/v1/memory/legal/nda", Some(&writer), None).await.json();
    assert_eq!(got["trust"]["quarantined"], false);

    // A reviewer promotes directly; a non-reviewer may not.
    put(&app, &writer, "legal/msa", json!({"payload": {"term": "1 year"}})).await;
    let r = app.call("POST", "/api/v1/memory/legal/msa/promote", Some(&writer), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.call_as("POST", "/api/v1/memory/legal/msa/promote", Some(OPS), Some("acme"), None).await;
    assert_eq!(r.json()["tier"], "L2", "{}", r.text());

    // Rejection deletes the quarantined record.
    put(&app, &writer, "legal/bad", json!({"payload": {"term": "forever"}})).await;
    let r = app.call_as("POST", "/api/v1/memory/legal/bad/reject", Some(OPS), Some("acme"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(app.call("GET", "/api/v1/memory/legal/bad", Some(&writer), None).await.status, StatusCode::NOT_FOUND);
    let r = app.call_as("POST", "/api/v1/memory/legal/nda/reject", Some(OPS), Some("acme"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "only quarantined records are rejected");
}

/// A key bound to one agent writes, confirms, beats and reports only as that agent; the
/// binding is kept through a restart (it is in the ledgered key).
#[tokio::test]
async fn a_key_bound_to_an_agent_acts_only_as_that_agent() {
    let app = TestApp::new();
    let body =
        json!({"name": "synth", "role": "agent", "tenant": "acme", "roles": ["legal.officer"], "agent": "legal_synth"});
    let r = app.call("POST", "/api/v1/admin/keys", Some(OPS), Some(body)).await;
    assert_eq!((r.status, r.json()["agent"].as_str()), (StatusCode::CREATED, Some("legal_synth")), "{}", r.text());
    let synth = r.json()["key"].as_str().expect("key").to_owned();
    let bad = json!({"name": "x", "role": "auditor", "agent": "legal_synth"});
    assert_eq!(app.call("POST", "/api/v1/admin/keys", Some(OPS), Some(bad)).await.status, StatusCode::BAD_REQUEST);
    let app = app.reopen(|_| {}).await;

    let write = |agent: Option<&'static str>| {
        let (app, synth) = (&app, synth.clone());
        async move {
            let mut req = axum::http::Request::builder()
                .method("PUT")
                .uri("/api/v1/memory/legal/brief")
                .header("x-api-key", &synth)
                .header("content-type", "application/json");
            if let Some(a) = agent {
                req = req.header("x-agent-id", a);
            }
            app.send(req.body(axum::body::Body::from(json!({"payload": {"p": 1}}).to_string())).expect("request")).await
        }
    };
    let r = write(Some("legal_analyst")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("bound to agent legal_synth"), "{}", r.text());
    assert_eq!(write(Some("legal_synth")).await.status, StatusCode::CREATED);
    assert_eq!(write(None).await.status, StatusCode::OK, "no header: the bound agent");
    let entries = app.call("GET", "/api/v1/ledger/entries?tenant=acme", Some(OPS), None).await.json();
    let writers: Vec<&str> = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "memory.put")
        .filter_map(|e| e["attrs"]["writer"].as_str())
        .collect();
    assert_eq!(writers, ["legal_synth", "legal_synth"]);
    let r = app
        .call("POST", "/api/v1/memory/legal/brief/confirm", Some(&synth), Some(json!({"agent_id": "legal_advisor"})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = app.call("POST", "/api/v1/agents/legal_advisor/heartbeat", Some(&synth), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(
        app.call("POST", "/api/v1/agents/legal_synth/heartbeat", Some(&synth), None).await.status,
        StatusCode::OK
    );
    let hop = |from: &str| json!({"from": from, "to": "legal_advisor", "kind": "handoff", "latency_ms": 3.0, "success": true});
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(&synth), Some(hop("legal_executor"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(&synth), Some(hop("legal_synth"))).await;
    assert!(r.status.is_success(), "{}", r.text());
}

#[tokio::test]
async fn divergence_abort_and_intended_revisions() {
    let app = TestApp::new();
    let body = |clause: &str| json!({"payload": {"clause": clause}});
    put(&app, OPS, "finance/terms", body("Net 30 days, 2% discount if paid within 10 days.")).await;
    // A small edit passes.
    let r = put(&app, OPS, "finance/terms", body("Net 30 days, 2% discount if paid within 15 days.")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["divergence"].as_f64().is_some_and(|d| d < 0.25));
    // A rewrite is refused ...
    let r = put(&app, OPS, "finance/terms", body("All invoices are payable immediately in cash.")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::CONFLICT, "divergence_abort"), "{}", r.text());
    assert_eq!(app.call("GET", "/api/v1/memory/finance/terms", Some(OPS), None).await.json()["version"], 2);
    // ... unless intended.
    let mut intended = body("All invoices are payable immediately in cash.");
    intended["intended_revision"] = json!(true);
    let r = put(&app, OPS, "finance/terms", intended).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
    assert_eq!(m["divergence"]["aborted"], 1);
    assert_eq!(m["divergence"]["intended_revisions"], 1);
    assert_eq!(m["divergence"]["overwrites"], 3);
    assert_eq!(
        m["divergence"]["events"], 1,
        "only the refused rewrite: the small edit is under 0.05 and the intended revision does not count: {}",
        m["divergence"]
    );
    // If-Match guards concurrent writers.
    let r = app.call("PUT", "/api/v1/memory/chat/n", Some(OPS), Some(json!({"payload": 1}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let req = axum::http::Request::builder()
        .method("PUT")
        .uri("/api/v1/memory/chat/n")
        .header("x-api-key", OPS)
        .header("content-type", "application/json")
        .header("if-match", "\"7\"")
        .body(axum::body::Body::from(r#"{"payload": 2}"#))
        .expect("request");
    let r = app.send(req).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PRECONDITION_FAILED, "version_conflict"));
    // An If-Match that is not a version is refused before anything is written or deleted.
    for method in ["PUT", "DELETE"] {
        let req = axum::http::Request::builder()
            .method(method)
            .uri("/api/v1/memory/chat/n")
            .header("x-api-key", OPS)
            .header("content-type", "application/json")
            .header("if-match", "latest")
            .body(axum::body::Body::from(r#"{"payload": 3}"#))
            .expect("request");
        let r = app.send(req).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{method}");
    }
    let r = app.call("GET", "/api/v1/memory/chat/n", Some(OPS), None).await.json();
    assert_eq!((r["payload"].clone(), r["version"].clone()), (json!(1), json!(1)));
    // The divergence counters survive a restart.
    let before = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
    assert!(before["divergence"]["overwrites"].as_u64() >= Some(3));
    let app = app.reopen(|_| {}).await;
    let after = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
    assert_eq!(after["divergence"], before["divergence"]);
}

#[tokio::test]
async fn aging_tightens_archives_and_expires_with_a_fake_clock() {
    let app = TestApp::new();
    put(&app, OPS, "chat/a", json!({"payload": {"t": "chat line ".repeat(50)}})).await;
    put(&app, OPS, "ops_log/b", json!({"payload": {"t": "log line ".repeat(50)}})).await;
    put(&app, OPS, "research_note/c", json!({"payload": {"t": "note ".repeat(50)}})).await;
    app.clock.advance(15 * DAY);
    let dry = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({"dry_run": true}))).await.json();
    assert_eq!(dry["tightened"], 3, "{dry}");
    assert_eq!(
        app.call("GET", "/api/v1/ledger/head", Some(OPS), None).await.json()["size"],
        3,
        "a dry run changes nothing"
    );
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!(rep["tightened"], 3, "{rep}");
    let again = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!(again["tightened"], 0, "tightening happens once: {again}");
    app.clock.advance(16 * DAY);
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!(rep["archived"], 1, "ops_log after 30 idle days: {rep}");
    app.clock.advance(60 * DAY);
    // 91 idle days: chat is archived (retention 180); ops_log's retention of 90 expires it.
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!((rep["archived"].as_u64(), rep["expired"].as_u64()), (Some(1), Some(1)), "{rep}");
    assert_eq!(app.call("GET", "/api/v1/memory/ops_log/b", Some(OPS), None).await.status, StatusCode::NOT_FOUND);
    let r = app.call("GET", "/api/v1/memory/chat/a", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L3");
    // That read reset chat/a's idleness; 180 idle days later it expires, and the research note
    // (271 idle days) is archived.
    app.clock.advance(180 * DAY);
    let rep = app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await.json();
    assert_eq!((rep["archived"].as_u64(), rep["expired"].as_u64()), (Some(1), Some(1)), "{rep}");
    let m = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
    assert_eq!(m["l3"]["records"], 1, "{}", m["l3"]);
    assert_eq!(m["totals"]["records"], 1);
    let r = app.call("GET", "/api/v1/memory/research_note/c", Some(OPS), None).await;
    assert_eq!(r.headers["x-daena-tier"], "L3");
    assert_eq!(r.json()["payload"]["t"], "note ".repeat(50));
    let ages = app.call("GET", "/api/v1/ledger/entries?limit=100", Some(OPS), None).await.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "memory.age" || e["action"] == "memory.expire")
        .count();
    assert_eq!(ages, 3 + 1 + 2 + 2, "every aging action is ledgered");
}

#[tokio::test]
async fn read_only_mode_refuses_writes_and_serves_reads() {
    let app = TestApp::new();
    put(&app, OPS, "chat/x", json!({"payload": 1})).await;
    app.call("PUT", "/api/v1/admin/writes", Some(OPS), Some(json!({"enabled": false}))).await;
    let r = put(&app, OPS, "chat/x", json!({"payload": 2})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "writes_disabled"));
    assert_eq!(app.call("DELETE", "/api/v1/memory/chat/x", Some(OPS), None).await.code(), "writes_disabled");
    assert_eq!(app.call("GET", "/api/v1/memory/chat/x", Some(OPS), None).await.json()["payload"], 1);
    let h = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(h["checks"]["writes_enabled"]["status"], "warn");
    let started_read_only = TestApp::with_config(|c| c.server.writes_enabled = false);
    assert_eq!(put(&started_read_only, OPS, "chat/y", json!({"payload": 1})).await.code(), "writes_disabled");
}

#[tokio::test]
async fn no_plaintext_at_rest() {
    let app = TestApp::new();
    let marker = "ZEBRA-PLAINTEXT-MARKER-41";
    for i in 0..20 {
        put(
            &app,
            OPS,
            &format!("chat/k{i}"),
            json!({"payload": {"text": format!("{marker} number {i}")}, "meta": {"note": marker}}),
        )
        .await;
    }
    put(&app, OPS, "legal/k", json!({"payload": marker})).await;
    app.clock.advance(100 * DAY);
    app.call("POST", "/api/v1/admin/aging/run", Some(OPS), Some(json!({}))).await;
    app.daena.shutdown().await.expect("shutdown flushes");
    let mut scanned = 0;
    let mut stack = vec![app.dir.path().to_owned()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            scanned += bytes.len();
            assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "plaintext in {}", path.display());
        }
    }
    assert!(scanned > 10_000, "scanned {scanned} bytes");
}

#[tokio::test]
async fn list_pages_and_validates() {
    let app = TestApp::new();
    for i in 0..25 {
        put(&app, OPS, &format!("chat/user-{i:02}"), json!({"payload": i})).await;
    }
    put(&app, OPS, "ops_log/x", json!({"payload": 0})).await;
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/v1/memory?class=chat&prefix=user-&limit=10&cursor={c}"),
            None => "/api/v1/memory?class=chat&prefix=user-&limit=10".to_owned(),
        };
        let page = app.call("GET", &url, Some(OPS), None).await.json();
        for i in page["items"].as_array().expect("items") {
            keys.push(i["key"].as_str().expect("key").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(keys.len(), 25);
    assert_eq!(keys[0], "user-00");
    assert_eq!(keys[24], "user-24");
    assert_eq!(
        app.call("GET", "/api/v1/memory", Some(OPS), None).await.json()["items"].as_array().map(Vec::len),
        Some(26)
    );
    // A prefix without a class filters every class's keys.
    let page = app.call("GET", "/api/v1/memory?prefix=user-1", Some(OPS), None).await.json();
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 10, "{page}");
    assert!(items.iter().all(|i| i["key"].as_str().is_some_and(|k| k.starts_with("user-1"))), "{page}");
    for bad in [
        "/api/v1/memory?limit=0",
        "/api/v1/memory?prefix=%01",
        "/api/v1/memory?cursor=zz",
        "/api/v1/memory?class=Bad%20Class",
    ] {
        assert_eq!(app.call("GET", bad, Some(OPS), None).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let big = "x".repeat(1024 * 1024 + 10);
    let r = put(&app, OPS, "chat/big", json!({"payload": big})).await;
    assert!(matches!(r.code().as_str(), "payload_too_large"), "{}", r.status);
    let r = put(&app, OPS, "chat/m", json!({"payload": 1, "meta": [1, 2]})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .call("PUT", "/api/v1/memory/chat/m", Some(OPS), Some(json!({"payload": 1})).map(|_| json!({"nope": 1})))
        .await;
    assert_eq!(r.code(), "invalid_json");
}

/// A replica on PostgreSQL keeps the dictionaries it trains with the chain, as it keeps
/// records, and a rebuild of the kept state carries them too.
#[tokio::test]
async fn a_replica_keeps_its_dictionaries_in_postgres() {
    use daena_app::memory::dict;
    use daena_store::state::StateStore;
    let db = daena_store::pg::TestDatabase::create();
    let url = db.url.clone();
    let app = TestApp::with_config(move |c| {
        c.storage.backend = daena_app::config::StorageBackend::Postgres;
        c.storage.postgres_url = Some(url);
    });
    let d = app.daena.clone();
    for i in 0..dict::MIN_SAMPLES + 20 {
        assert!(put(&app, OPS, &format!("chat/c{i}"), turn(i)).await.status.is_success());
    }
    let trained = dict::train_due(&d).await.expect("train");
    assert!(trained.iter().any(|t| t.kept.is_some()), "{trained:?}");
    let rows = |store: &dyn StateStore| {
        let mut out = Vec::new();
        store
            .scan_dicts(&mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .expect("dictionaries");
        out
    };
    let kept = daena_store::pg::PgState::open(&db.url).expect("the kept state");
    let local = rows(d.kv().store());
    assert_eq!(local.len(), 1, "one dictionary trained");
    assert_eq!(rows(&kept), local, "the kept dictionary is the replica's, byte for byte");

    // A kept state behind the chain is rebuilt by the next batch, dictionaries included.
    db.execute("delete from daena_dicts; update daena_applied set seq = 0");
    assert!(put(&app, OPS, "chat/after", turn(1)).await.status.is_success());
    assert_eq!(rows(&kept), local, "rebuilt from the replica's copy");
    let mut records = 0;
    kept.scan_records(b"", None, &mut |_, _| {
        records += 1;
        Ok(true)
    })
    .expect("records");
    assert_eq!(records, dict::MIN_SAMPLES + 21);
}

fn turn(i: usize) -> Value {
    let plans = ["basic", "pro", "team", "enterprise"];
    json!({"payload": {
        "role": if i.is_multiple_of(2) { "user" } else { "assistant" },
        "agent": format!("support-agent-{}", i % 6),
        "text": format!(
            "Ticket {}: the customer on the {} plan asked about invoice INV-{:05} and whether the refund \
             policy covers the annual subscription renewal.", i, plans[i % 4], i * 37),
        "tags": ["support", "billing", plans[i % 4]],
    }, "meta": {"agent": "support_synth", "channel": "email"}})
}

#[tokio::test]
async fn trained_dictionaries_shrink_small_records_and_survive_restart_and_rollback() {
    use daena_app::memory::{codec, dict};
    let app = TestApp::new();
    let d = app.daena.clone();
    // The state before any dictionary, for the rollback below.
    daena_app::snapshot::create(&d).await.expect("snapshot");
    for i in 0..dict::MIN_SAMPLES + 20 {
        assert!(put(&app, OPS, &format!("chat/c{i}"), turn(i)).await.status.is_success());
    }
    // Another tenant's few records: not enough to train, and never under the first tenant's dictionary.
    for i in 0..10 {
        let r = app.call_as("PUT", &format!("/api/v1/memory/chat/a{i}"), Some(OPS), Some("acme"), Some(turn(i))).await;
        assert!(r.status.is_success());
    }
    let trained = dict::train_due(&d).await.expect("train");
    assert_eq!(trained.len(), 1, "{trained:?}");
    let t = &trained[0];
    assert_eq!((t.tenant.as_str(), t.class.as_str()), ("default", "chat"));
    let id = t.kept.expect("kept");
    assert!((t.with as f64) <= dict::KEEP_IF * t.without as f64, "{t:?}");
    // Ledgered, sealed: the entry carries the dictionary id, not its text.
    let page = app.call("GET", "/api/v1/ledger/entries?limit=1000&include_body=true", Some(OPS), None).await.json();
    let e = page["entries"].as_array().expect("entries").iter().find(|e| e["action"] == "memory.dict").expect("entry");
    assert_eq!(e["attrs"]["dict_id"], id);
    assert!(!e.to_string().contains("refund policy"), "{e}");

    // New small records of that tenant and class use it, and come out smaller.
    let tenant = daena_core::ids::TenantId::new("default").expect("tenant");
    let plain = codec::Plain { payload: turn(999)["payload"].to_string().into(), meta: "{}".into() };
    let (with, _) = codec::seal(d.memory(), &tenant, "chat", "x", &plain, 3).expect("seal");
    let (without, _) = codec::seal(d.memory(), &tenant, "ops_log", "x", &plain, 3).expect("seal");
    assert!(with.len() < without.len() * 3 / 4, "{} vs {}", with.len(), without.len());
    let acme = daena_core::ids::TenantId::new("acme").expect("tenant");
    let (other, _) = codec::seal(d.memory(), &acme, "chat", "x", &plain, 3).expect("seal");
    assert_eq!(other.len(), without.len(), "another tenant never uses this dictionary");
    for i in 300..340 {
        assert!(put(&app, OPS, &format!("chat/d{i}"), turn(i)).await.status.is_success());
    }
    let check = |app: &TestApp| {
        let router = app.router.clone();
        async move {
            for i in 300..340 {
                let req = axum::http::Request::builder()
                    .uri(format!("/api/v1/memory/chat/d{i}"))
                    .header("x-api-key", OPS)
                    .body(axum::body::Body::empty())
                    .expect("request");
                let resp = tower::ServiceExt::oneshot(router.clone(), req).await.expect("response");
                assert_eq!(resp.status(), StatusCode::OK, "d{i}");
            }
        }
    };
    check(&app).await;
    let got = app.call("GET", "/api/v1/memory/chat/d301", Some(OPS), None).await.json();
    assert_eq!(got["payload"], turn(301)["payload"]);

    // After a restart the dictionary is loaded from the state.
    drop(d);
    let app = app.reopen(|_| {}).await;
    check(&app).await;
    assert_eq!(app.daena.memory().dicts.list().len(), 1);

    // A rollback from the snapshot taken before the dictionary replays its entry first.
    let size = app.daena.ledger().reader.head().size;
    assert!(put(&app, OPS, "chat/last", turn(1)).await.status.is_success());
    let (app, report) =
        app.offline(|loaded| daena_app::snapshot::rollback(loaded, &size.to_string(), Default::default())).await;
    report.expect("rollback");
    check(&app).await;
    assert_eq!(app.call("GET", "/api/v1/memory/chat/last", Some(OPS), None).await.status, StatusCode::NOT_FOUND);

    // New data key versions, then a re-encryption: the dictionary is sealed again under the
    // new version before the old one is retired, so it still opens after a restart, and the
    // records compressed with it read.
    assert_eq!(app.daena.governance().data_keys().new_data_key_versions().expect("new versions"), 2);
    let who = common::ops(&app.daena);
    let r = daena_app::keyrotate::reseal(&app.daena, &who, |_, _| {}).await.expect("reseal");
    assert_eq!((r.dictionaries_resealed, r.data_keys_retired, r.errors), (1, 2, 0), "{r:?}");
    assert!(r.resealed >= 40, "{r:?}");
    assert!(app.daena.governance().data_keys().older_versions().expect("older").is_empty());
    let app = app.reopen(|_| {}).await;
    assert_eq!(app.daena.memory().dicts.list().len(), 1, "the dictionary opens under the new version");
    check(&app).await;
}

/// Writes go on while the commit thread hands overlay layers to the settler thread (6,000
/// records, past the 4,096-row layer, and across once-a-second durable writes). Each record is
/// read back at once with L1 emptied, so the read finds it in the active layer, the frozen one
/// or redb; then every record again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_find_every_write_while_layers_are_written_behind() {
    use daena_app::memory;
    let app = TestApp::new();
    let (writers, each) = (4u64, 1_500u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let d = app.daena.clone();
        tasks.push(tokio::spawn(async move {
            let who = common::ops(&d);
            for i in 0..each {
                let key = format!("w{w}-{i}");
                memory::put(&d, &who, chat_put(key.clone(), json!({"writer": w, "n": i}))).await.expect("put");
                d.memory().l1.clear();
                let (view, tier) = memory::get(&d, &who, "chat", &key).expect("an acknowledged write is readable");
                assert_ne!(tier, "L1");
                assert_eq!(&*view.plain.payload, json!({"writer": w, "n": i}).to_string(), "{key}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let app = app.reopen(|_| {}).await;
    let who = common::ops(&app.daena);
    for w in 0..writers {
        for i in 0..each {
            let (view, _) = memory::get(&app.daena, &who, "chat", &format!("w{w}-{i}")).expect("after a restart");
            assert_eq!(&*view.plain.payload, json!({"writer": w, "n": i}).to_string());
        }
    }
}

/// Writers racing to create the same records, without `If-Match`: each record's writes must
/// number its versions 1, 2, 3, 4, and exactly one of them, version 1, reports the create. A
/// write wrongly taken for a create (a record another write had just created) would repeat a
/// version or report a second create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creators_of_one_record_number_every_version() {
    use daena_app::memory;
    let app = TestApp::new();
    let (writers, keys) = (4u64, 300u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let d = app.daena.clone();
        tasks.push(tokio::spawn(async move {
            let who = common::ops(&d);
            let mut seen = Vec::new();
            for k in 0..keys {
                // Under this much contention the service may answer "kept changing; retry".
                let r = loop {
                    match memory::put(&d, &who, chat_put(format!("race-{k}"), json!({"writer": w}))).await {
                        Ok(r) => break r,
                        Err(e) if e.code == daena_app::error::ErrorCode::VersionConflict => continue,
                        Err(e) => panic!("put race-{k}: {e:?}"),
                    }
                };
                seen.push((k, r.created, r.record.version));
            }
            seen
        }));
    }
    let mut by_key = std::collections::BTreeMap::<u64, Vec<(bool, u64)>>::new();
    for t in tasks {
        for (k, created, version) in t.await.expect("writer") {
            by_key.entry(k).or_default().push((created, version));
        }
    }
    let who = common::ops(&app.daena);
    for (k, mut writes) in by_key {
        writes.sort_by_key(|(_, v)| *v);
        let versions: Vec<u64> = writes.iter().map(|(_, v)| *v).collect();
        assert_eq!(versions, (1..=writers).collect::<Vec<_>>(), "race-{k}: {writes:?}");
        let creates: Vec<u64> = writes.iter().filter(|(c, _)| *c).map(|(_, v)| *v).collect();
        assert_eq!(creates, vec![1], "race-{k}: exactly the first write creates: {writes:?}");
        let (view, _) = memory::get(&app.daena, &who, "chat", &format!("race-{k}")).expect("read");
        assert_eq!(view.meta.version, writers, "race-{k}");
    }
}

/// Optimistic writers on one record: each reads the version, writes `n + 1` with `If-Match`
/// on it, and retries on a conflict. A lost update would show as a wrong final count or
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_writers_on_one_record_lose_no_update() {
    use daena_app::error::ErrorCode;
    use daena_app::memory::{self, PutRequest};
    let app = TestApp::new();
    let who = common::ops(&app.daena);
    let req = |n: u64, if_match: Option<u64>| PutRequest {
        if_match,
        intended_revision: true,
        ..chat_put("counter", json!({"n": n}))
    };
    memory::put(&app.daena, &who, req(0, None)).await.expect("create");
    let (writers, each) = (8u64, 40u64);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (d, who) = (app.daena.clone(), who.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut conflicts) = (0, 0u64);
            while done < each {
                let (view, _) = memory::get(&d, &who, "chat", "counter").expect("get");
                let n: Value = serde_json::from_str(&view.plain.payload).expect("json");
                let n = n["n"].as_u64().expect("n");
                match memory::put(&d, &who, req(n + 1, Some(view.meta.version))).await {
                    Ok(_) => done += 1,
                    Err(e) if e.code == ErrorCode::VersionConflict => conflicts += 1,
                    Err(e) => panic!("put: {e:?}"),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("writer");
    }
    let (view, _) = memory::get(&app.daena, &who, "chat", "counter").expect("get");
    assert_eq!(view.plain.payload.as_ref(), json!({"n": writers * each}).to_string(), "{conflicts} conflicts");
    assert_eq!(view.meta.version, writers * each + 1);
    let app = app.reopen(|_| {}).await;
    let who = common::ops(&app.daena);
    let (view, _) = memory::get(&app.daena, &who, "chat", "counter").expect("after a restart");
    assert_eq!(view.meta.version, writers * each + 1);
}

/// Reads racing overwrites never see a version older than one already acknowledged, nor
/// older than one they saw before, and the body always belongs to the version: a write drops
/// the L1 copy under the record's stripe lock, and a reader filling L1 holds the same stripe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_overwrites_never_go_back_a_version() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const WRITES: u64 = 150;
    let app = Arc::new(TestApp::new());
    assert_eq!(put(&app, OPS, "chat/race", json!({"payload": {"n": 1}})).await.status, StatusCode::CREATED);
    let acked = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (app, acked, done, started) = (app.clone(), acked.clone(), done.clone(), started.clone());
            tokio::spawn(async move {
                let (mut last, mut reads) = (0, 0u64);
                while !done.load(Ordering::Acquire) {
                    let floor = acked.load(Ordering::Acquire);
                    let v = app.call("GET", "/api/v1/memory/chat/race", Some(OPS), None).await.json();
                    let version = v["version"].as_u64().unwrap_or(0);
                    assert!(version >= floor, "read version {version} after version {floor} was acknowledged");
                    assert!(version >= last, "read version {version} after reading {last}");
                    assert_eq!(v["payload"]["n"].as_u64(), Some(version), "body of another version: {v}");
                    last = version;
                    reads += 1;
                    if reads == 1 {
                        started.fetch_add(1, Ordering::AcqRel);
                    }
                    // A read through the router may never wait; let the other readers run.
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    while started.load(Ordering::Acquire) < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    for n in 2..=WRITES {
        let r = put(&app, OPS, "chat/race", json!({"payload": {"n": n}})).await;
        assert_eq!((r.status, r.json()["version"].as_u64()), (StatusCode::OK, Some(n)), "{}", r.text());
        acked.store(n, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let reads: Vec<u64> = futures_util::future::try_join_all(readers).await.expect("readers");
    assert!(reads.iter().all(|r| *r > 1), "every reader raced the writes: {reads:?}");
    let v = app.call("GET", "/api/v1/memory/chat/race", Some(OPS), None).await.json();
    assert_eq!((v["version"].as_u64(), v["payload"]["n"].as_u64()), (Some(WRITES), Some(WRITES)));
}

/// L1 holds at most `l1_cache_size` records and `l1_cache_bytes` bytes, whichever binds
/// first, and reads past it still find every record in L2.
#[tokio::test]
async fn l1_stays_within_its_entry_and_byte_bounds() {
    use daena_app::memory;
    for (entries, bytes) in [(100u64, 100 * 4096u64), (10_000, 32 * 1024)] {
        let app = TestApp::with_config(|c| {
            c.memory.l1_cache_size = entries;
            c.memory.l1_cache_bytes = bytes;
        });
        let who = common::ops(&app.daena);
        for i in 0..1000 {
            let body = json!({"text": format!("turn {i}: {}", "words ".repeat(40))});
            memory::put(&app.daena, &who, chat_put(format!("bound-{i}"), body)).await.expect("put");
        }
        for round in 0..2 {
            for i in 0..1000 {
                let (view, _) = memory::get(&app.daena, &who, "chat", &format!("bound-{i}")).expect("read");
                assert_eq!(view.meta.version, 1, "round {round}, bound-{i}");
            }
        }
        let (len, weight) = (app.daena.memory().l1.len() as u64, app.daena.memory().l1.weight());
        assert!(len > 0, "reads fill L1");
        assert!(len <= entries && weight <= bytes, "L1 holds {len} records, {weight} bytes; bounds {entries}, {bytes}");
        let m = app.call("GET", "/monitoring/memory", Some(OPS), None).await.json();
        assert_eq!((m["l1"]["entries"].as_u64(), m["l1"]["bytes"].as_u64()), (Some(len), Some(weight)), "{}", m["l1"]);
    }
}
