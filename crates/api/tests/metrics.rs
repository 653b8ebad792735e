//! `/metrics` carries every figure the runbook checks, with the values the service holds;
//! the Grafana dashboard and the Prometheus alert rules query only metrics `/metrics` emits.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{FakeUpstream, OPS, TestApp};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn names(samples: &BTreeMap<String, f64>) -> BTreeSet<String> {
    samples.keys().map(|s| s.split('{').next().unwrap_or(s).to_owned()).collect()
}

/// The `daena_*` metric names a PromQL expression refers to.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("daena_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

async fn active_app(up: &FakeUpstream) -> TestApp {
    let url = up.url.clone();
    let app = TestApp::with_config(move |c| {
        c.llm.upstream_url = Some(url);
        c.rate_limit.enabled = true;
        c.rate_limit.rpm = 60;
        c.rate_limit.burst = 40;
    });
    for id in ["legal_synth", "legal_executor", "finance_synth"] {
        assert_eq!(
            app.call("POST", &format!("/api/v1/agents/{id}/heartbeat"), Some(OPS), None).await.status,
            StatusCode::OK
        );
    }
    for key in ["a", "b", "c"] {
        let r = app.call("PUT", &format!("/api/v1/memory/chat/{key}"), Some(OPS), Some(json!({"payload": key}))).await;
        assert!(r.status.is_success(), "{}", r.text());
    }
    assert_eq!(app.call("GET", "/api/v1/memory/chat/a", Some(OPS), None).await.status, StatusCode::OK);
    let chat = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "Write the weekly finance summary for the board."}]});
    for _ in 0..4 {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("x-api-key", OPS)
            .header("content-type", "application/json")
            .body(Body::from(chat.to_string()))
            .expect("request");
        assert_eq!(app.send(req).await.status, StatusCode::OK);
    }
    for ok in [true, true, true, false] {
        let body =
            json!({"from": "legal_synth", "to": "legal_executor", "kind": "message", "latency_ms": 20, "success": ok});
        assert_eq!(
            app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(body)).await.status,
            StatusCode::CREATED
        );
    }
    app
}

