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
/// in 429 for that address, also for a good key (`ratelimit.rs` checks the metrics).
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

/// A connection that sends its headers slowly is closed after the header-read timeout; a
/// separate metrics address serves `/metrics` without a key and names no tenant.
#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_and_metrics_can_have_their_own_address() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let server = Server::start(
        tmp.path(),
        &[("DAENA_SERVER_HEADER_READ_TIMEOUT_SECS", "1"), ("DAENA_SERVER_METRICS_LISTEN", metrics_addr.as_str())],
    );
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").expect("partial headers");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    // The server closes the connection (end of stream, possibly after a 408 answer).
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "cut off after {:?}", started.elapsed());

    let http = client();
    let r = http.get(format!("http://{metrics_addr}/metrics")).send().await.expect("metrics");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(text.contains(r#"daena_active_agents{tenant="all"}"#), "{text}");
    let r = http.get(format!("http://{metrics_addr}/api/v1/agents")).send().await.expect("other route");
    assert_eq!(r.status(), 404, "only /metrics there");
    assert_eq!(http.get(format!("{}/metrics", server.url)).send().await.expect("main").status(), 401);
    server.stop();
}
