//! Helpers of the fault tests: a tmpfs per test, the LD_PRELOAD fault injector
//! (`faults/libfault.c`), and the checks every fault test makes.

use super::{Server, call, daena, run};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes` at `at`; `None` when skipping by choice.
    pub fn mount(at: &Path, megabytes: u32) -> Option<Tmpfs> {
        if std::env::var_os("DAENA_SKIP_MOUNT_TESTS").is_some() {
            eprintln!("skipped: DAENA_SKIP_MOUNT_TESTS is set");
            return None;
        }
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (these tests need root; DAENA_SKIP_MOUNT_TESTS=1 skips them): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs(at.to_owned()))
    }

    pub fn remount(&self, mode: &str) {
        let out =
            Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.0).output().expect("run mount");
        assert!(out.status.success(), "remount {mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub async fn put(url: &str, key: &str) -> (u16, Value) {
    let body = json!({"payload": {"text": format!("record {key}"), "pad": "p".repeat(300)}});
    call(Method::PUT, &format!("{url}/api/v1/memory/notes/{key}"), None, Some(&body)).await
}

pub async fn get_text(url: &str, key: &str) -> (u16, Value) {
    let (s, v) = call(Method::GET, &format!("{url}/api/v1/memory/notes/{key}"), None, None).await;
    (s, v["payload"]["text"].clone())
}

pub async fn health(url: &str) -> Value {
    call(Method::GET, &format!("{url}/health"), None, None).await.1
}

/// Waits (up to 10 s; `/health` reuses its probes for 2 s) until the data directory check
/// says `status`; returns the last report.
pub async fn wait_writable_check(url: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = health(url).await;
        if h["checks"]["data_dir_writable"]["status"] == status || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A refused write: 503 with the code and a message that names the disk, never a 500.
pub fn assert_refused_clearly(status: u16, body: &Value, words: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "the message says why ({words}): {message}");
}

/// While a disk fault lasts: `/health` turns unhealthy with the data directory check failing,
/// and every acknowledged write still reads back exactly.
pub async fn assert_unhealthy_and_reading(url: &str, acked: &[String], during: &str) {
    let h = wait_writable_check(url, "fail").await;
    assert_eq!(
        (&h["status"], &h["checks"]["data_dir_writable"]["status"]),
        (&json!("unhealthy"), &json!("fail")),
        "{during}: {h}"
    );
    for key in acked {
        let (s, text) = get_text(url, key).await;
        assert_eq!((s, text), (200, json!(format!("record {key}"))), "{key} reads {during}");
    }
}

/// After a restart: every acknowledged write reads back exactly, no refused one is there
/// (nothing unacknowledged is half visible), and the ledger verifies.
pub async fn assert_all_back(dir: &Path, acked: &[String], refused: &[String]) {
    let server = Server::start(dir, &[]);
    for key in acked {
        let (s, text) = get_text(&server.url, key).await;
        assert_eq!((s, text), (200, json!(format!("record {key}"))), "{key} after restart");
    }
    for key in refused {
        let (s, _) = get_text(&server.url, key).await;
        assert_eq!(s, 404, "{key} was refused, and is not there after a restart");
    }
    server.stop();
    let out = run(daena(dir).args(["ledger", "verify", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify json");
    assert_eq!(v["ok"], true, "{v}");
}

/// The fault injector (`tests/faults/libfault.c`), built with the C compiler for one test and
/// loaded into the server with LD_PRELOAD; [`Injector::set`] turns a fault on or off.
pub struct Injector {
    lib: PathBuf,
    ctl: PathBuf,
}

impl Injector {
    pub fn build(dir: &Path) -> Injector {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/libfault.c");
        let lib = dir.join("libfault.so");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("the fault tests need a C compiler (cc)");
        assert!(out.status.success(), "building the fault injector: {}", String::from_utf8_lossy(&out.stderr));
        let ctl = dir.join("fault.ctl");
        std::fs::write(&ctl, "").expect("fault control file");
        Injector { lib, ctl }
    }

    /// The environment that loads the injector into a server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            ("LIBFAULT_CTL".into(), self.ctl.display().to_string()),
        ]
    }

    /// Turns a fault on (`erofs`, `eio-sync`, `clock <secs>`), or all off with "".
    pub fn set(&self, fault: &str) {
        std::fs::write(&self.ctl, fault).expect("fault control file");
    }

    /// A server with the injector loaded (and `extra` set).
    pub fn server(&self, dir: &Path, extra: &[(&str, &str)]) -> Server {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        Server::start(dir, &all)
    }
}
