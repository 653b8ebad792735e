//! The operator dashboard in headless Chromium, driven over WebDriver (chromedriver): the
//! wrong-key paths, sign-in with an ops key after real traffic, every panel rendered with
//! live numbers, an auditor's view, and a screenshot kept as a test artifact
//! (`target/tmp/dashboard.png`). Needs Debian's `chromium` and `chromium-driver`, which
//! `scripts/services` installs when they are missing.

mod common;

use common::{OPS, Server, call, client};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PANELS: &[&str] = &[
    "panel-health",
    "panel-cache",
    "panel-latency",
    "panel-errors",
    "panel-agents",
    "panel-anomalies",
    "panel-comms",
    "panel-cost",
    "panel-limits",
    "panel-ledger",
    "panel-backups",
];

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is needed (Debian's chromium-driver; scripts/services installs it)");
    let driver = Driver(driver);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = std::env::temp_dir().join(format!("daena-chromium-{}-{port}", std::process::id()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            format!("--user-data-dir={}", profile.display())]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a headless Chromium session");
    (driver, c)
}

/// Runs `script` (which returns a value) until `ok` holds for it, or fails after 20 s.
async fn until(c: &Client, what: &str, script: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.execute(script, vec![]).await.expect("script");
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(c: &Client, key: &str) {
    let field = c.find(Locator::Css("#key")).await.expect("the key field");
    field.send_keys(key).await.expect("type the key");
    c.find(Locator::Css("#sign-in-button")).await.expect("button").click().await.expect("click");
}

async fn post(url: &str, path: &str, body: serde_json::Value, tenant: Option<&str>) {
    let (status, v) = call(Method::POST, &format!("{url}{path}"), tenant, Some(&body)).await;
    assert!((200..300).contains(&status), "{path}: {status} {v}");
}

async fn make_key(url: &str, role: &str) -> String {
    let r = client()
        .post(format!("{url}/api/v1/admin/keys"))
        .header("X-API-Key", OPS)
        .json(&json!({"name": format!("dash-{role}"), "role": role}))
        .send()
        .await
        .expect("create key");
    assert_eq!(r.status().as_u16(), 201);
    r.json::<serde_json::Value>().await.expect("json")["key"].as_str().expect("key").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_and_renders_every_panel_with_live_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let url = server.url.clone();
    // Traffic for every panel: memory reads and writes, heartbeats, a cached answer and a
    // hit, interactions between departments, a verification, a snapshot and a drill.
    for i in 0..20 {
        let (s, _) =
            call(Method::PUT, &format!("{url}/api/v1/memory/chat/k{i}"), None, Some(&json!({"payload": {"i": i}})))
                .await;
        assert_eq!(s, 201);
        call(Method::GET, &format!("{url}/api/v1/memory/chat/k{i}"), None, None).await;
    }
    for agent in ["engineering_synth", "legal_synth", "finance_advisor_a", "sales_scout_internal"] {
        post(&url, &format!("/api/v1/agents/{agent}/heartbeat"), json!({}), None).await;
    }
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarize the Q3 report in five bullets."}]});
    let answer = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Revenue grew."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}});
    post(&url, "/api/v1/cas/store", json!({"request": chat, "response": answer}), None).await;
    post(&url, "/api/v1/cas/lookup", chat.clone(), None).await;
    let talk: Vec<_> = (0..12)
        .map(|i| {
            json!({"from": "engineering_synth", "to": if i % 2 == 0 { "legal_synth" } else { "finance_advisor_a" },
            "kind": "message", "latency_ms": 20.0 + f64::from(i), "success": i != 5})
        })
        .collect();
    post(&url, "/api/v1/analytics/interactions", json!(talk), None).await;
    post(&url, "/api/v1/ledger/verification", json!({}), None).await;
    post(&url, "/api/v1/admin/snapshots", json!({}), None).await;
    let (agent_key, auditor_key) = (make_key(&url, "agent").await, make_key(&url, "auditor").await);

    let (_driver, c) = browser().await;
    c.goto(&format!("{url}/dashboard")).await.expect("open /dashboard");
    let error = "return document.getElementById('sign-in-error').textContent";

    // The wrong-key paths: an unknown key, and a valid key of a role that may not look.
    sign_in(&c, "not-a-key").await;
    until(&c, "an unknown key is refused", error, |v| v.as_str().is_some_and(|t| t.contains("Unknown or revoked")))
        .await;
    sign_in(&c, &agent_key).await;
    until(&c, "an agent key is refused", error, |v| v.as_str().is_some_and(|t| t.contains("ops or auditor"))).await;
    let hidden = c.execute("return document.getElementById('panels').hidden", vec![]).await.expect("script");
    assert_eq!(hidden, json!(true), "no panel is shown to a refused key");

    // The ops key: every panel renders, with the numbers the traffic made.
    sign_in(&c, OPS).await;
    until(&c, "the dashboard loads", "return document.body.dataset.loaded", |v| v == "true").await;
    for id in PANELS {
        let text = until(&c, id, &format!("return document.querySelector('#{id} .body').textContent"), |v| {
            v.as_str().is_some_and(|t| !t.trim().is_empty())
        })
        .await;
        let text = text.as_str().unwrap_or_default();
        assert!(!text.contains("could not load") && !text.contains("not available"), "{id}: {text}");
    }
    let ledger: u64 = c
        .find(Locator::Css("#panel-ledger .big"))
        .await
        .expect("ledger figure")
        .text()
        .await
        .expect("text")
        .replace(',', "")
        .parse()
        .expect("the ledger size is a number");
    assert!(ledger >= 20, "the ledger panel shows the writes: {ledger}");
    let cells = c
        .execute("return document.querySelectorAll('#panel-agents polygon.agent').length", vec![])
        .await
        .expect("cells");
    assert_eq!(cells, json!(48), "the 6×8 honeycomb");
    let active = c
        .execute("return document.querySelectorAll('#panel-agents polygon[data-status=\"active\"]').length", vec![])
        .await
        .expect("active");
    assert_eq!(active, json!(4), "the four agents that sent heartbeats are active");
    let cache = c.find(Locator::Css("#panel-cache")).await.expect("cache").text().await.expect("text");
    assert!(cache.contains("100.0%") && cache.contains("exact 1 "), "one lookup, an exact hit: {cache}");
    let comms = c.find(Locator::Css("#panel-comms")).await.expect("comms").text().await.expect("text");
    assert!(comms.contains("12 messages") && comms.contains("engineering"), "{comms}");
    let cells = c.execute("return [...document.querySelectorAll('#panel-comms td')].map(td => td.textContent).filter(t => t).join(',')", vec![]).await.expect("cells");
    assert_eq!(cells, json!("6,6"), "engineering sent 6 messages to finance and 6 to legal");
    let health = c.find(Locator::Css("#status-pill")).await.expect("pill").text().await.expect("text");
    assert!(["healthy", "degraded"].contains(&health.as_str()), "{health}");
    let backups = c.find(Locator::Css("#panel-backups")).await.expect("backups").text().await.expect("text");
    assert!(backups.contains("1 kept"), "{backups}");

    let png = c.screenshot().await.expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot with the panels in it ({} bytes)",
        png.len()
    );
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &png).expect("save the screenshot");

    // An auditor sees the figures, but not what only ops may (the snapshot list).
    c.find(Locator::Css("#sign-out")).await.expect("sign out").click().await.expect("click");
    sign_in(&c, &auditor_key).await;
    until(&c, "the auditor's dashboard loads", "return document.body.dataset.loaded", |v| v == "true").await;
    let backups =
        until(&c, "the backups panel", "return document.querySelector('#panel-backups .body').textContent", |v| {
            v.as_str().is_some_and(|t| !t.is_empty())
        })
        .await;
    assert!(backups.as_str().is_some_and(|t| t.contains("not available to this key's role")), "{backups}");
    let ledger_text = c.find(Locator::Css("#panel-ledger")).await.expect("ledger").text().await.expect("text");
    assert!(ledger_text.contains("entries"), "{ledger_text}");
    c.close().await.expect("close the browser");
    drop(server);
}

/// The dashboard's history survives a restart: samples taken before a clean stop are served
/// again after the next start, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_history_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let series = |url: String| async move {
        let (status, v) = call(Method::GET, &format!("{url}/api/v1/dashboard/series"), None, None).await;
        assert_eq!(status, 200, "{v}");
        v["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| s["at_ms"].as_i64().expect("at_ms"))
            .collect::<Vec<_>>()
    };
    let server = Server::start(dir.path(), &[]);
    // The first sample is taken as the service starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let s = series(server.url.clone()).await;
        if s.len() >= 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "no sample was kept: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(server.stop().success());
    let server = Server::start(dir.path(), &[]);
    let after = series(server.url.clone()).await;
    assert!(after.contains(&before[0]), "the sample from before the restart is kept: {before:?} / {after:?}");
    assert!(after.windows(2).all(|w| w[0] <= w[1]), "oldest first: {after:?}");
}
