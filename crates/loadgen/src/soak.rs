//! `daena-loadgen soak`: the real `daena serve` binary under simulated fleet traffic at a
//! fixed arrival rate for minutes, sampled at intervals: the server's resident memory and
//! open file handles, latency percentiles of each interval (measured from when each request
//! was due when the server made it late, so a stall counts against every request it delays;
//! else from when it was sent), errors, ledger size and data
//! directory size. Writes the samples as CSV and draws them as an SVG chart.
//!
//! The traffic is the fleet's mix: reads of records written before (40%), writes of new
//! records and overwrites (30%), deletes (5%), and chat completions through the LLM cache
//! over 200 prompts (25%; the first of each goes to a stand-in upstream started here, the
//! rest are cache hits).

use crate::client;
use bytes::Bytes;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const KEY: &str = "soak-ops-key";
const PROMPTS: u64 = 200;
/// Records written before the run, for the reads to find.
const SEEDED: u64 = 2_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// The `daena` binary to run [default: `daena` beside this program]
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// How long the traffic runs
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Requests per second, all connections together
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Connections
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds between samples
    #[arg(long, default_value_t = 10)]
    pub every: u64,
    /// Where the samples go: `<out>.csv` and `<out>.svg`
    #[arg(long, default_value = "docs/soak")]
    pub out: PathBuf,
    /// Set the L1 cache and the L2 page cache to this many MiB each (the service's default:
    /// 256 each); small caches fill in the first minute, so memory growth after that is not
    /// the caches filling
    #[arg(long)]
    pub cache_mib: Option<u64>,
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_mib: f64,
    fds: u64,
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    ledger: u64,
    data_mib: f64,
}