#[tokio::test]
async fn metrics_carry_the_runbook_figures() {
    let up = FakeUpstream::start().await;
    let app = active_app(&up).await;
    // Prometheus scrapes with an auditor key of its own tenant, outside the limit used up below.
    let scraper = app.key("prometheus", "auditor", "monitoring", &[]).await;
    // Use up the burst so the limiter rejects.
    let mut rejected = 0;
    for _ in 0..40 {
        if app.call("GET", "/api/v1/agents/structure", Some(OPS), None).await.status == StatusCode::TOO_MANY_REQUESTS {
            rejected += 1;
        }
    }
    assert!(rejected > 0);
    let text = app.call("GET", "/metrics", Some(&scraper), None).await.text();
    let s = samples(&text);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("{k} missing from /metrics:\n{text}"));
    assert_eq!(get(r#"daena_active_agents{tenant="default"}"#), 3.0);
    assert_eq!(get("daena_expected_agents"), 48.0);
    // One miss, three exact hits.
    assert_eq!(get(r#"daena_cas_requests{result="miss"}"#), 1.0);
    assert_eq!(get(r#"daena_cas_requests{result="exact"}"#), 3.0);
    assert_eq!(get("daena_cas_hit_rate"), 0.75);
    assert_eq!(get(r#"daena_memory_records{tier="l2"}"#), 3.0);
    assert!(get(r#"daena_memory_latency_p95_ms{tier="l1"}"#) >= 0.0);
    assert!(s.contains_key(r#"daena_memory_latency_p95_ms{tier="l2"}"#));
    assert!(get("daena_memory_growth_records_per_hour") >= 0.0);
    assert_eq!(get("daena_divergence_rate"), 0.0);
    // The error rate covers interactions and the observed requests of agents.
    let e = get(r#"daena_error_rate{window="5m"}"#);
    assert!(e > 0.0 && e <= 0.25, "one failure in at least four: {e}");
    assert_eq!(get(r#"daena_rate_limit_requests{tenant="default",decision="rejected"}"#), f64::from(rejected));
    assert!(get(r#"daena_rate_limit_requests{tenant="default",decision="allowed"}"#) >= 40.0);
    assert!(get("daena_ledger_entries") > 0.0);
    // The group commit's own figures: every write above went through at least one batch.
    let batches = get("daena_ledger_commit_batches");
    assert!(batches >= 1.0, "batches {batches}");
    assert!(get("daena_ledger_commit_ops") >= batches);
    assert!(get("daena_ledger_commit_write_seconds") > 0.0);
    // Present from the start (`get` panics otherwise); it rises only when redb falls behind.
    assert!(get("daena_memory_settle_wait_seconds").is_finite());
    assert!(get("daena_cost_spend_usd") >= 0.0);
}

#[tokio::test]
async fn a_silent_fleet_shows_zero_active_agents() {
    let app = TestApp::new();
    let s = samples(&app.call("GET", "/metrics", Some(OPS), None).await.text());
    assert_eq!(s.get(r#"daena_active_agents{tenant="default"}"#), Some(&0.0));
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_emitted_metrics() {
    let up = FakeUpstream::start().await;
    let app = active_app(&up).await;
    // Every family shows up once something happened: a health run fills the checks.
    app.call("GET", "/health", Some(OPS), None).await;
    let emitted = names(&samples(&app.call("GET", "/metrics", Some(OPS), None).await.text()));

    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/dashboards/daena.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7);
    let mut queried = BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel without targets: {p}"));
        let mut in_panel = 0;
        for t in targets {
            for name in referenced(t["expr"].as_str().expect("expr")) {
                assert!(emitted.contains(&name), "panel {:?} queries {name}, which /metrics does not emit", p["title"]);
                queried.insert(name);
                in_panel += 1;
            }
        }
        assert!(in_panel > 0, "panel {:?} queries no daena metric", p["title"]);
    }
    for runbook_figure in [
        "daena_cas_hit_rate",
        "daena_memory_latency_p95_ms",
        "daena_error_rate",
        "daena_active_agents",
        "daena_memory_growth_records_per_hour",
        "daena_divergence_rate",
        "daena_rate_limit_requests",
    ] {
        assert!(queried.contains(runbook_figure), "the dashboard has no panel for {runbook_figure}");
    }

    let rules: Value = serde_norway::from_str(&repo_file("deploy/prometheus/alerts.yml")).expect("alerts are YAML");
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            assert!(rule["labels"]["severity"].is_string(), "{name} has no severity");
            assert!(rule["annotations"]["summary"].is_string(), "{name} has no summary");
            let refs = referenced(&expr);
            assert!(!refs.is_empty(), "{name} queries no daena metric");
            for r in refs {
                assert!(emitted.contains(&r), "alert {name} queries {r}, which /metrics does not emit");
            }
            alerts.insert(name, expr);
        }
    }
    // The runbook's thresholds.
    for (alert, threshold) in [
        ("DaenaCasHitRateLow", "daena_cas_hit_rate < 0.6"),
        ("DaenaCasHitRateCritical", "daena_cas_hit_rate < 0.5"),
        ("DaenaL1LatencyHigh", r#"daena_memory_latency_p95_ms{tier="l1"} > 25"#),
        ("DaenaL2LatencyHigh", r#"daena_memory_latency_p95_ms{tier="l2"} > 120"#),
        ("DaenaErrorRateHigh", "> 0.001"),
        ("DaenaAgentsMissing", "daena_expected_agents"),
        ("DaenaDivergenceHigh", "daena_divergence_rate > 0.01"),
    ] {
        let expr = alerts.get(alert).unwrap_or_else(|| panic!("no alert {alert}"));
        assert!(expr.contains(threshold), "{alert}: {expr} lacks {threshold}");
    }
}

/// The anonymous surface stays cheap and bounded: invented methods do not make new series,
/// `/health` probes the disk at most every two seconds, and a scrape does not recompute the
/// state figures of the scrape before it.
#[tokio::test]
async fn anonymous_requests_are_cheap_and_bounded() {
    let app = TestApp::new();
    for i in 0..20 {
        let method = format!("X{}{i}", "A".repeat(200));
        let req = axum::http::Request::builder().method(method.as_str()).uri("/health").body(axum::body::Body::empty());
        app.send(req.expect("request")).await;
    }
    let text = app.call("GET", "/metrics", Some(OPS), None).await.text();
    assert!(text.contains(r#"daena_http_requests_total{method="other",route="/health",status="405"} 20"#), "{text}");
    assert!(!text.contains("AAAA"), "no method name of a client's making is a label");

    let before = daena_app::health::probes_run(&app.daena);
    for _ in 0..50 {
        assert_eq!(app.call("GET", "/health", None, None).await.status, StatusCode::OK);
    }
    assert!(daena_app::health::probes_run(&app.daena) - before <= 2, "50 requests, at most 2 probes");

    // The state gauges of the first scrape serve the next ones for a few seconds.
    let records = |t: &str| samples(t).get(r#"daena_memory_records{tier="l2"}"#).copied();
    assert_eq!(records(&text), Some(0.0));
    app.call("PUT", "/api/v1/memory/chat/k", Some(OPS), Some(json!({"payload": 1}))).await;
    let again = app.call("GET", "/metrics", Some(OPS), None).await.text();
    assert_eq!(records(&again), Some(0.0), "refreshed at most every {:?}", daena_app::metrics_view::REFRESH);
}
