//! `daena runbook` and `daena policy inspect` with the real binary: the checklist passes,
//! warns and fails on what the server reports, and the policy explanation names its rules.

mod common;

use common::{OPS, Server, client, daena, run, stderr, stdout};
use serde_json::{Value, json};

fn runbook(server: &Server, cadence: &str) -> (Option<i32>, Value) {
    let o = run(daena(&server.dir).args(["runbook", cadence, "--url", &server.url, "--api-key", OPS, "--json"]));
    let v = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code(), v)
}

fn status_of<'a>(report: &'a Value, check: &str) -> &'a str {
    report["checks"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == check))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_else(|| panic!("no check {check}: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_daily_judges_the_servers_figures() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    // A fresh server: nothing is wrong, but there is nothing to judge either.
    let (code, r) = runbook(&server, "daily");
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["status"], "WARN", "{r}");
    assert_eq!(status_of(&r, "CAS hit rate"), "WARN");
    assert_eq!(status_of(&r, "error rate (1 h)"), "WARN");
    assert_eq!(status_of(&r, "active agents"), "WARN");

    // Every agent checks in and one interaction in five fails: the error rate check fails.
    let http = client();
    for a in daena_core::agents::fleet() {
        let r = http
            .post(format!("{}/api/v1/agents/{}/heartbeat", server.url, a.id))
            .header("X-API-Key", OPS)
            .send()
            .await
            .expect("heartbeat");
        assert!(r.status().is_success());
    }
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"from": "legal_synth", "to": "legal_executor", "kind": "message", "success": i % 5 != 0}))
        .collect();
    let r = http
        .post(format!("{}/api/v1/analytics/interactions", server.url))
        .header("X-API-Key", OPS)
        .json(&batch)
        .send()
        .await
        .expect("interactions");
    assert!(r.status().is_success());
    let (code, r) = runbook(&server, "daily");
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["status"], "FAIL");
    assert_eq!(status_of(&r, "error rate (1 h)"), "FAIL");
    assert_eq!(status_of(&r, "active agents"), "PASS");
    assert_eq!(status_of(&r, "health"), "PASS", "{r}");

    // Weekly: the ledger passes; backups fail until a snapshot is taken.
    let (code, r) = runbook(&server, "weekly");
    assert_eq!(code, Some(1));
    assert_eq!(status_of(&r, "ledger"), "PASS", "{r}");
    assert_eq!(status_of(&r, "backups"), "FAIL");
    // The performance review judges the reports: legal_synth fails one task in five, no
    // LLM request was made, and legal_executor is the only one receiving.
    assert_eq!(status_of(&r, "agent efficiency"), "WARN", "{r}");
    let detail = |name: &str| {
        r["checks"].as_array().and_then(|l| l.iter().find(|c| c["name"] == name)).map(|c| c["detail"].to_string())
    };
    assert!(detail("agent efficiency").is_some_and(|d| d.contains("legal_synth")), "{r}");
    assert_eq!(status_of(&r, "cost tracking"), "WARN", "{r}");
    assert!(["PASS", "WARN"].contains(&status_of(&r, "communication patterns")), "{r}");
    let o = run(daena(&server.dir).env("DAENA_API_KEY", OPS).args(["snapshot", "create"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (_, r) = runbook(&server, "weekly");
    assert_eq!(status_of(&r, "backups"), "PASS", "{r}");
    assert_eq!(status_of(&r, "DR drill"), "FAIL", "no drill yet: {r}");
    let o = run(daena(&server.dir).env("DAENA_API_KEY", OPS).args(["drill", "--out", "drill.json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (_, r) = runbook(&server, "weekly");
    assert_eq!(status_of(&r, "DR drill"), "PASS", "{r}");

    let (code, r) = runbook(&server, "monthly");
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(status_of(&r, "key rotation"), "PASS", "a young key: {r}");
    assert_eq!(status_of(&r, "key validation"), "PASS", "{r}");

    // Governance artifacts: every file, no nulls in the summary, no key material anywhere.
    let o = run(daena(&server.dir).env("DAENA_API_KEY", OPS).args(["governance", "artifacts", "--out-dir", "ga"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ga = server.dir.join("ga");
    let master = std::fs::read_to_string(server.dir.join("data/keys/master.key")).expect("master key");
    for f in [
        "ledger_manifest.json",
        "policy_summary.json",
        "drill_report.json",
        "key_rotation_status.json",
        "governance_summary.json",
        "compliance_report.md",
    ] {
        let text = std::fs::read_to_string(ga.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!text.contains(master.trim()), "{f} holds the master key");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(ga.join("governance_summary.json")).expect("summary"))
            .expect("json");
    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(a) => a.iter().all(no_nulls),
            Value::Object(o) => o.values().all(no_nulls),
            _ => true,
        }
    }
    assert!(no_nulls(&summary), "{summary}");
    assert_eq!(summary["drill"]["passed"], true, "{summary}");
    let report = std::fs::read_to_string(ga.join("compliance_report.md")).expect("report");
    assert!(report.contains("Merkle root") && report.contains("Newest drill: passed"), "{report}");

    // Without a key the checklist cannot run, and says so.
    let o = run(daena(&server.dir).env("DAENA_URL", &server.url).args(["runbook", "daily"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("DAENA_API_KEY"), "{}", stderr(&o));
}

#[test]
fn policy_inspect_explains_a_decision() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tmp.path().join("config")).expect("config dir");
    std::fs::write(
        tmp.path().join("config/policy_config.yaml"),
        "default: { allow: true }\nclasses:\n  legal:\n    allow_roles: [legal.officer]\n    deny_roles: [finance.analyst]\n",
    )
    .expect("policy");
    let o = run(daena(tmp.path()).args(["policy", "inspect", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["classes"][0]["class"], "legal");
    assert_eq!(v["classes"][0]["deny_roles"], json!(["finance.analyst"]));
    let explain = |role: &str| -> Value {
        let o = run(daena(tmp.path()).args([
            "policy",
            "inspect",
            "--class",
            "legal",
            "--explain",
            "--role",
            role,
            "--action",
            "write",
            "--json",
        ]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str::<Value>(&stdout(&o)).expect("json")["explain"].clone()
    };
    let denied = explain("finance.analyst");
    assert_eq!(denied["allowed"], false);
    assert!(denied["rules"].as_array().expect("rules").iter().any(|r| r == "legal.deny_roles"), "{denied}");
    assert_eq!(explain("legal.officer")["allowed"], true);
    let o = run(daena(tmp.path()).args(["policy", "inspect", "--explain", "--role", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--explain needs --class"), "{}", stderr(&o));
}
