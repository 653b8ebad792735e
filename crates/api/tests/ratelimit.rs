//! Tenant rate limits: 429 after the burst with the right headers, refill over a fake clock,
//! overrides, statistics that match what was sent.

mod common;

use axum::http::StatusCode;
use common::{OPS, TestApp};
use serde_json::json;

fn limited(rpm: u32, burst: u32) -> TestApp {
    TestApp::with_config(move |c| {
        c.rate_limit.enabled = true;
        c.rate_limit.rpm = rpm;
        c.rate_limit.burst = burst;
    })
}

#[tokio::test]
async fn burst_then_429_then_refill() {
    let app = limited(60, 5);
    let agent = app.key("bot", "agent", "acme", &[]).await;
    for i in 0..5 {
        let r = app.call("GET", "/api/v1/agents/structure", Some(&agent), None).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.headers["x-ratelimit-limit"], "60");
        assert_eq!(r.headers["x-ratelimit-remaining"].to_str().unwrap_or(""), (4 - i).to_string());
    }
    let r = app.call("GET", "/api/v1/agents/structure", Some(&agent), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers["x-ratelimit-reset"], "5");
    // Another tenant has its own full burst.
    assert_eq!(app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.status, StatusCode::OK);
    // One second later one request fits again; five seconds later the whole burst.
    app.clock.advance(1_000_000);
    assert_eq!(app.call("GET", "/api/v1/agents/structure", Some(&agent), None).await.status, StatusCode::OK);
    assert_eq!(
        app.call("GET", "/api/v1/agents/structure", Some(&agent), None).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(5_000_000);
    for _ in 0..5 {
        assert_eq!(app.call("GET", "/api/v1/agents/structure", Some(&agent), None).await.status, StatusCode::OK);
    }
    // Unauthenticated requests are refused by auth, not counted.
    assert_eq!(app.call("GET", "/api/v1/agents/structure", None, None).await.status, StatusCode::UNAUTHORIZED);
    let s = app.call("GET", "/api/v1/tenant-rate-limit/stats", Some(OPS), None).await.json();
    let acme = s["tenants"].as_array().expect("tenants").iter().find(|t| t["tenant"] == "acme").cloned().expect("acme");
    assert_eq!((acme["allowed"].as_u64(), acme["rejected"].as_u64()), (Some(11), Some(2)), "{acme}");
    assert_eq!(s["defaults"], json!({"rpm": 60, "burst": 5}));
}

#[tokio::test]
async fn overrides_apply_at_once_and_persist() {
    let app = limited(60, 2);
    let agent = app.key("bot", "agent", "acme", &[]).await;
    let r = app.call("PUT", "/api/v1/tenant-rate-limit/acme", Some(OPS), Some(json!({"rpm": 600, "burst": 10}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["overridden"], true);
    for _ in 0..10 {
        assert_eq!(app.call("GET", "/api/v1/agents", Some(&agent), None).await.status, StatusCode::OK);
    }
    assert_eq!(app.call("GET", "/api/v1/agents", Some(&agent), None).await.status, StatusCode::TOO_MANY_REQUESTS);
    let st = app.call("GET", "/api/v1/tenant-rate-limit/acme/status", Some(&agent), None).await;
    assert_eq!(st.status, StatusCode::TOO_MANY_REQUESTS, "status calls count too");
    app.clock.advance(60_000_000);
    let st = app.call("GET", "/api/v1/tenant-rate-limit/acme/status", Some(&agent), None).await.json();
    assert_eq!(st["limit"], json!({"rpm": 600, "burst": 10}));
    assert_eq!(
        app.call("GET", "/api/v1/tenant-rate-limit/globex/status", Some(&agent), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("PUT", "/api/v1/tenant-rate-limit/acme", Some(&agent), Some(json!({"rpm": 1, "burst": 1})))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("PUT", "/api/v1/tenant-rate-limit/acme", Some(OPS), Some(json!({"rpm": 0, "burst": 1}))).await.status,
        StatusCode::BAD_REQUEST
    );
    let app = app.reopen(|_| {}).await;
    let st = app.call("GET", "/api/v1/tenant-rate-limit/acme/status", Some(OPS), None).await.json();
    assert_eq!(st["limit"], json!({"rpm": 600, "burst": 10}), "overrides survive a restart");
    let entries = app.call("GET", "/api/v1/ledger/entries", Some(OPS), None).await.json();
    assert!(entries["entries"].as_array().expect("entries").iter().any(|e| e["action"] == "ratelimit.override"));
    app.clock.advance(60_000_000); // the default tenant's burst of 2 is spent by now
    let r = app.call("DELETE", "/api/v1/tenant-rate-limit/acme", Some(OPS), None).await.json();
    assert_eq!((r["overridden"].as_bool(), r["limit"]["burst"].as_u64()), (Some(false), Some(2)));
}

/// Each request is authenticated once, before the rate limit, and the caller handed on; routes still
/// refuse roles they do not admit, and an ops key acting for a tenant is counted and served
/// as that tenant.
#[tokio::test]
async fn the_caller_authenticated_for_the_limit_is_checked_by_each_route() {
    let app = limited(600, 50);
    let auditor = app.key("aud", "auditor", "acme", &[]).await;
    let agent = app.key("bot", "agent", "acme", &[]).await;
    let r = app.call("PUT", "/api/v1/memory/chat/k", Some(&auditor), Some(json!({"payload": 1}))).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{}", r.text());
    assert!(r.text().contains("needs ops or agent"), "{}", r.text());
    assert_eq!(r.headers["x-ratelimit-limit"], "600", "counted against the tenant all the same");
    let r = app.call("GET", "/api/v1/admin/keys", Some(&agent), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Ops writing for acme: the record is acme's, found by acme's agent and not by ops's own tenant.
    let r = app.call_as("PUT", "/api/v1/memory/chat/k", Some(OPS), Some("acme"), Some(json!({"payload": 2}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(app.call("GET", "/api/v1/memory/chat/k", Some(&agent), None).await.status, StatusCode::OK);
    assert_eq!(app.call("GET", "/api/v1/memory/chat/k", Some(OPS), None).await.status, StatusCode::NOT_FOUND);
    let s = app.call("GET", "/api/v1/tenant-rate-limit/stats", Some(OPS), None).await.json();
    let acme = s["tenants"].as_array().expect("tenants").iter().find(|t| t["tenant"] == "acme").cloned().expect("acme");
    assert_eq!(acme["allowed"].as_u64(), Some(4), "{acme}");
}
