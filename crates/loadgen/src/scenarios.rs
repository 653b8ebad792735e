//! The measured scenarios. Each starts Daena in this process on a free port over a scratch
//! data directory, so server and client share the machine as they would on one box.

use crate::Common;
use crate::client::{self, MakeRequest};
use bytes::Bytes;
use daena_app::auth::Access;
use daena_app::config::{Config, LoadedConfig};
use daena_app::memory::PutRequest;
use daena_app::{Daena, OpenOptions};
use std::sync::Arc;
use std::time::Instant;

pub const KEY: &str = "bench-ops-key";

pub struct Running {
    /// Dropped (or sent), the server stops and lets go of the service.
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
    pub daena: Arc<Daena>,
    pub addr: std::net::SocketAddr,
}

impl Running {
    /// Stops the server and shuts the service down before its scratch directory goes, so no
    /// background writer finds its files gone (a server left running would keep the service,
    /// and its commit thread, alive).
    pub async fn stop(self) -> anyhow::Result<()> {
        let Running { stop, serving, _dir, daena, .. } = self;
        let _ = stop.send(());
        if tokio::time::timeout(std::time::Duration::from_secs(10), serving).await.is_err() {
            anyhow::bail!("the server did not stop within 10 s");
        }
        daena.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))
    }
}

