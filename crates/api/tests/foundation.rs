//! Foundation API tests: health, auth on every route, keys, the agent registry, bad input.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{OPS, TestApp};
use serde_json::{Value, json};

#[tokio::test]
async fn health_shows_checks_only_with_a_key() {
    let app = TestApp::new();
    let r = app.call("GET", "/health", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "degraded", "no agent has sent a heartbeat yet: {v}");
    assert!(v.get("checks").is_none());
    let v = app.call("GET", "/health", Some(OPS), None).await.json();
    let checks = v["checks"].as_object().expect("checks with a key");
    for name in ["data_dir_writable", "storage", "active_agents", "writes_enabled"] {
        assert!(checks.contains_key(name), "missing check {name}: {v}");
    }
    assert_eq!(checks["active_agents"]["observed"]["expected"], 48);
}

#[tokio::test]
async fn heartbeats_make_the_fleet_active_and_health_healthy() {
    let app = TestApp::new();
    let agents = app.call("GET", "/api/v1/agents", Some(OPS), None).await.json();
    assert_eq!(agents["total"], 48);
    for a in agents["agents"].as_array().expect("agents") {
        let id = a["id"].as_str().expect("id");
        let r = app.call("POST", &format!("/api/v1/agents/{id}/heartbeat"), Some(OPS), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let v = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(v["status"], "healthy", "{v}");
    let s = app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.json();
    assert_eq!(s["active_agents"], 48);
    assert_eq!(s["validation"]["structure_valid"], true);
    assert_eq!(s["validation"]["all_active"], true);
    // Past the window the agents are inactive again.
    app.clock.advance(301 * 1_000_000);
    let s = app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.json();
    assert_eq!(s["active_agents"], 0);
    assert_eq!(app.call("GET", "/health", None, None).await.json()["status"], "degraded");
}

#[tokio::test]
async fn registry_structure_is_six_by_eight() {
    let app = TestApp::new();
    let s = app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.json();
    assert_eq!(s["departments"], 8);
    assert_eq!(s["agents"], 48);
    assert_eq!(s["roles_per_department"], 6);
    assert_eq!(s["expected"], json!({"departments": 8, "agents": 48, "roles_per_department": 6}));
    let legal = app.call("GET", "/api/v1/agents?department=legal", Some(OPS), None).await.json();
    let ids: Vec<&str> = legal["agents"].as_array().expect("agents").iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "legal_advisor_a",
            "legal_advisor_b",
            "legal_scout_internal",
            "legal_scout_external",
            "legal_synth",
            "legal_executor"
        ]
    );
    let synth = &legal["agents"][4];
    assert_eq!(synth["cell_id"], "A75");
    assert_eq!(synth["neighbours"].as_array().expect("neighbours").len(), 5);
    let r = app.call("GET", "/api/v1/agents?department=janitorial", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    let r = app.call("POST", "/api/v1/agents/legal_janitor/heartbeat", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn heartbeats_are_per_tenant() {
    let app = TestApp::new();
    let acme = app.key("acme-bots", "agent", "acme", &[]).await;
    let r = app.call("POST", "/api/v1/agents/legal_synth/heartbeat", Some(&acme), None).await;
    assert_eq!(r.json()["tenant"], "acme");
    let mine = app.call("GET", "/api/v1/agents/structure", Some(&acme), None).await.json();
    assert_eq!(mine["active_agents"], 1);
    let default = app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.json();
    assert_eq!(default["active_agents"], 0, "another tenant's heartbeat does not count");
    let as_acme = app.call_as("GET", "/api/v1/agents/structure", Some(OPS), Some("acme"), None).await.json();
    assert_eq!(as_acme["active_agents"], 1, "ops may act for any tenant");
}

/// Every route the OpenAPI document marks as secured refuses a request without a key.
#[tokio::test]
async fn every_secured_route_refuses_a_missing_key() {
    let app = TestApp::new();
    let doc: Value = serde_json::from_str(&daena_api::openapi_json()).expect("openapi json");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if op.get("security").is_none() {
                continue;
            }
            let concrete =
                path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
            let body = if method == "get" || method == "delete" { None } else { Some(json!({})) };
            let r = app.call(&method.to_uppercase(), &concrete, None, body).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", r.text());
            assert_eq!(r.code(), "unauthenticated");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} secured routes found");
}

#[tokio::test]
async fn openapi_documents_every_route_and_the_error_shape() {
    let app = TestApp::new();
    let doc = app.call("GET", "/openapi.json", None, None).await.json();
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/health",
        "/metrics",
        "/openapi.json",
        "/api/v1/agents",
        "/api/v1/agents/structure",
        "/api/v1/agents/{id}/heartbeat",
        "/api/v1/admin/keys",
        "/api/v1/admin/keys/{id}",
        "/api/v1/admin/writes",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"].get("ErrorBody").is_some());
    let heartbeat = &doc["paths"]["/api/v1/agents/{id}/heartbeat"]["post"]["responses"];
    for status in ["200", "401", "403", "404"] {
        assert!(heartbeat.get(status).is_some(), "heartbeat lacks {status}: {heartbeat}");
    }
}

#[tokio::test]
async fn keys_roles_and_revocation() {
    let app = TestApp::new();
    let agent = app.key("bot", "agent", "acme", &[]).await;
    let auditor = app.key("aud", "auditor", "default", &[]).await;
    // An agent may not administer keys; an auditor may read the writes switch but not flip it.
    let r = app.call("GET", "/api/v1/admin/keys", Some(&agent), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(app.call("GET", "/api/v1/admin/writes", Some(&auditor), None).await.status, StatusCode::OK);
    let r = app.call("PUT", "/api/v1/admin/writes", Some(&auditor), Some(json!({"enabled": false}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.call("POST", "/api/v1/agents/hr_synth/heartbeat", Some(&auditor), None).await.status,
        StatusCode::FORBIDDEN
    );
    // Wrong tenant for an agent key; invalid tenant header.
    let r = app.call_as("GET", "/api/v1/agents", Some(&agent), Some("globex"), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["message"], "agent key bot is bound to tenant acme and cannot act for globex");
    let r = app.call_as("GET", "/api/v1/agents", Some(&agent), Some("../etc"), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    // Listing never shows key material.
    let list = app.call("GET", "/api/v1/admin/keys", Some(OPS), None).await;
    assert!(!list.text().contains(&agent) && !list.text().contains("digest"), "{}", list.text());
    // Revocation is immediate.
    assert_eq!(app.call("GET", "/api/v1/agents", Some(&agent), None).await.status, StatusCode::OK);
    let r = app.call("DELETE", "/api/v1/admin/keys/bot", Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["active"], false);
    let r = app.call("GET", "/api/v1/agents", Some(&agent), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert!(r.text().contains("revoked"));
    let r = app.call("GET", "/api/v1/agents", Some("dk_not-a-key"), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert_eq!(r.json()["error"]["message"], "unknown API key");
    assert_eq!(app.call("DELETE", "/api/v1/admin/keys/nobody", Some(OPS), None).await.status, StatusCode::NOT_FOUND);
    let r = app.call("POST", "/api/v1/admin/keys", Some(OPS), Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let app = TestApp::with_config(|c| {
        c.server.request_body_limit_bytes = 4096;
        c.memory.max_payload_bytes = 4096;
    });
    let send = |body: Body, ctype: &str| {
        Request::builder()
            .method("POST")
            .uri("/api/v1/admin/keys")
            .header("x-api-key", OPS)
            .header("content-type", ctype)
            .body(body)
            .expect("request")
    };
    let r = app.send(send(Body::from("{not json"), "application/json")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_json"));
    let r = app.send(send(Body::from(r#"{"name": 5, "role": "ops"}"#), "application/json")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_json"));
    let r = app.send(send(Body::from(r#"{"name":"a","role":"ops","bogus":1}"#), "application/json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "unknown fields are refused: {}", r.text());
    let big = format!(r#"{{"name":"{}","role":"ops"}}"#, "a".repeat(10_000));
    let r = app.send(send(Body::from(big), "application/json")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let r = app.send(send(Body::from("name=a"), "application/x-www-form-urlencoded")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let r = app.call("GET", "/api/v1/nothing-here", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = app.call("PATCH", "/api/v1/agents", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let r = app.call("GET", "/api/v1/agents?department=legal&extra=1", Some(OPS), None).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
    // Every response carries a request id: a fresh version 4 UUID, or the caller's own.
    let id = |r: &common::Resp| r.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let first = id(&r).expect("a request id");
    assert_eq!((first.len(), &first[14..15]), (36, "4"), "{first}");
    assert!(matches!(&first[19..20], "8" | "9" | "a" | "b"), "{first}");
    let second = id(&app.call("GET", "/health", None, None).await).expect("a request id");
    assert_ne!(first, second);
    let req =
        Request::builder().uri("/health").header("x-request-id", "trace-42").body(Body::empty()).expect("request");
    assert_eq!(id(&app.send(req).await).as_deref(), Some("trace-42"));
}

#[tokio::test]
async fn metrics_count_requests_per_route() {
    let app = TestApp::new();
    app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await;
    app.call("GET", "/api/v1/agents/structure", None, None).await;
    // /metrics needs an ops or auditor key by default, as X-API-Key or a bearer token.
    assert_eq!(app.call("GET", "/metrics", None, None).await.status, StatusCode::UNAUTHORIZED);
    let agent = app.key("bot", "agent", "acme", &[]).await;
    assert_eq!(app.call("GET", "/metrics", Some(&agent), None).await.status, StatusCode::FORBIDDEN);
    let req = axum::http::Request::builder()
        .uri("/metrics")
        .header("authorization", format!("Bearer {OPS}"))
        .body(axum::body::Body::empty())
        .expect("request");
    let text = app.send(req).await.text();
    assert!(
        text.contains(r#"daena_http_requests_total{method="GET",route="/api/v1/agents/structure",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"daena_http_requests_total{method="GET",route="/api/v1/agents/structure",status="401"} 1"#),
        "{text}"
    );
    assert!(text.contains("daena_http_request_duration_seconds_bucket"));
    assert!(text.contains("daena_expected_agents 48"));
    // Public metrics answer without a key, and name no tenant.
    let public = TestApp::with_config(|c| c.server.metrics_public = true);
    public.call("PUT", "/api/v1/memory/chat/k", Some(OPS), Some(json!({"payload": 1}))).await;
    let text = public.call("GET", "/metrics", None, None).await.text();
    assert!(text.contains(r#"daena_active_agents{tenant="all"} 0"#), "{text}");
    assert!(!text.contains(r#"tenant="default""#), "{text}");
    let r = app.call("GET", "/metrics", Some("Bearer"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
}

#[tokio::test]
async fn read_only_switch_shows_in_health() {
    let app = TestApp::new();
    let r = app.call("PUT", "/api/v1/admin/writes", Some(OPS), Some(json!({"enabled": false}))).await;
    assert_eq!(r.json()["enabled"], false);
    let v = app.call("GET", "/health", Some(OPS), None).await.json();
    assert_eq!(v["checks"]["writes_enabled"]["status"], "warn");
}
