//! The foundation, end to end with the real binary.

mod common;

use common::{OPS, Server, client, daena, run, stderr, stdout};

#[tokio::test(flavor = "multi_thread")]
async fn serve_health_and_a_second_server_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();
    let v: serde_json::Value = http
        .get(format!("{}/health", server.url))
        .header("X-API-Key", OPS)
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert!(v["checks"]["data_dir_writable"]["status"] == "pass", "{v}");
    assert!(v["status"] == "degraded", "no heartbeats yet: {v}");

    let second = run(daena(tmp.path()).args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(err.contains("in use by another Daena process") && err.contains("serve on 127.0.0.1:"), "{err}");

    let status = server.stop();
    assert!(status.success(), "clean exit on SIGTERM");
}

/// The real server knows each connection's peer: a burst of bad keys from one address ends
/// in 429 for that address, also for a good key, and the metric counts them.
#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_from_one_address_end_in_429() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        tmp.path(),
        &[("DAENA_RATE_LIMIT_FAILED_AUTH_BURST", "3"), ("DAENA_RATE_LIMIT_FAILED_AUTH_PER_MINUTE", "1")],
    );
    let http = client();
    let get = |key: &str| http.get(format!("{}/api/v1/agents", server.url)).header("X-API-Key", key).send();
    for i in 0..3 {
        assert_eq!(get(&format!("dk_wrong{i}")).await.expect("request").status(), 401);
    }
    let refused = get(OPS).await.expect("request");
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    let metrics = http.get(format!("{}/metrics", server.url)).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("daena_auth_failures 3") && text.contains("daena_auth_throttled 1"), "{text}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_cli_goes_through_the_running_server_and_revocation_is_immediate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(tmp.path(), &[]);
    let http = client();

    let refused = run(daena(tmp.path()).args(["keys", "list"]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("DAENA_API_KEY"), "{}", stderr(&refused));

    let created = run(daena(tmp.path())
        .env("DAENA_API_KEY", OPS)
        .args(["keys", "create", "--name", "bots", "--role", "agent", "--tenant", "acme", "--json"]));
    assert!(created.status.success(), "{}", stderr(&created));
    let created: serde_json::Value = serde_json::from_str(&stdout(&created)).expect("json");
    let key = created["key"].as_str().expect("key").to_owned();

    let ok = http.get(format!("{}/api/v1/agents", server.url)).header("X-API-Key", &key).send().await.expect("agents");
    assert_eq!(ok.status(), 200);
    let revoked = run(daena(tmp.path()).env("DAENA_API_KEY", OPS).args(["keys", "revoke", "bots"]));
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let denied =
        http.get(format!("{}/api/v1/agents", server.url)).header("X-API-Key", &key).send().await.expect("agents");
    assert_eq!(denied.status(), 401);
    server.stop();

    // Offline, the same command works directly on the stopped data directory.
    let listed = run(daena(tmp.path()).args(["keys", "list", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&listed)).expect("json");
    let bots = listed["keys"].as_array().expect("keys").iter().find(|k| k["name"] == "bots").cloned().expect("bots");
    assert_eq!(bots["active"], false);
    assert!(!stdout(&run(daena(tmp.path()).args(["keys", "list", "--json"]))).contains(&key));
}

#[test]
fn config_check_names_the_file_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tmp.path().join("config")).expect("config dir");
    let ok = run(daena(tmp.path()).args(["config", "check"]));
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::fs::write(tmp.path().join("config/memory_config.yaml"), "slo:\n  l2_p95_ms: -5\n").expect("write");
    let bad = run(daena(tmp.path()).args(["config", "check"]));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("memory.slo.l2_p95_ms"), "{}", stderr(&bad));
    std::fs::write(tmp.path().join("config/memory_config.yaml"), "").expect("write");
    std::fs::write(tmp.path().join("config/daena.toml"), "[server]\nlisten = 8000\n").expect("write");
    let bad = run(daena(tmp.path()).args(["config", "check"]));
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(err.contains("daena.toml") && err.contains("server.listen"), "{err}");
    std::fs::remove_file(tmp.path().join("config/daena.toml")).expect("remove");
    let unknown = run(daena(tmp.path()).env("DAENA_SERVR_LISTEN", "x").args(["config", "check"]));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("DAENA_SERVR_LISTEN"));
    let usage = run(daena(tmp.path()).args(["config", "frobnicate"]));
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn shipped_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let out = std::process::Command::new(common::bin())
        .env_clear()
        .env("DAENA_CONFIG_DIR", &root)
        .args(["config", "check", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(3));
}
