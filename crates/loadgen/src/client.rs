//! A closed-loop HTTP/1.1 load client: N keep-alive connections, each with one request in
//! flight, recording every latency.
//!
//! The client is as lean as the Redis baseline's: one task per connection writes the request
//! bytes and reads the answer (status line, headers parsed with `httparse`, a body of
//! `Content-Length` bytes). A general-purpose client costs several times more CPU per request
//! (hyper's runs each connection as a second task fed through a channel), and on a 2-core box
//! that CPU comes out of the server's share.

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Builds the n-th request of a worker, as the bytes to send.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> Bytes + Send + Sync>;

pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn pct(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1e3
    }

    /// The report as one line of text; also recorded with [`record_json`].
    pub fn line(&self, label: &str) -> String {
        record_json(
            label,
            serde_json::json!({
                "rate": self.rate(),
                "p50_ms": self.pct(0.50),
                "p90_ms": self.pct(0.90),
                "p99_ms": self.pct(0.99),
                "max_ms": self.pct(1.0),
                "requests": self.requests,
                "errors": self.errors,
                "seconds": self.seconds,
            }),
        );
        format!(
            "{label:<44} {:>9.0} req/s  p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  errors {}",
            self.rate(),
            self.pct(0.50),
            self.pct(0.90),
            self.pct(0.99),
            self.pct(1.0),
            self.errors
        )
    }
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted`; zero when it is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n - 1) as f64 * p).round() as usize],
    }
}

/// With `DAENA_BENCH_JSON` set (as `bench/run` does), appends one JSON line to that file:
/// the scenario (`DAENA_BENCH_SCENARIO`), `label` and the `fields` of the figure, for the
/// report generator.
pub fn record_json(label: &str, fields: serde_json::Value) {
    let Some(path) = std::env::var_os("DAENA_BENCH_JSON") else { return };
    let mut record = serde_json::json!({
        "scenario": std::env::var("DAENA_BENCH_SCENARIO").unwrap_or_default(),
        "label": label,
    });
    if let (Some(out), serde_json::Value::Object(fields)) = (record.as_object_mut(), fields) {
        out.extend(fields);
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{record}\n").as_bytes()));
    if let Err(e) = appended {
        eprintln!("cannot append to DAENA_BENCH_JSON {}: {e}", std::path::Path::new(&path).display());
    }
}

/// Runs `concurrency` connections against `addr` for `warmup + seconds`, measuring the last
/// `seconds`.
pub async fn run(
    addr: std::net::SocketAddr,
    concurrency: usize,
    warmup: f64,
    seconds: f64,
    make: MakeRequest,
) -> anyhow::Result<Report> {
    run_spread(&[addr], concurrency, warmup, seconds, make).await
}

/// [`run`] with the connections spread over `addrs` (replicas behind a load balancer).
pub async fn run_spread(
    addrs: &[std::net::SocketAddr],
    concurrency: usize,
    warmup: f64,
    seconds: f64,
    make: MakeRequest,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!addrs.is_empty(), "no address to send requests to");
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let make = make.clone();
        let errors = errors.clone();
        let addr = addrs[worker % addrs.len()];
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut n = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let req = make(worker, n);
                n += 1;
                stream.write_all(&req).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                let elapsed = now.elapsed();
                if now >= measure_from {
                    lat.push(elapsed);
                    if !(200..300).contains(&status) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    collect(tasks, &errors, seconds).await
}

/// Open loop: `rate` requests a second in total, each of `connections` keep-alive connections
/// on its own fixed schedule (staggered so the arrivals are even), for `warmup + seconds`,
/// measuring the last `seconds`. A connection still waiting for an answer when its next
/// request is due sends it as soon as the answer is in, and that request's latency runs from
/// when it was due: a stall delays the requests queued behind it and they count it, so the
/// percentiles are what a caller arriving at this rate sees (no coordinated omission). A
/// request sent late only because the client's timer woke late (tokio's timers tick in
/// milliseconds) is timed from when it was sent: that delay is the client's, not the server's.
pub async fn run_open(
    addr: std::net::SocketAddr,
    rate: f64,
    connections: usize,
    warmup: f64,
    seconds: f64,
    make: MakeRequest,
) -> anyhow::Result<Report> {
    anyhow::ensure!(rate > 0.0 && connections > 0, "an open loop needs a positive rate and connections");
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let gap = Duration::from_secs_f64(connections as f64 / rate);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (make, errors) = (make.clone(), errors.clone());
        let first = start + gap.mul_f64(worker as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let schedule = Schedule { first, gap, end };
            open_connection(
                addr,
                schedule,
                |n| make(worker, n),
                |due, latency, status| {
                    if due >= measure_from {
                        lat.push(latency);
                        if !(200..300).contains(&status) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                },
            )
            .await?;
            anyhow::Ok(lat)
        }));
    }
    // Requests due in the measured window; when the server keeps up, `rate × seconds`.
    collect(tasks, &errors, seconds).await
}

/// When one connection of an open loop sends: request `n` at `first + n × gap`, while that
/// is before `end`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Instant,
    pub gap: Duration,
    pub end: Instant,
}

/// One connection of an open loop on `schedule`: sends `request(n)` when it is due (or as
/// soon as the previous answer is in) and calls `answered(due, latency, status)`. The latency
/// runs from when the request was due if the server held the connection past that, else from
/// when it was sent (see [`run_open`]).
pub async fn open_connection(
    addr: std::net::SocketAddr,
    schedule: Schedule,
    mut request: impl FnMut(u64) -> Bytes,
    mut answered: impl FnMut(Instant, Duration, u16),
) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut last_answer = schedule.first;
    for n in 0u64.. {
        let due = schedule.first + schedule.gap.mul_f64(n as f64);
        if due >= schedule.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        // Behind because of the server (the last answer came after `due`): from `due`.
        let from = if last_answer > due { due } else { Instant::now() };
        stream.write_all(&request(n)).await?;
        let status = read_response(&mut stream, &mut buf).await?;
        last_answer = Instant::now();
        answered(due, last_answer - from, status);
    }
    Ok(())
}

type Latencies = tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>;

/// Waits for the connections' tasks and puts their latencies together, sorted.
async fn collect(tasks: Vec<Latencies>, errors: &AtomicU64, seconds: f64) -> anyhow::Result<Report> {
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    Ok(Report { requests: latencies.len() as u64, errors: errors.load(Ordering::Relaxed), seconds, latencies })
}

/// A null HTTP server: answers every request 200 with a small JSON body. The baseline for
/// what the HTTP stack and this client cost on this machine.
pub async fn null_server() -> anyhow::Result<std::net::SocketAddr> {
    fixed_server(Bytes::from_static(br#"{"ok":true}"#)).await
}

/// A server that answers every request 200 with `body` as JSON.
pub async fn fixed_server(body: Bytes) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Reads one response from `stream` into `buf` (which keeps nothing between responses: one
/// request is in flight) and returns its status. Needs `Content-Length`; Daena and the null
/// server send it on every answer these scenarios ask for.
pub async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf)? {
            let status = resp.code.unwrap_or(0);
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .ok_or_else(|| anyhow::anyhow!("a response without Content-Length (status {status})"))?;
            while buf.len() < head + len {
                read_more(stream, buf).await?;
            }
            anyhow::ensure!(buf.len() == head + len, "bytes after the response body: the server answered twice");
            return Ok(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    anyhow::ensure!(stream.read_buf(buf).await? > 0, "the server closed the connection");
    Ok(())
}

/// A request as bytes: HTTP/1.1, keep-alive, with Daena's API key header.
pub fn request(method: &str, uri: &str, key: &str, body: Option<Bytes>) -> Bytes {
    let body = body.unwrap_or_default();
    let mut out = format!("{method} {uri} HTTP/1.1\r\nhost: daena\r\nx-api-key: {key}\r\n");
    if !body.is_empty() {
        out.push_str("content-type: application/json\r\n");
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Bytes::from(bytes)
}

/// The baseline for cache hits: Redis GETs of a value of the same size, through `concurrency`
/// connections with one request in flight each (RESP written by hand; nothing else needed).
pub async fn redis_get(
    addr: &str,
    concurrency: usize,
    warmup: f64,
    seconds: f64,
    value: &[u8],
) -> anyhow::Result<Report> {
    let mut setup = tokio::net::TcpStream::connect(addr).await?;
    let mut set = format!("*3\r\n$3\r\nSET\r\n$18\r\ndaena-bench-cached\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(value);
    set.extend_from_slice(b"\r\n");
    setup.write_all(&set).await?;
    let mut ok = [0u8; 5];
    setup.read_exact(&mut ok).await?;
    anyhow::ensure!(&ok == b"+OK\r\n", "redis SET failed");
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let expect = value.len() + format!("${}\r\n", value.len()).len() + 2;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let get = b"*2\r\n$3\r\nGET\r\n$18\r\ndaena-bench-cached\r\n";
            let mut buf = vec![0u8; expect];
            let mut lat = Vec::with_capacity(1 << 16);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                s.write_all(get).await?;
                s.read_exact(&mut buf).await?;
                if now >= measure_from {
                    lat.push(now.elapsed());
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    Ok(Report { requests: latencies.len() as u64, errors: 0, seconds, latencies })
}
