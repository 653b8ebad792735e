//! Fleet analytics with a fake clock: steady traffic raises no anomaly, an injected spike
//! does; the communication matrix equals what was sent; observed calls per agent.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{OPS, TestApp};
use daena_app::clock::Clock;
use daena_core::time::Micros;
use serde_json::json;
use std::collections::BTreeMap;

const MINUTE: i64 = 60_000_000;

async fn send(app: &TestApp, from: &str, to: &str, latency: f64, success: bool) {
    let r = app
        .call("POST", "/api/v1/analytics/interactions", Some(OPS),
            Some(json!({"from": from, "to": to, "kind": "message", "latency_ms": latency, "success": success, "tokens": 10, "cost_usd": 0.001})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

#[tokio::test]
async fn steady_traffic_has_no_anomalies_and_a_spike_does() {
    let app = TestApp::new();
    // An hour of steady traffic: 5 messages a minute from each of two agents.
    for minute in 0..61 {
        for i in 0..5 {
            send(&app, "legal_synth", "legal_executor", 100.0 + f64::from(i), true).await;
            send(&app, "sales_scout_internal", "sales_synth", 80.0 + f64::from((minute % 3) as u8), true).await;
        }
        app.clock.advance(MINUTE);
    }
    let a = app.call("GET", "/api/v1/analytics/anomalies", Some(OPS), None).await.json();
    assert_eq!(a["total_anomalies"], 0, "steady traffic: {a}");
    // A spike: legal_synth sends 60 in one minute, slowly and half failing.
    for i in 0..60 {
        send(&app, "legal_synth", "legal_executor", 900.0, i % 2 == 0).await;
    }
    for _ in 0..5 {
        send(&app, "sales_scout_internal", "sales_synth", 80.0, true).await;
    }
    app.clock.advance(MINUTE);
    let a = app.call("GET", "/api/v1/analytics/anomalies", Some(OPS), None).await.json();
    let found: BTreeMap<String, String> = a["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .map(|x| {
            (
                format!("{}/{}", x["agent_id"].as_str().unwrap_or(""), x["metric"].as_str().unwrap_or("")),
                x["severity"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for metric in ["activity", "error_rate", "latency_ms"] {
        assert_eq!(found.get(&format!("legal_synth/{metric}")).map(String::as_str), Some("high"), "{a}");
    }
    assert!(!found.keys().any(|k| k.starts_with("sales_")), "the steady agent stays quiet: {a}");
    let x = &a["anomalies"][0];
    assert_eq!(x["method"], "median_mad");
    assert_eq!(x["window"], "60m");
    let s = app.call("GET", "/api/v1/analytics/summary", Some(OPS), None).await.json();
    assert!(s["recent_anomalies"].as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(s["total_interactions"], 61 * 10 + 65);
    assert!(s["error_rate_5m"]["rate"].as_f64().unwrap_or(0.0) > 0.3, "{s}");
}

#[tokio::test]
async fn communication_matrix_equals_what_was_sent() {
    let app = TestApp::new();
    let sent = [
        ("legal_synth", "legal_executor", 3, true), // neighbours
        ("legal_executor", "legal_synth", 2, true), // neighbours
        ("legal_synth", "finance_synth", 4, false), // cross-department, failing
        ("hr_advisor_a", "legal_synth", 1, true),   // cross-department
    ];
    for (from, to, n, ok) in sent {
        for _ in 0..n {
            send(&app, from, to, 50.0, ok).await;
        }
    }
    let p = app.call("GET", "/api/v1/analytics/communication-patterns", Some(OPS), None).await.json();
    assert_eq!(p["total_messages"], 10);
    let got: BTreeMap<(String, String), u64> = p["agent_matrix"]
        .as_array()
        .expect("matrix")
        .iter()
        .map(|m| {
            (
                (m["from"].as_str().unwrap_or("").to_owned(), m["to"].as_str().unwrap_or("").to_owned()),
                m["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: BTreeMap<(String, String), u64> =
        sent.iter().map(|(f, t, n, _)| (((*f).to_owned(), (*t).to_owned()), *n as u64)).collect();
    assert_eq!(got, want);
    assert_eq!(p["department_matrix"]["legal -> finance"], 4);
    assert_eq!(p["department_matrix"]["legal -> legal"], 5);
    assert_eq!(p["neighbour_share"], 0.5);
    assert_eq!(p["cross_department_share"], 0.5);
    let only =
        app.call("GET", "/api/v1/analytics/communication-patterns?agent_id=hr_advisor_a", Some(OPS), None).await.json();
    assert_eq!(only["total_messages"], 1);
    let e = app.call("GET", "/api/v1/analytics/agents/efficiency?department=legal", Some(OPS), None).await.json();
    let synth = e["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["agent_id"] == "legal_synth")
        .cloned()
        .expect("synth");
    assert_eq!(synth["tasks"], 7);
    assert_eq!(synth["success_rate"], 0.4286);
    assert_eq!(synth["cost_per_task_usd"], 0.001);
    assert!(e["agents"].as_array().expect("agents").iter().all(|a| a["department"] == "legal"));
    let r = app
        .call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(json!({"from": "bad id!", "kind": "x"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .call(
            "POST",
            "/api/v1/analytics/interactions",
            Some(OPS),
            Some(json!({"from": "a", "kind": "x", "latency_ms": -1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn observed_calls_per_agent_survive_a_restart() {
    let app = TestApp::new();
    let put = |key: &str| {
        Request::builder()
            .method("PUT")
            .uri(format!("/api/v1/memory/chat/{key}"))
            .header("x-api-key", OPS)
            .header("x-agent-id", "customer_synth")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"payload": 1}"#))
            .expect("request")
    };
    app.send(put("a")).await;
    app.send(put("b")).await;
    let get = Request::builder()
        .uri("/api/v1/memory/chat/a")
        .header("x-api-key", OPS)
        .header("x-agent-id", "customer_synth")
        .body(Body::empty())
        .expect("request");
    app.send(get).await;
    let app = app.reopen(|_| {}).await;
    let e = app.call("GET", "/api/v1/analytics/agents/efficiency", Some(OPS), None).await.json();
    let a = e["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["agent_id"] == "customer_synth")
        .cloned()
        .expect("agent");
    assert_eq!(
        (a["memory_writes"].as_u64(), a["memory_reads"].as_u64(), a["requests"].as_u64()),
        (Some(2), Some(1), Some(3)),
        "{a}"
    );
    let auditor = app.key("aud", "auditor", "default", &[]).await;
    assert_eq!(app.call("GET", "/api/v1/analytics/summary", Some(&auditor), None).await.status, StatusCode::OK);
    let agent = app.key("bot", "agent", "default", &[]).await;
    assert_eq!(app.call("GET", "/api/v1/analytics/summary", Some(&agent), None).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn late_batches_fill_their_minutes_and_a_failure_burst_shows_at_once() {
    let app = TestApp::new();
    let now = app.clock.now();
    let at = |minutes_ago: i64| daena_app::clock::rfc3339(Micros(now.0 - minutes_ago * MINUTE));
    // Twenty minutes of history reported late in one batch: 6 a minute, all fine.
    let batch: Vec<_> = (1..=20)
        .flat_map(|m| {
            (0..6).map(move |i| {
                json!({"from": "finance_synth", "to": "finance_executor", "kind": "delegation",
                       "latency_ms": 50.0 + f64::from(i), "at": at(m)})
            })
        })
        .collect();
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(json!(batch))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["count"], 120);
    let p = app.call("GET", "/api/v1/analytics/summary", Some(OPS), None).await.json();
    assert_eq!(p["total_interactions"], 120, "{p}");
    let a = app.call("GET", "/api/v1/analytics/anomalies", Some(OPS), None).await.json();
    assert_eq!(a["total_anomalies"], 0, "{a}");
    // Now, in the current minute, a burst of slow failures: seen without waiting for the minute.
    let burst: Vec<_> = (0..12)
        .map(|_| json!({"from": "finance_synth", "to": "finance_executor", "kind": "delegation", "latency_ms": 800.0, "success": false}))
        .collect();
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(json!(burst))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let a = app.call("GET", "/api/v1/analytics/anomalies", Some(OPS), None).await.json();
    let metrics: Vec<&str> =
        a["anomalies"].as_array().expect("list").iter().filter_map(|x| x["metric"].as_str()).collect();
    assert!(metrics.contains(&"error_rate") && metrics.contains(&"latency_ms"), "{a}");
    assert!(!metrics.contains(&"activity"), "activity waits for a complete minute: {a}");

    // A batch is all or nothing; times outside the window and oversized batches are refused.
    let before = app.call("GET", "/api/v1/analytics/summary", Some(OPS), None).await.json();
    let bad = json!([{"from": "hr_synth", "kind": "x"}, {"from": "hr_synth", "kind": "x", "at": at(200)}]);
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(bad)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("interaction 1") && r.text().contains("outside the analytics window"), "{}", r.text());
    let after = app.call("GET", "/api/v1/analytics/summary", Some(OPS), None).await.json();
    assert_eq!(before["total_interactions"], after["total_interactions"]);
    let r = app
        .call(
            "POST",
            "/api/v1/analytics/interactions",
            Some(OPS),
            Some(json!([{"from": "hr_synth", "kind": "x", "at": "yesterday"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(json!([]))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let many: Vec<_> = (0..1001).map(|_| json!({"from": "hr_synth", "kind": "x"})).collect();
    let r = app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(json!(many))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
