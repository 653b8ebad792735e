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

/// Issue: a tenant set to 1 rpm, burst 5, spent its 5 and was raised to 6000 rpm: it kept
/// getting 429 "retry after 299 s". A changed limit starts from its whole new burst.
#[tokio::test]
async fn a_changed_limit_takes_effect_at_once() {
    let app = limited(600, 10);
    let agent = app.key("bot", "agent", "acme", &[]).await;
    let set = |limit: Option<serde_json::Value>| {
        let app = &app;
        async move {
            let r = match limit {
                Some(l) => app.call("PUT", "/api/v1/tenant-rate-limit/acme", Some(OPS), Some(l)).await,
                None => app.call("DELETE", "/api/v1/tenant-rate-limit/acme", Some(OPS), None).await,
            };
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    };
    let get = || app.call("GET", "/api/v1/agents/structure", Some(&agent), None);
    set(Some(json!({"rpm": 1, "burst": 5}))).await;
    for i in 0..5 {
        assert_eq!(get().await.status, StatusCode::OK, "request {i}");
    }
    let r = get().await;
    assert_eq!((r.status, r.headers["retry-after"].to_str().ok()), (StatusCode::TOO_MANY_REQUESTS, Some("60")));

    // Raised: the whole new burst, at once.
    set(Some(json!({"rpm": 6000, "burst": 100}))).await;
    for i in 0..100 {
        let r = get().await;
        assert_eq!(r.status, StatusCode::OK, "request {i} after raising the limit: {}", r.text());
    }
    assert_eq!(get().await.status, StatusCode::TOO_MANY_REQUESTS, "and no more than the new burst");

    // Removed: the default limit, with its whole burst.
    set(None).await;
    let st = app.call("GET", "/api/v1/tenant-rate-limit/acme/status", Some(OPS), None).await.json();
    assert_eq!((st["limit"]["burst"].as_u64(), st["remaining"].as_u64()), (Some(10), Some(10)), "{st}");
    for i in 0..10 {
        assert_eq!(get().await.status, StatusCode::OK, "request {i} after removing the override");
    }
    assert_eq!(get().await.status, StatusCode::TOO_MANY_REQUESTS);

    // Setting the limit it already has gives no fresh burst.
    set(Some(json!({"rpm": 600, "burst": 10}))).await;
    assert_eq!(get().await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Sends GET `path` from `peer` with `key`.
async fn from(app: &TestApp, peer: &str, key: Option<&str>, path: &str) -> common::Resp {
    let addr: std::net::SocketAddr = peer.parse().expect("address");
    let mut req = axum::http::Request::builder().uri(path).extension(axum::extract::ConnectInfo(addr));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    app.send(req.body(axum::body::Body::empty()).expect("request")).await
}

/// Issue: failed authentication was unlimited. Past a burst of unknown or revoked keys an
/// address gets 429 with Retry-After, before any key lookup, whatever key it sends next;
/// other addresses and keyless requests are not affected; the budget refills.
#[tokio::test]
async fn failed_authentication_is_limited_per_address() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.failed_auth_burst = 3;
        c.rate_limit.failed_auth_per_minute = 6;
    });
    let agent = app.key("bot", "agent", "acme", &[]).await;
    let guesser = "198.51.100.9:40000";
    for i in 0..3 {
        let r = from(&app, guesser, Some(&format!("dk_guess{i}")), "/api/v1/agents").await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"), "guess {i}");
    }
    let r = from(&app, guesser, Some("dk_guess4"), "/api/v1/agents").await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{}", r.text());
    assert_eq!(r.headers["retry-after"], "10");
    // Refused before the lookup: a valid key from that address is refused too.
    assert_eq!(from(&app, guesser, Some(&agent), "/api/v1/agents").await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another port of the same host is the same address; another host is not.
    assert_eq!(
        from(&app, "198.51.100.9:40001", Some(&agent), "/api/v1/agents").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from(&app, "198.51.100.10:40000", Some(&agent), "/api/v1/agents").await.status, StatusCode::OK);
    // Without a key nothing is looked up or counted: the public health status still answers.
    assert_ne!(from(&app, guesser, None, "/health").await.status, StatusCode::TOO_MANY_REQUESTS);
    // A revoked key counts as a failure; a known key without the right does not.
    let good = "192.0.2.5:1000";
    app.call("DELETE", "/api/v1/admin/keys/bot", Some(OPS), None).await;
    for _ in 0..2 {
        assert_eq!(from(&app, good, Some(OPS), "/api/v1/agents").await.status, StatusCode::OK);
    }
    let aud = app.key("aud", "auditor", "acme", &[]).await;
    for _ in 0..5 {
        assert_eq!(from(&app, good, Some(&aud), "/api/v1/admin/keys").await.status, StatusCode::FORBIDDEN);
    }
    for _ in 0..3 {
        assert_eq!(from(&app, good, Some(&agent), "/api/v1/agents").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(from(&app, good, Some(OPS), "/api/v1/agents").await.status, StatusCode::TOO_MANY_REQUESTS);
    // The budget refills at 6 per minute: one attempt every 10 s.
    app.clock.advance(10_000_000);
    assert_eq!(from(&app, guesser, Some(OPS), "/api/v1/agents").await.status, StatusCode::OK);
    // Counted in the metrics.
    let metrics = app.call("GET", "/metrics", Some(OPS), None).await.text();
    assert!(metrics.contains("daena_auth_failures 6"), "{metrics}");
    assert!(metrics.contains("daena_auth_throttled 4"), "{metrics}");
}

/// Behind a load balancer every request comes from its address: the failed-authentication
/// limit then counts the client that `X-Forwarded-For` names, when (and only when) the peer
/// is a configured trusted proxy.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited_not_the_proxy() {
    let app = TestApp::with_config(|c| {
        c.rate_limit.failed_auth_burst = 2;
        c.rate_limit.failed_auth_per_minute = 6;
        c.server.trusted_proxies = vec!["10.0.0.0/8".parse().expect("cidr")];
    });
    let send = |peer: &'static str, xff: &'static str, key: &'static str| {
        let addr: std::net::SocketAddr = peer.parse().expect("address");
        let req = axum::http::Request::builder()
            .uri("/api/v1/agents")
            .extension(axum::extract::ConnectInfo(addr))
            .header("x-forwarded-for", xff)
            .header("x-api-key", key)
            .body(axum::body::Body::empty())
            .expect("request");
        app.send(req)
    };
    let lb = "10.0.0.2:5000";
    for _ in 0..2 {
        assert_eq!(send(lb, "198.51.100.7", "dk_guess").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        send(lb, "198.51.100.7", "dk_guess").await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser is limited"
    );
    assert_eq!(
        send(lb, "198.51.100.8", OPS).await.status,
        StatusCode::OK,
        "another client behind the same proxy is not"
    );
    // A forged entry left of the proxy's own does not help the guesser.
    assert_eq!(send(lb, "203.0.113.1, 198.51.100.7", OPS).await.status, StatusCode::TOO_MANY_REQUESTS);
    // From an untrusted peer the header is ignored: the peer itself is limited.
    let direct = "192.0.2.50:1";
    for (i, claimed) in ["198.51.100.20", "198.51.100.21"].iter().enumerate() {
        let status = send(direct, claimed, "dk_guess").await.status;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(
        send(direct, "198.51.100.22", OPS).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a new claimed address does not reset it"
    );
}