pub async fn start(edit: impl FnOnce(&mut Config)) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    config.memory.aging.interval_minutes = 0;
    config.rate_limit.enabled = false;
    edit(&mut config);
    config.validate().map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    let loaded = LoadedConfig { config, ..LoadedConfig::in_dir(dir.path(), Some(KEY)) };
    let daena = Daena::open(loaded, OpenOptions::offline("loadgen")).map_err(|e| anyhow::anyhow!(e.message))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = daena.clone();
    let serving = tokio::spawn(async move {
        daena_api::serve(state, listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(Running { stop, serving, _dir: dir, daena, addr })
}

/// A record of a realistic shape: a chat turn with agent metadata (~300 bytes of JSON).
pub fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({
        "text": format!("Customer asked about invoice {i}; the agent explained the net-30 terms and offered a follow-up call on Thursday."),
        "agent": format!("customer_scout_{}", i % 6),
        "turn": i % 40,
        "tags": ["billing", "follow-up"],
    })
}

/// The load generator's own key, authenticated on `d` for `access`.
pub fn principal(d: &Daena, access: Access) -> anyhow::Result<daena_app::auth::Principal> {
    d.governance().api_keys().authenticate(Some(KEY), None, access).map_err(|e| anyhow::anyhow!(e.message))
}

pub async fn seed(d: &Arc<Daena>, records: u64) -> anyhow::Result<()> {
    seed_range(d, 0, records).await
}

/// Stores records `k{from}` to `k{to - 1}` through 64 concurrent writers.
pub async fn seed_range(d: &Arc<Daena>, from: u64, to: u64) -> anyhow::Result<()> {
    let who = principal(d, Access::Data)?;
    let start = Instant::now();
    let d = d.clone();
    in_parallel("seeding", from, to, move |i| {
        let (d, who) = (d.clone(), who.clone());
        async move {
            let req = PutRequest {
                class: "chat".into(),
                key: format!("k{i}"),
                payload: payload(i),
                meta: None,
                if_match: None,
                intended_revision: false,
                agent: None,
            };
            daena_app::memory::put(&d, &who, req).await.map_err(|e| anyhow::anyhow!(e.message))?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "\rseeded {} records in {:.1} s ({:.0}/s)",
        to - from,
        start.elapsed().as_secs_f64(),
        (to - from) as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `op(i)` for every `i` in `from..to` on 64 concurrent tasks (task `w` takes
/// `from + w`, then every 64th), printing progress as `what: i/to` every 100k.
pub async fn in_parallel<F, Fut>(what: &'static str, from: u64, to: u64, op: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    const WORKERS: u64 = 64;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = from + w;
            while i < to {
                op(i).await?;
                i += WORKERS;
                if w == 0 && i % 100_000 < WORKERS {
                    eprint!("\r{what}: {i}/{to}   ");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub fn get_requests(records: u64, hot: u64) -> MakeRequest {
    Arc::new(move |worker, n| {
        // A cheap deterministic spread over the key space.
        let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let i = (x >> 11) % hot.min(records);
        client::request("GET", &format!("/api/v1/memory/chat/k{i}"), KEY, None)
    })
}

pub async fn memory_get(c: &Common, records: u64, l2_cache_bytes: u64) -> anyhow::Result<()> {
    let running = start(|c| c.memory.l2_cache_bytes = l2_cache_bytes).await?;
    seed(&running.daena, records).await?;
    let l1 = running.daena.config().memory.l1_cache_size;
    println!(
        "GET over HTTP, loopback, concurrency {}, {records} records stored, L1 holds {l1}, L2 page cache {} MiB",
        c.concurrency,
        l2_cache_bytes >> 20
    );
    let null = client::null_server().await?;
    let base = client::run(null, c.concurrency, c.warmup, c.seconds, get_requests(records, records)).await?;
    println!("{}", base.line("baseline: null HTTP server"));
    let hot = client::run(running.addr, c.concurrency, c.warmup, c.seconds, get_requests(records, l1 / 2)).await?;
    println!("{}  p99 ratio {:.2}", hot.line("GET, hot keys (L1 hits)"), hot.pct(0.99) / base.pct(0.99));
    let cold = client::run(running.addr, c.concurrency, c.warmup, c.seconds, get_requests(records, records)).await?;
    println!(
        "{}  p99 ratio {:.2}",
        cold.line("GET, uniform over all keys (mostly L2)"),
        cold.pct(0.99) / base.pct(0.99)
    );
    let report = daena_app::memory::monitor::report(&running.daena, &principal(&running.daena, Access::Read)?);
    println!(
        "server-side latency (last 1-2 minutes): L1 p99 {:?} ms, L2 p99 {:?} ms; L1 hit rate {:?}",
        report.l1.latency.map(|l| l.p99_ms),
        report.l2.latency.map(|l| l.p99_ms),
        report.l1.hit_rate
    );
    Ok(())
}

pub async fn memory_put(c: &Common) -> anyhow::Result<()> {
    let running = start(|_| {}).await?;
    println!(
        "PUT over HTTP, loopback, concurrency {}: each acknowledged after its ledger entry is fsynced",
        c.concurrency
    );
    let make: MakeRequest = Arc::new(|worker, n| {
        let i = worker as u64 * 1_000_000_000 + n;
        let body = serde_json::json!({"payload": payload(i)}).to_string();
        client::request("PUT", &format!("/api/v1/memory/chat/w{worker}-{n}"), KEY, Some(Bytes::from(body)))
    });
    let null = client::null_server().await?;
    let base = client::run(null, c.concurrency, c.warmup, c.seconds, make.clone()).await?;
    println!("{}", base.line("baseline: null HTTP server"));
    let before = CommitTotals::read(&running.daena);
    let started = Instant::now();
    let put = client::run(running.addr, c.concurrency, c.warmup, c.seconds, make).await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}  throughput ratio {:.2}",
        put.line("PUT, new records (L2, zstd + AES-GCM, ledger)"),
        put.rate() / base.rate()
    );
    CommitTotals::read(&running.daena).since(&before).print(elapsed);
    Ok(())
}

/// The commit thread's totals, to report batch size and disk time per batch for a run.
struct CommitTotals {
    batches: u64,
    ops: u64,
    write_micros: u64,
    /// Time the commit thread waited for the settler (redb behind the writes).
    settle_wait_micros: u64,
}

impl CommitTotals {
    fn read(d: &Daena) -> CommitTotals {
        let s = &d.commit().stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        CommitTotals {
            batches: load(&s.batches),
            ops: load(&s.ops),
            write_micros: load(&s.write_micros),
            settle_wait_micros: load(&d.memory().counters.settle_wait_micros),
        }
    }

    fn since(&self, before: &CommitTotals) -> CommitTotals {
        CommitTotals {
            batches: self.batches - before.batches,
            ops: self.ops - before.ops,
            write_micros: self.write_micros - before.write_micros,
            settle_wait_micros: self.settle_wait_micros - before.settle_wait_micros,
        }
    }

    /// One line: batches per second, operations per batch, write + fdatasync time per batch
    /// and the share of the run the commit thread spent in it (warm-up included).
    fn print(&self, seconds: f64) {
        let per = |x: u64| x as f64 / self.batches.max(1) as f64;
        println!(
            "commit thread (warm-up included): {:.0} batches/s, {:.1} ops per batch, write + fdatasync {:.0} µs per batch, {:.0}% of the run; waited {:.1} ms for redb",
            self.batches as f64 / seconds,
            per(self.ops),
            per(self.write_micros),
            self.write_micros as f64 / 1e4 / seconds,
            self.settle_wait_micros as f64 / 1e3,
        );
    }
}

/// The chat request of the exact-hit scenarios and its cached answer (about 400 bytes).
pub fn cached_pair() -> (serde_json::Value, serde_json::Value) {
    let request = serde_json::json!({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are the finance department's assistant."},
        {"role": "user", "content": "Summarize the Q3 revenue report for the board in five bullet points."}]});
    let answer = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Revenue grew 12% year over year, led by subscriptions; margins held at 41%; churn fell to 2.1%; the pipeline for Q4 is 18% larger; hiring stays flat."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 48, "total_tokens": 90}});
    (request, answer)
}

/// Stores one chat completion in the cache of `running` and returns the request that hits
/// it and the cached answer.
async fn cache_one_answer(running: &Running) -> anyhow::Result<(Bytes, Vec<u8>)> {
    let (request, answer) = cached_pair();
    let who = principal(&running.daena, Access::Data)?;
    daena_app::cas::chat::store(&running.daena, &who, request.clone(), answer.clone(), Default::default())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok((Bytes::from(request.to_string()), answer.to_string().into_bytes()))
}

pub async fn cas_hit(c: &Common, redis: &str) -> anyhow::Result<()> {
    let running = start(|_| {}).await?;
    let (body, value) = cache_one_answer(&running).await?;
    println!("exact cache hits over HTTP, loopback, concurrency {} ({}-byte answer)", c.concurrency, value.len());
    let make: MakeRequest =
        Arc::new(move |_, _| client::request("POST", "/v1/chat/completions", KEY, Some(body.clone())));
    let null = client::null_server().await?;
    let base = client::run(null, c.concurrency, c.warmup, c.seconds, make.clone()).await?;
    println!("{}", base.line("baseline: null HTTP server"));
    match client::redis_get(redis, c.concurrency, c.warmup, c.seconds, &value).await {
        Ok(r) => println!("{}", r.line("baseline: Redis GET (same size)")),
        Err(e) => println!("baseline: Redis GET unavailable at {redis}: {e}"),
    }
    let hits = client::run(running.addr, c.concurrency, c.warmup, c.seconds, make).await?;
    println!("{}", hits.line("POST /v1/chat/completions, exact hits"));
    if let Ok(r) = client::redis_get(redis, c.concurrency, 0.5, c.seconds, &value).await {
        println!("{}", r.line("baseline: Redis GET again (drift check)"));
        println!(
            "ratios to Redis GET: throughput {:.2}, p99 {:.2}",
            hits.rate() / r.rate(),
            hits.pct(0.99) / r.pct(0.99)
        );
    }
    Ok(())
}

/// Open loop: exact cache hits and memory GETs (L1 hits over 10k records) at fixed arrival
/// rates, latency from when each request was due (see [`client::run_open`]).
pub async fn open_loop(c: &Common, rates: &[f64]) -> anyhow::Result<()> {
    const RECORDS: u64 = 10_000;
    let running = start(|_| {}).await?;
    let (body, _) = cache_one_answer(&running).await?;
    seed(&running.daena, RECORDS).await?;
    let hits: MakeRequest =
        Arc::new(move |_, _| client::request("POST", "/v1/chat/completions", KEY, Some(body.clone())));
    let gets = get_requests(RECORDS, RECORDS);
    println!(
        "open loop over {} connections: latency from when each request was due when the server made it late",
        c.concurrency
    );
    for &rate in rates {
        let r = client::run_open(running.addr, rate, c.concurrency, c.warmup, c.seconds, hits.clone()).await?;
        println!("{}", r.line(&format!("open loop {rate:.0}/s: exact hits")));
        let r = client::run_open(running.addr, rate, c.concurrency, c.warmup, c.seconds, gets.clone()).await?;
        println!("{}", r.line(&format!("open loop {rate:.0}/s: memory GET, L1")));
    }
    Ok(())
}