pub async fn run(a: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rate > 0 && a.connections > 0 && a.every > 0,
        "--rate, --connections and --every must be positive"
    );
    let bin = match &a.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("daena"),
    };
    anyhow::ensure!(bin.exists(), "no daena binary at {} (cargo build --release -p daena, or --bin)", bin.display());
    let dir = tempfile::tempdir()?;
    let upstream = stand_in_upstream().await?;
    let (mut child, addr) = start_server(&bin, dir.path(), upstream, a.cache_mib)?;
    let pid = child.id();
    eprintln!("soak: daena pid {pid} on {addr}, {} req/s for {} min", a.rate, a.minutes);
    seed(addr).await?;

    let window = Arc::new(parking_window());
    let errors = Arc::new(AtomicU64::new(0));
    // Whole intervals only; the traffic runs half an interval past the last sample, so every
    // sample sees a full interval of it.
    let intervals = ((a.minutes * 60.0) / a.every as f64).floor().max(1.0) as u32;
    let every = Duration::from_secs(a.every);
    let end = Instant::now() + every * intervals + every / 2;
    let per_conn = Duration::from_secs_f64(a.connections as f64 / f64::from(a.rate));
    let mut tasks = Vec::new();
    for worker in 0..a.connections {
        let (window, errors) = (window.clone(), errors.clone());
        // Spread the connections' schedules over one interval.
        let start = Instant::now() + per_conn.mul_f64(worker as f64 / a.connections as f64);
        tasks.push(tokio::spawn(async move {
            // Timed as `client::run_open` does: a stall counts against the requests it delays.
            let schedule = client::Schedule { first: start, gap: per_conn, end };
            client::open_connection(
                addr,
                schedule,
                |n| fleet_request(worker, n),
                |_, latency, status| {
                    window.lock().push(latency);
                    if !(200..300).contains(&status) && status != 404 {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )
            .await
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    for _ in 0..intervals {
        tick.tick().await;
        let mut lat = std::mem::take(&mut *window.lock());
        lat.sort();
        let pct = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, ms);
        let s = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_mib: rss_mib(pid)?,
            fds: open_fds(pid)?,
            requests: lat.len() as u64,
            errors: errors.swap(0, Ordering::Relaxed),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().map_or(0.0, ms),
            ledger: ledger_size(addr).await?,
            data_mib: dir_bytes(&dir.path().join("data")) as f64 / 1048576.0,
        };
        eprintln!(
            "{:>6.0} s  rss {:>6.1} MiB  fds {:>4}  {:>6} req  p50 {:>6.2} ms  p99 {:>7.2} ms  errors {}  ledger {}",
            s.at_s, s.rss_mib, s.fds, s.requests, s.p50_ms, s.p99_ms, s.errors, s.ledger
        );
        samples.push(s);
    }
    for t in tasks {
        t.await??;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "daena exited with {status} after the soak");

    let csv = a.out.with_extension("csv");
    let svg = a.out.with_extension("svg");
    if let Some(parent) = csv.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&csv, to_csv(&samples))?;
    let caches = a.cache_mib.map_or("default caches".to_owned(), |m| format!("L1 and L2 caches {m} MiB each"));
    let title =
        format!("Soak: {} req/s of fleet traffic for {} min, sampled every {} s, {caches}", a.rate, a.minutes, a.every);
    std::fs::write(&svg, crate::chart::draw(&chart_series(&samples), &title, crate::chart::XAxis::Minutes))?;
    println!("{}", summary(&samples));
    println!("wrote {} and {}", csv.display(), svg.display());
    Ok(())
}

fn parking_window() -> parking_lot::Mutex<Vec<Duration>> {
    parking_lot::Mutex::new(Vec::with_capacity(1 << 16))
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The n-th request of a connection, by the fleet's mix.
fn fleet_request(worker: usize, n: u64) -> Bytes {
    let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = x ^ (x >> 29);
    let agent = format!("agent-{}", worker % 48);
    match x % 20 {
        0..8 => client::request("GET", &format!("/api/v1/memory/chat/seed-{}", (x >> 8) % SEEDED), KEY, None),
        8..11 => put(&format!("{agent}-{n}"), n),
        11..14 => put(&format!("seed-{}", (x >> 8) % SEEDED), n),
        14 => client::request("DELETE", &format!("/api/v1/memory/chat/{agent}-{}", n.saturating_sub(7)), KEY, None),
        _ => {
            let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": format!("Summarize report {} for the board in five bullet points.", (x >> 8) % PROMPTS)}]});
            client::request("POST", "/v1/chat/completions", KEY, Some(Bytes::from(body.to_string())))
        }
    }
}

fn put(key: &str, n: u64) -> Bytes {
    let body = serde_json::json!({"payload": crate::scenarios::payload(n)}).to_string();
    client::request("PUT", &format!("/api/v1/memory/chat/{key}"), KEY, Some(Bytes::from(body)))
}

async fn seed(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    for i in 0..SEEDED {
        stream.write_all(&put(&format!("seed-{i}"), i)).await?;
        let status = client::read_response(&mut stream, &mut buf).await?;
        anyhow::ensure!(status == 201 || status == 200, "seeding answered {status}");
    }
    Ok(())
}

/// An OpenAI-compatible stand-in: every chat completion answers the same short reply.
async fn stand_in_upstream() -> anyhow::Result<std::net::SocketAddr> {
    let answer = serde_json::json!({"id": "chatcmpl-soak", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Five bullet points."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}});
    client::fixed_server(Bytes::from(answer.to_string())).await
}

fn start_server(
    bin: &Path,
    dir: &Path,
    upstream: std::net::SocketAddr,
    cache_mib: Option<u64>,
) -> anyhow::Result<(std::process::Child, std::net::SocketAddr)> {
    std::fs::create_dir_all(dir.join("config"))?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let mut cmd = std::process::Command::new(bin);
    if let Some(mib) = cache_mib {
        let bytes = (mib << 20).to_string();
        cmd.env("DAENA_MEMORY_L1_CACHE_BYTES", &bytes).env("DAENA_MEMORY_L2_CACHE_BYTES", &bytes);
    }
    let child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DAENA_DATA_DIR", dir.join("data"))
        .env("DAENA_CONFIG_DIR", dir.join("config"))
        .env("DAENA_OPS_KEY", KEY)
        .env("DAENA_RATE_LIMIT_ENABLED", "false")
        .env("DAENA_LLM_UPSTREAM_URL", format!("http://{upstream}/v1"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = std::fs::read_to_string(dir.join("data/daena.lock")).ok();
        if let Some(addr) = info
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["listen"].as_str().and_then(|a| a.parse::<std::net::SocketAddr>().ok()))
            .filter(|a| a.port() != 0 && std::net::TcpStream::connect(a).is_ok())
        {
            return Ok((child, addr));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "daena serve did not come up; its log is {}",
            dir.join("serve.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

fn open_fds(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// The ledger's size, from `/api/v1/ledger/head` over a plain blocking connection.
async fn ledger_size(addr: std::net::SocketAddr) -> anyhow::Result<u64> {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(
            format!("GET /api/v1/ledger/head HTTP/1.1\r\nhost: daena\r\nx-api-key: {KEY}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body)?;
        v["size"].as_u64().ok_or_else(|| anyhow::anyhow!("no size in the ledger head: {body}"))
    })
    .await?
}

fn to_csv(samples: &[Sample]) -> String {
    let mut out =
        String::from("seconds,rss_mib,open_fds,requests,errors,p50_ms,p99_ms,max_ms,ledger_entries,data_mib\n");
    for s in samples {
        out.push_str(&format!(
            "{:.0},{:.1},{},{},{},{:.3},{:.3},{:.3},{},{:.1}\n",
            s.at_s, s.rss_mib, s.fds, s.requests, s.errors, s.p50_ms, s.p99_ms, s.max_ms, s.ledger, s.data_mib
        ));
    }
    out
}

fn chart_series(samples: &[Sample]) -> Vec<crate::chart::Panel> {
    let xs: Vec<f64> = samples.iter().map(|s| s.at_s / 60.0).collect();
    let line = |f: fn(&Sample) -> f64| xs.iter().copied().zip(samples.iter().map(f)).collect::<Vec<_>>();
    vec![
        crate::chart::Panel { title: "resident memory (MiB)", lines: vec![("RSS", line(|s| s.rss_mib))] },
        crate::chart::Panel { title: "open file handles", lines: vec![("fds", line(|s| s.fds as f64))] },
        crate::chart::Panel {
            title: "latency per interval (ms, from when due)",
            lines: vec![("p50", line(|s| s.p50_ms)), ("p99", line(|s| s.p99_ms))],
        },
        crate::chart::Panel {
            title: "ledger entries and data directory (MiB)",
            lines: vec![("ledger / 1000", line(|s| s.ledger as f64 / 1000.0)), ("data MiB", line(|s| s.data_mib))],
        },
    ]
}

/// First and last sample and the extremes, and memory growth over the second half.
fn summary(samples: &[Sample]) -> String {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return "no samples".into() };
    let half = &samples[samples.len() / 2..];
    let max = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(f64::MIN, f64::max);
    let total: u64 = samples.iter().map(|s| s.requests).sum();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    format!(
        "requests {total}, errors {errors}\n\
         RSS {:.1} → {:.1} MiB (max {:.1}; second half {:+.1} MiB)\n\
         open fds {} → {} (max {})\n\
         p99 per interval: first {:.2} ms, last {:.2} ms, worst {:.2} ms; worst single request {:.1} ms\n\
         ledger {} → {} entries, data directory {:.1} → {:.1} MiB",
        first.rss_mib,
        last.rss_mib,
        max(|s| s.rss_mib),
        last.rss_mib - half[0].rss_mib,
        first.fds,
        last.fds,
        max(|s| s.fds as f64),
        first.p99_ms,
        last.p99_ms,
        max(|s| s.p99_ms),
        max(|s| s.max_ms),
        first.ledger,
        last.ledger,
        first.data_mib,
        last.data_mib
    )
}
