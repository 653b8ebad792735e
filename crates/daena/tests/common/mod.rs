//! End-to-end helpers: run the real `daena` binary on a free port against a scratch data
//! directory, the way an operator would.
#![allow(dead_code)]

pub mod faults;
pub mod replicas;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const OPS: &str = "ops-key";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_daena")
}

/// A `daena` command with a clean environment pointing at `dir`.
pub fn daena(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DAENA_DATA_DIR", dir.join("data"))
        .env("DAENA_CONFIG_DIR", dir.join("config"))
        .env("DAENA_LOG", "info")
        .env("DAENA_RATE_LIMIT_ENABLED", "false")
        .current_dir(dir);
    let _ = std::fs::create_dir_all(dir.join("config"));
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run daena")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `daena serve` on 127.0.0.1:0 and waits until it answers `/health`.
    pub fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
        let log = dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = daena(dir);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).env("DAENA_OPS_KEY", OPS);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log_file).spawn().expect("spawn daena serve");
        let mut server = Server { child, url: String::new(), dir: dir.to_owned(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("daena serve exited early with {status}: {}", server.log_text());
            }
            let info = std::fs::read_to_string(dir.join("data/daena.lock")).ok();
            if let Some(addr) = info
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["listen"].as_str().map(str::to_owned))
                .filter(|a| !a.ends_with(":0"))
            {
                let url = format!("http://{addr}");
                if std::net::TcpStream::connect(&addr).is_ok() {
                    server.url = url;
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "daena serve did not come up: {}", server.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "daena did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// One request with the ops key, acting for `tenant` (`X-Tenant-ID`) when given: the status
/// and the JSON body (`Null` when there is none).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    tenant: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client().request(method, url).header("X-API-Key", OPS);
    if let Some(t) = tenant {
        req = req.header("X-Tenant-ID", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The ledger's current size.
pub async fn ledger_size(url: &str) -> u64 {
    let (status, h) = call(reqwest::Method::GET, &format!("{url}/api/v1/ledger/head"), None, None).await;
    assert_eq!(status, 200, "{h}");
    h["size"].as_u64().expect("size")
}
