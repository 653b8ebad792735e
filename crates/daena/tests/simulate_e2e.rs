//! `daena simulate` against the real binary: it refuses an upstream that is not its scripted
//! model, and a short run leaves meaningful numbers on every analytics and monitoring route.

mod common;

use common::{OPS, Server, daena, run, stderr, stdout};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn get(url: &str, path: &str) -> Value {
    let r = common::client().get(format!("{url}{path}")).header("X-API-Key", OPS).send().await.expect("get");
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_fills_analytics_and_monitoring() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}/v1");
    let server = Server::start(tmp.path(), &[("DAENA_LLM_UPSTREAM_URL", upstream.as_str())]);

    // The simulator's model on another port: the server cannot reach it, and it says why.
    let other = free_port().to_string();
    let o = run(daena(tmp.path()).args([
        "simulate",
        "--url",
        &server.url,
        "--api-key",
        OPS,
        "--duration",
        "2s",
        "--upstream-listen",
        &format!("127.0.0.1:{other}"),
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("DAENA_LLM_UPSTREAM_URL=http://127.0.0.1:"), "{}", stderr(&o));
    // A wrong key is named as such before any traffic.
    let o = run(daena(tmp.path()).args(["simulate", "--url", &server.url, "--api-key", "nope", "--duration", "2s"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("API key"), "{}", stderr(&o));

    let o = run(daena(tmp.path()).args([
        "simulate",
        "--url",
        &server.url,
        "--api-key",
        OPS,
        "--duration",
        "8s",
        "--rate",
        "1",
        "--seed",
        "3",
        "--upstream-listen",
        &format!("127.0.0.1:{port}"),
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let s: Value = serde_json::from_str(&stdout(&o)).expect("summary json");
    assert_eq!(s["agents"], 48);
    assert_eq!(s["errors"], 0, "{s}");
    assert!(s["history_interactions"].as_u64().unwrap_or(0) > 40_000, "{s}");
    for kind in ["heartbeat", "interaction", "llm", "memory_read", "memory_write"] {
        assert!(s["by_kind"][kind]["requests"].as_u64().unwrap_or(0) > 0, "{kind}: {s}");
    }
    let cache = &s["llm_cache"];
    let served = cache["hit"].as_u64().unwrap_or(0) + cache["near"].as_u64().unwrap_or(0);
    let misses = cache["miss"].as_u64().unwrap_or(0);
    assert!(served > 0 && misses > 0, "{s}");
    assert_eq!(s["upstream_calls"].as_u64(), Some(misses + 1), "one upstream call per miss, plus the preflight: {s}");
    let (near, cross) =
        (s["interactions_neighbour"].as_u64().unwrap_or(0), s["interactions_cross_department"].as_u64().unwrap_or(0));
    assert!(near > cross && cross > 0, "{s}");
    let anomaly = s["anomaly_agent"].as_str().expect("anomaly agent").to_owned();
    assert!(!s["anomaly_detected"].as_array().expect("list").is_empty(), "the injected anomaly is flagged: {s}");

    // Every route an operator watches shows the run.
    let summary = get(&server.url, "/api/v1/analytics/summary").await;
    assert_eq!(summary["active_agents"], 48, "{summary}");
    assert!(summary["total_observed_requests"].as_u64().unwrap_or(0) > 0, "{summary}");
    let anomalies = get(&server.url, "/api/v1/analytics/anomalies").await;
    assert!(anomalies["anomalies"].as_array().expect("list").iter().any(|a| a["agent_id"] == anomaly.as_str()));
    let patterns = get(&server.url, "/api/v1/analytics/communication-patterns").await;
    assert!(patterns.to_string().contains("neighbour"), "{patterns}");
    let eff = get(&server.url, "/api/v1/analytics/agents/efficiency").await;
    assert!(eff["agents"].as_array().expect("agents").len() >= 48, "{eff}");
    let cas = get(&server.url, "/monitoring/memory/cas").await;
    assert!(cas["hit_rate"].as_f64().unwrap_or(0.0) > 0.0, "{cas}");
    let memory = get(&server.url, "/monitoring/memory").await;
    assert!(memory.to_string().contains("l2"), "{memory}");
    let metrics = common::client()
        .get(format!("{}/metrics", server.url))
        .header("X-API-Key", OPS)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("daena_cas_hit_rate") > 0.0, "{metrics}");
    assert_eq!(value("daena_active_agents"), 48.0);
    // One series per tier; some tiers are empty after a short run.
    let records: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("daena_memory_records{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert!(records > 0.0, "{metrics}");
}
