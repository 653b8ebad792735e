//! The rounds: start, check, write, kill.

use crate::Args;
use crate::model::{ApiKey, Cell, Model, Value};
use anyhow::{Context, bail};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPS: &str = "torture-ops-key";
const TENANT: &str = "torture";
const LIMITED: &str = "torture-limited";

/// A seeded generator (SplitMix64): the plan of a run depends only on its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub struct Report {
    /// Whether the state rebuilt from the ledger (`daena replay` from the snapshot taken
    /// before the first write) was checked against everything acknowledged.
    pub replayed: bool,
    pub rounds: u32,
    pub acked: u64,
    pub losses: Vec<String>,
    pub recovery_ms: Vec<f64>,
    pub entries: u64,
    pub data_dir: Option<PathBuf>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut r = self.recovery_ms.clone();
        r.sort_by(f64::total_cmp);
        let pct = |p: f64| r.get(((r.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0.0);
        let mut out = format!(
            "crash rounds: {} · acknowledged operations: {} · losses: {} · ledger entries: {} · recovery after SIGKILL: median {:.0} ms, max {:.0} ms · state rebuilt from the ledger {}",
            self.rounds,
            self.acked,
            self.losses.len(),
            self.entries,
            pct(0.5),
            r.last().copied().unwrap_or(0.0),
            if self.replayed { "matches" } else { "not checked" }
        );
        for l in self.losses.iter().take(20) {
            out.push_str(&format!("\n  LOSS: {l}"));
        }
        if let Some(d) = &self.data_dir {
            out.push_str(&format!("\n  data directory kept: {}", d.display()));
        }
        out
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the server with SIGTERM (an orderly shutdown) and waits for it.
fn stop(mut server: Server) -> anyhow::Result<()> {
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().context("kill -TERM")?;
    let status = server.child.wait()?;
    if !status.success() {
        bail!("daena serve exited with {status} on SIGTERM");
    }
    Ok(())
}

/// Rebuilds the state from `snapshot` plus a copy of the ledger (`daena replay`), offline.
fn replay(bin: &Path, dir: &Path, snapshot: &Path) -> anyhow::Result<()> {
    let copy = dir.join("ledger-copy");
    std::fs::create_dir_all(&copy)?;
    for entry in std::fs::read_dir(dir.join("data/ledger"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
        }
    }
    let out = Command::new(bin)
        .args(["replay", "--ledger"])
        .arg(&copy)
        .arg("--from-snapshot")
        .arg(snapshot)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DAENA_DATA_DIR", dir.join("data"))
        .env("DAENA_CONFIG_DIR", dir.join("config"))
        .output()
        .context("running daena replay")?;
    if !out.status.success() {
        bail!("daena replay failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `daena serve` on `dir` and returns it once it answers, with the time that took.
async fn start(bin: &Path, dir: &Path, http: &reqwest::Client) -> anyhow::Result<(Server, f64)> {
    let port = free_port()?;
    let started = Instant::now();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log"))?;
    let child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DAENA_DATA_DIR", dir.join("data"))
        .env("DAENA_CONFIG_DIR", dir.join("config"))
        .env("DAENA_OPS_KEY", OPS)
        .env("DAENA_RATE_LIMIT_ENABLED", "false")
        // The checks present revoked keys on purpose: they must not lock this address out.
        .env("DAENA_RATE_LIMIT_FAILED_AUTH_BURST", "1000000")
        .env("DAENA_RATE_LIMIT_FAILED_AUTH_PER_MINUTE", "1000000")
        .env("DAENA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server { child, url: format!("http://127.0.0.1:{port}") };
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("daena serve exited with {status}; see {}", dir.join("serve.log").display());
        }
        if http.get(format!("{}/health", server.url)).send().await.is_ok() {
            return Ok((server, started.elapsed().as_secs_f64() * 1e3));
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("daena serve did not answer within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Json>,
) -> Result<(u16, Json), ()> {
    let mut req = http.request(method, url).header("X-API-Key", key).header("X-Tenant-ID", TENANT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|_| ())?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Json::Null)))
}

/// [`send`] where the server must answer (checks, set-up): no answer is an error.
async fn ask(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Json>,
) -> anyhow::Result<(u16, Json)> {
    send(http, method, url, key, body).await.map_err(|()| anyhow::anyhow!("the server stopped answering"))
}

/// Checks everything acknowledged so far against the running server; returns the losses.
async fn check(http: &reqwest::Client, url: &str, model: &mut Model) -> anyhow::Result<Vec<String>> {
    let mut losses = Vec::new();
    for (key, cell) in &mut model.records {
        let (status, body) =
            ask(http, reqwest::Method::GET, format!("{url}/api/v1/memory/chat/{key}"), OPS, None).await?;
        let seen = match status {
            200 => Value::Put(body["payload"]["v"].as_str().unwrap_or("<not a payload this run sent>").to_owned()),
            404 => Value::Absent,
            other => bail!("GET {key}: HTTP {other}: {body}"),
        };
        if !cell.admits(&seen) {
            losses.push(format!(
                "record {key}: read {seen:?}, acknowledged {:?} (in flight {:?})",
                cell.acked, cell.in_flight
            ));
        }
        cell.settle(seen);
    }
    for (prompt, answer) in &model.cache {
        let body = json!({"model": "torture", "messages": [{"role": "user", "content": prompt}]});
        let (status, v) = ask(http, reqwest::Method::POST, format!("{url}/api/v1/cas/lookup"), OPS, Some(body)).await?;
        let got = v["response"]["choices"][0]["message"]["content"].as_str();
        if status != 200 || v["hit"] != true || got != Some(answer.as_str()) {
            losses.push(format!("cache entry {prompt:?}: lookup gave HTTP {status} {v}"));
        }
    }
    for k in &mut model.keys {
        let url = format!("{url}/api/v1/agents/sales_synth/heartbeat");
        let (status, _) = ask(http, reqwest::Method::POST, url, &k.token, None).await?;
        let revoked = match status {
            200 => false,
            401 => true,
            other => bail!("heartbeat with key {}: HTTP {other}", k.id),
        };
        if !k.revoked.admits(&revoked) {
            losses.push(format!("key {}: revoked={revoked}, acknowledged {:?}", k.id, k.revoked.acked));
        }
        k.revoked.settle(revoked);
    }
    if let Some(limit) = &mut model.limit {
        let (status, v) =
            ask(http, reqwest::Method::GET, format!("{url}/api/v1/tenant-rate-limit/{LIMITED}/status"), OPS, None)
                .await?;
        let rpm = v["limit"]["rpm"].as_u64().and_then(|r| u32::try_from(r).ok()).unwrap_or(0);
        if status != 200 || !limit.admits(&rpm) {
            losses.push(format!(
                "limit of {LIMITED}: {rpm}/min, acknowledged {:?} (in flight {:?})",
                limit.acked, limit.in_flight
            ));
        }
        limit.settle(rpm);
    }
    let (status, v) =
        ask(http, reqwest::Method::POST, format!("{url}/api/v1/ledger/verification"), OPS, Some(json!({}))).await?;
    if status != 200 || v["ok"] != true {
        losses.push(format!("the ledger does not verify: HTTP {status} {v}"));
    }
    Ok(losses)
}

/// One memory writer: PUTs and DELETEs on its own keys until the server goes away.
async fn writer(
    http: reqwest::Client,
    url: String,
    model: Arc<Mutex<Model>>,
    w: usize,
    keys: usize,
    round: u32,
    mut rng: Rng,
) {
    for n in 0u64.. {
        let key = format!("w{w}-k{}", rng.below(keys as u64));
        let put = rng.below(10) < 7;
        let value = if put { Value::Put(format!("r{round}-w{w}-{n}")) } else { Value::Absent };
        if let Ok(mut m) = model.lock() {
            m.records.entry(key.clone()).or_insert_with(|| Cell::new(Value::Absent)).in_flight = Some(value.clone());
        }
        let target = format!("{url}/api/v1/memory/chat/{key}");
        let sent = match &value {
            Value::Put(v) => send(&http, reqwest::Method::PUT, target, OPS, Some(json!({"payload": {"v": v}}))).await,
            Value::Absent => send(&http, reqwest::Method::DELETE, target, OPS, None).await,
        };
        let Ok((status, _)) = sent else { return };
        if let Ok(mut m) = model.lock() {
            let cell = m.records.entry(key).or_insert_with(|| Cell::new(Value::Absent));
            // 2xx: applied; 404 on a delete: already absent; anything else: refused.
            if (200..300).contains(&status) || (status == 404 && value == Value::Absent) {
                cell.settle(value);
                m.acked += 1;
            } else {
                cell.in_flight = None;
            }
        }
    }
}

/// Cache stores, key creations and revocations, and limit changes, until the server goes away.
async fn governor(http: reqwest::Client, url: String, model: Arc<Mutex<Model>>, round: u32, mut rng: Rng) {
    for n in 0u64.. {
        let outcome = match rng.below(3) {
            0 => {
                let (prompt, answer) = (format!("prompt r{round}-{n}"), format!("answer r{round}-{n}"));
                let body = json!({"request": {"model": "torture", "messages": [{"role": "user", "content": prompt}]},
                    "response": {"id": "t", "object": "chat.completion", "created": 1, "model": "torture",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}});
                let sent = send(&http, reqwest::Method::POST, format!("{url}/api/v1/cas/store"), OPS, Some(body)).await;
                sent.map(|(status, _)| {
                    if status == 200
                        && let Ok(mut m) = model.lock()
                    {
                        m.cache.push((prompt, answer));
                        m.acked += 1;
                    }
                })
            }
            1 => {
                let victim = model.lock().ok().and_then(|m| {
                    let live: Vec<usize> = (0..m.keys.len()).filter(|i| !m.keys[*i].revoked.acked).collect();
                    (live.len() > 2).then(|| live[(n as usize) % live.len()])
                });
                match victim {
                    Some(i) => {
                        let id = model.lock().ok().map(|mut m| {
                            m.keys[i].revoked.in_flight = Some(true);
                            m.keys[i].id.clone()
                        });
                        let Some(id) = id else { return };
                        let sent =
                            send(&http, reqwest::Method::DELETE, format!("{url}/api/v1/admin/keys/{id}"), OPS, None)
                                .await;
                        sent.map(|(status, _)| {
                            if let Ok(mut m) = model.lock() {
                                if status == 200 {
                                    m.keys[i].revoked.settle(true);
                                    m.acked += 1;
                                } else {
                                    m.keys[i].revoked.in_flight = None;
                                }
                            }
                        })
                    }
                    None => {
                        let body = json!({"name": format!("torture-{round}-{n}"), "role": "agent", "tenant": TENANT});
                        let sent =
                            send(&http, reqwest::Method::POST, format!("{url}/api/v1/admin/keys"), OPS, Some(body))
                                .await;
                        sent.map(|(status, v)| {
                            if status == 201
                                && let (Some(id), Some(token)) = (v["id"].as_str(), v["key"].as_str())
                                && let Ok(mut m) = model.lock()
                            {
                                m.keys.push(ApiKey {
                                    id: id.to_owned(),
                                    token: token.to_owned(),
                                    revoked: Cell::new(false),
                                });
                                m.acked += 1;
                            }
                        })
                    }
                }
            }
            _ => {
                let rpm = 100 + rng.below(10_000) as u32;
                if let Ok(mut m) = model.lock() {
                    m.limit.get_or_insert_with(|| Cell::new(1000)).in_flight = Some(rpm);
                }
                let url = format!("{url}/api/v1/tenant-rate-limit/{LIMITED}");
                let sent = send(&http, reqwest::Method::PUT, url, OPS, Some(json!({"rpm": rpm, "burst": 10}))).await;
                sent.map(|(status, _)| {
                    if let Ok(mut m) = model.lock()
                        && let Some(limit) = m.limit.as_mut()
                    {
                        if status == 200 {
                            limit.settle(rpm);
                            m.acked += 1;
                        } else {
                            limit.in_flight = None;
                        }
                    }
                })
            }
        };
        if outcome.is_err() {
            return;
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("daena"),
    };
    if !bin.is_file() {
        bail!("no daena binary at {} (build it with `cargo build -p daena`, or pass --bin)", bin.display());
    }
    let scratch = tempfile::Builder::new().prefix("daena-torture-").tempdir()?;
    std::fs::create_dir_all(scratch.path().join("config"))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let model = Arc::new(Mutex::new(Model::default()));
    let mut rng = Rng(args.seed);
    let mut snapshot = None;
    let mut report = Report {
        replayed: false,
        rounds: 0,
        acked: 0,
        losses: Vec::new(),
        recovery_ms: Vec::new(),
        entries: 0,
        data_dir: None,
    };
    for round in 0..=args.rounds {
        let (mut server, ms) = start(&bin, scratch.path(), &http).await?;
        if round > 0 {
            report.recovery_ms.push(ms);
        }
        let losses = {
            let mut m = model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?.clone_for_check();
            let losses = check(&http, &server.url, &mut m).await?;
            *model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))? = m;
            losses
        };
        for l in losses {
            report.losses.push(format!("after round {round}: {l}"));
        }
        if round == 0 {
            // The starting point of the replay check at the end: the state before any write.
            let url = format!("{}/api/v1/admin/snapshots", server.url);
            let (status, v) = ask(&http, reqwest::Method::POST, url, OPS, Some(json!({}))).await?;
            let name = v["name"].as_str().filter(|_| status == 200 || status == 201);
            let name = name.with_context(|| format!("taking the first snapshot: HTTP {status} {v}"))?;
            snapshot = Some(scratch.path().join("data/snapshots").join(format!("{name}.tar.zst")));
        }
        if round == args.rounds {
            let (_, head) =
                ask(&http, reqwest::Method::GET, format!("{}/api/v1/ledger/head", server.url), OPS, None).await?;
            report.entries = head["size"].as_u64().unwrap_or(0);
            // The state rebuilt from the ledger must equal the state the rounds left.
            if let Some(snapshot) = &snapshot {
                stop(server)?;
                replay(&bin, scratch.path(), snapshot)?;
                let (server, _) = start(&bin, scratch.path(), &http).await?;
                let mut m = model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?.clone_for_check();
                for l in check(&http, &server.url, &mut m).await? {
                    report.losses.push(format!("after the replay: {l}"));
                }
                report.replayed = true;
            }
            break;
        }
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let r = Rng(rng.next());
            tasks.push(tokio::spawn(writer(http.clone(), server.url.clone(), model.clone(), w, args.keys, round, r)));
        }
        tasks.push(tokio::spawn(governor(http.clone(), server.url.clone(), model.clone(), round, Rng(rng.next()))));
        let (lo, hi) = args.kill_after_ms;
        tokio::time::sleep(Duration::from_millis(lo + rng.below(hi - lo))).await;
        server.child.kill().context("SIGKILL")?;
        let _ = server.child.wait();
        for t in tasks {
            let _ = t.await;
        }
        report.rounds += 1;
        eprint!(
            "\rround {}/{}: {} acknowledged so far, {} losses   ",
            round + 1,
            args.rounds,
            model.lock().map(|m| m.acked).unwrap_or(0),
            report.losses.len()
        );
    }
    eprintln!();
    report.acked = model.lock().map(|m| m.acked).unwrap_or(0);
    if args.keep {
        report.data_dir = Some(scratch.keep());
    }
    Ok(report)
}
