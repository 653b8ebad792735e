//! Bounded cardinality and figures that cannot be forged: invented agent ids, pairs, kinds
//! and models do not grow the service's memory or its reports; reported tokens and costs are
//! validated and saturate; usage a client reports is kept apart from upstream spend.

mod common;

use axum::http::StatusCode;
use common::{FakeUpstream, OPS, TestApp};
use daena_app::analytics::{Interaction, Interactions};
use serde_json::json;

fn hop(from: String, to: String, kind: &str) -> Interaction {
    Interaction {
        from,
        to: Some(to),
        kind: kind.to_owned(),
        latency_ms: Some(2.0),
        success: true,
        tokens: 10,
        cost_usd: 0.001,
        at: None,
    }
}

#[tokio::test]
async fn a_million_invented_agents_keep_analytics_bounded() {
    let app = TestApp::with_config(|c| {
        c.agents.max_tracked_per_tenant = 100;
        c.agents.max_pairs_per_tenant = 300;
    });
    let who = common::ops(&app.daena);
    for batch in 0..1000 {
        let list = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                hop(format!("bot_{n}"), format!("peer_{n}"), &format!("kind{}", n % 50))
            })
            .collect();
        daena_app::analytics::record(&app.daena, &who, Interactions::Many(list)).expect("record");
    }
    // Fleet agents are always kept, besides the bound.
    let fleet = vec![hop("legal_synth".into(), "legal_advisor".into(), "review")];
    daena_app::analytics::record(&app.daena, &who, Interactions::Many(fleet)).expect("record");
    let (agents, pairs) = app.daena.monitoring().analytics().tracked("default");
    assert!(agents <= 100 + 2 + 1, "{agents} agents kept");
    assert!(pairs <= 300 + 1, "{pairs} pairs kept");
    let patterns = app.call("GET", "/api/v1/analytics/communication-patterns", Some(OPS), None).await;
    assert_eq!(patterns.status, StatusCode::OK);
    assert!(patterns.body.len() < 400_000, "{} bytes", patterns.body.len());
    let text = patterns.text();
    assert!(text.contains("(other)") && text.contains("legal_synth"), "the rest is counted as (other)");
    let eff = app.call("GET", "/api/v1/analytics/agents/efficiency", Some(OPS), None).await;
    assert!(eff.body.len() < 400_000, "{} bytes", eff.body.len());
}

#[tokio::test]
async fn reported_tokens_and_costs_are_validated() {
    let app = TestApp::new();
    let send = |tokens: u64, cost: f64| {
        let body =
            json!({"from": "legal_synth", "to": "legal_advisor", "kind": "m", "tokens": tokens, "cost_usd": cost});
        app.call("POST", "/api/v1/analytics/interactions", Some(OPS), Some(body))
    };
    assert_eq!(send(9_223_372_036_854_775_807, 0.0).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(send(1, 1e308).await.status, StatusCode::BAD_REQUEST);
    for _ in 0..3 {
        assert_eq!(send(1_000_000_000, 1_000_000.0).await.status, StatusCode::CREATED);
    }
    let eff = app.call("GET", "/api/v1/analytics/agents/efficiency", Some(OPS), None).await.json();
    let synth = eff["agents"].as_array().expect("agents").iter().find(|a| a["agent_id"] == "legal_synth").cloned();
    let synth = synth.expect("legal_synth");
    assert_eq!(synth["tokens"], 3_000_000_000u64, "{synth}");
    assert!(synth["cost_per_task_usd"].as_f64().is_some_and(f64::is_finite), "{synth}");
}

#[tokio::test]
async fn client_reported_usage_is_kept_apart_and_models_are_bounded() {
    let up = FakeUpstream::start().await;
    let app = TestApp::with_config(|c| {
        c.llm.upstream_url = Some(up.url.clone());
        c.llm.prices.insert(
            "gpt-test".into(),
            daena_app::config::Price { input_per_million: 1_000_000.0, output_per_million: 1_000_000.0 },
        );
    });
    // A cache-aside store whose usage the client makes up.
    let request = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "what is the plan"}]});
    let answer = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a plan"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}});
    let r =
        app.call("POST", "/api/v1/cas/store", Some(OPS), Some(json!({"request": request, "response": answer}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.call("POST", "/v1/chat/completions", Some(OPS), Some(request.clone())).await;
    assert_eq!(r.headers["x-daena-cache"], "hit");
    let costs = app.call("GET", "/monitoring/memory/cost-tracking", Some(OPS), None).await.json();
    assert_eq!((costs["spend_usd"].as_f64(), costs["saved_usd"].as_f64()), (Some(0.0), Some(0.0)), "{costs}");
    assert_eq!(costs["client_reported"]["spend_usd"], 2000.0, "{costs}");
    assert_eq!(costs["client_reported"]["saved_usd"], 2000.0, "{costs}");
    // A miss through the proxy is the upstream's word: spend.
    let miss = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "something else"}]});
    assert_eq!(app.call("POST", "/v1/chat/completions", Some(OPS), Some(miss)).await.headers["x-daena-cache"], "miss");
    let costs = app.call("GET", "/monitoring/memory/cost-tracking", Some(OPS), None).await.json();
    assert_eq!(costs["spend_usd"], 150.0, "the fake upstream's usage: {costs}");

    // Model names are kept whole (a "|" once split the key), and invented ones are bounded.
    for i in 0..60 {
        let request = json!({"model": format!("m|{i}"), "messages": [{"role": "user", "content": "q"}]});
        let r = app
            .call("POST", "/api/v1/cas/store", Some(OPS), Some(json!({"request": request, "response": answer})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let costs = app.call("GET", "/monitoring/memory/cost-tracking", Some(OPS), None).await.json();
    let models: Vec<&String> = costs["by_model"].as_object().expect("by_model").keys().collect();
    assert!(models.iter().any(|m| m.as_str() == "m|0"), "{models:?}");
    assert!(models.len() <= 32 + 2, "{} models: {models:?}", models.len());
    assert!(models.iter().any(|m| m.as_str() == "(other)"), "{models:?}");
}
