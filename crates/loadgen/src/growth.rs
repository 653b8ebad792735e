//! Growth curves: what one operation costs as the data grows by powers of ten.
//!
//! - memory GET over HTTP, uniform over all records (L1 while they fit, then L2), 1k → max;
//! - exact cache hits over HTTP, uniform over all cached prompts, 1k → max;
//! - near-duplicate lookups in process (the SimHash multi-index, one scope), 1k → max;
//! - the ledger: `daena ledger verify`'s speed and an inclusion proof's latency, 10k → max.
//!
//! Each size adds to the one before (nothing is rebuilt); the figures go to stdout (and to
//! `DAENA_BENCH_JSON`) and the curves to an SVG chart.

use crate::client::{self, MakeRequest};
use crate::scenarios::{self, KEY};
use bytes::Bytes;
use daena_app::auth::Access;
use daena_core::cas::NearIndex;
use daena_core::ledger::entry::NewEntry;
use daena_core::time::Micros;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct GrowthArgs {
    /// Largest number of memory records
    #[arg(long, default_value_t = 1_000_000)]
    pub max_records: u64,
    /// Largest number of cached prompts (exact hits over HTTP, near lookups in process)
    #[arg(long, default_value_t = 1_000_000)]
    pub max_prompts: u64,
    /// Largest ledger, in entries
    #[arg(long, default_value_t = 10_000_000)]
    pub max_ledger: u64,
    /// Seconds per HTTP point (64 connections, closed loop, after 1 s of warm-up)
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Where to write the chart
    #[arg(long, default_value = "target/bench/growth.svg")]
    pub svg: PathBuf,
}

/// 1k, 10k, … up to `max` (and `max` itself when it is not a power of ten).
fn sizes(from: u64, max: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut n = from;
    while n < max {
        out.push(n);
        n = n.saturating_mul(10);
    }
    out.push(max);
    out
}

type Curve = Vec<(f64, f64)>;

pub async fn run(a: &GrowthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.max_records >= 1000 && a.max_prompts >= 1000 && a.max_ledger >= 10_000,
        "the curves start at 1k records and prompts and 10k ledger entries"
    );
    let get_p99 = records(a).await?;
    let (hit_p99, near_p99) = prompts(a).await?;
    let (verify_rate, proof_p99) = tokio::task::spawn_blocking({
        let max = a.max_ledger;
        move || ledger(max)
    })
    .await??;
    let panels = vec![
        crate::chart::Panel {
            title: "over HTTP, p99 (ms): memory GET by records; exact cache hit by cached prompts",
            lines: vec![("memory GET", get_p99), ("exact hit", hit_p99)],
        },
        crate::chart::Panel {
            title: "in process, p99 (µs): near lookup by cached prompts; inclusion proof by ledger entries",
            lines: vec![("near lookup", near_p99), ("inclusion proof", proof_p99)],
        },
        crate::chart::Panel {
            title: "ledger verify, million entries/s, by entries",
            lines: vec![("verify", verify_rate)],
        },
    ];
    if let Some(parent) = a.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let chart = crate::chart::draw(
        &panels,
        "Cost per operation as the data grows (2 cores, one run)",
        crate::chart::XAxis::Log10,
    );
    std::fs::write(&a.svg, chart)?;
    eprintln!("growth: wrote {}", a.svg.display());
    Ok(())
}

/// Memory GETs uniform over all records, at each size.
async fn records(a: &GrowthArgs) -> anyhow::Result<Curve> {
    let running = scenarios::start(|_| {}).await?;
    let mut stored = 0;
    let mut curve = Vec::new();
    for n in sizes(1000, a.max_records) {
        scenarios::seed_range(&running.daena, stored, n).await?;
        stored = n;
        let r = client::run(running.addr, 64, 1.0, a.seconds, scenarios::get_requests(n, n)).await?;
        println!("{}", r.line(&format!("growth: memory GET, {n} records")));
        curve.push((n as f64, r.pct(0.99)));
    }
    running.stop().await?;
    Ok(curve)
}

fn chat_request(i: u64) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": format!("Summarize report {i} for the board in five bullet points.")}]})
}

/// Exact hits over HTTP and near lookups in process, at each number of cached prompts.
async fn prompts(a: &GrowthArgs) -> anyhow::Result<(Curve, Curve)> {
    let running = scenarios::start(|_| {}).await?;
    let who = scenarios::principal(&running.daena, Access::Data)?;
    let mut near = NearIndex::default();
    let mut rng = fastrand::Rng::with_seed(0x1234_5678_9ABC_DEF1);
    let mut hashes = Vec::new();
    let (mut stored, mut hit_curve, mut near_curve) = (0u64, Vec::new(), Vec::new());
    for n in sizes(1000, a.max_prompts) {
        let t = Instant::now();
        let (d, who) = (running.daena.clone(), who.clone());
        scenarios::in_parallel("caching", stored, n, move |i| {
            let (d, who) = (d.clone(), who.clone());
            async move {
                let answer = serde_json::json!({"id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1,
                    "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": format!("Five bullet points about report {i}.")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}});
                daena_app::cas::chat::store(&d, &who, chat_request(i), answer, Default::default())
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                Ok(())
            }
        })
        .await?;
        eprintln!("growth: cached {} prompts in {:.1} s", n - stored, t.elapsed().as_secs_f64());
        while (hashes.len() as u64) < n {
            let h = rng.u64(..);
            near.insert(7, h);
            hashes.push(h);
        }
        stored = n;
        let hits: MakeRequest = Arc::new(move |worker, k| {
            let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let body = Bytes::from(chat_request((x >> 11) % n).to_string());
            client::request("POST", "/v1/chat/completions", KEY, Some(body))
        });
        let r = client::run(running.addr, 64, 1.0, a.seconds, hits).await?;
        anyhow::ensure!(r.errors == 0, "{} of the exact lookups over {n} prompts failed", r.errors);
        println!("{}", r.line(&format!("growth: exact cache hit, {n} prompts")));
        hit_curve.push((n as f64, r.pct(0.99)));
        let (p50, p99, found) = near_lookups(&near, &hashes, &mut rng);
        println!(
            "growth: near lookup in process, {n} prompts: p50 {p50:.1} µs, p99 {p99:.1} µs ({found} matches in 2000 queries)"
        );
        crate::client::record_json(
            &format!("growth: near lookup, {n} prompts"),
            serde_json::json!({"p50_us": p50, "p99_us": p99, "entries": n}),
        );
        near_curve.push((n as f64, p99));
    }
    running.stop().await?;
    Ok((hit_curve, near_curve))
}

/// 2000 queries, half within 7 bits of a stored hash and half random; (p50 µs, p99 µs, matches).
fn near_lookups(idx: &NearIndex, hashes: &[u64], rng: &mut fastrand::Rng) -> (f64, f64, usize) {
    let mut lat = Vec::with_capacity(2000);
    let mut found = 0;
    for i in 0..2000 {
        let q = if i % 2 == 0 {
            let mut q = hashes[rng.usize(..hashes.len())];
            for _ in 0..rng.u32(..8) {
                q ^= 1 << rng.u32(..64);
            }
            q
        } else {
            rng.u64(..)
        };
        let t = Instant::now();
        found += std::hint::black_box(idx.search(7, q, 7)).len();
        lat.push(t.elapsed());
    }
    lat.sort();
    (micros(&lat, 0.5), micros(&lat, 0.99), found)
}

fn micros(sorted: &[Duration], p: f64) -> f64 {
    client::percentile(sorted, p).as_secs_f64() * 1e6
}

/// Verify speed (million entries/s) and inclusion proof p99 (µs), at each ledger size.
fn ledger(max: u64) -> anyhow::Result<(Curve, Curve)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ledger");
    let (mut writer, reader, _) = daena_store::ledger::open(&path, 64 << 20)?;
    let mut rng = fastrand::Rng::with_seed(0x0DDB_A11C_AFE5_1234);
    let (mut size, mut verify_curve, mut proof_curve) = (0u64, Vec::new(), Vec::new());
    for n in sizes(10_000, max) {
        let t = Instant::now();
        while size < n {
            let batch: Vec<NewEntry> = (size..(size + 10_000).min(n))
                .map(|i| {
                    NewEntry::new("acme", "key:bench", "memory.put", format!("chat/k{i}"))
                        .attrs(serde_json::json!({"version": 1, "class": "chat"}))
                        .body(vec![0x5a; 160])
                })
                .collect();
            writer.append(&batch, Micros(size as i64))?;
            size += batch.len() as u64;
        }
        eprintln!("growth: ledger grown to {n} entries in {:.1} s", t.elapsed().as_secs_f64());
        // The baseline: reading the lines and nothing else.
        let t = Instant::now();
        let mut lines = 0u64;
        daena_store::ledger::stream_dir(&path, |_| lines += 1)?;
        let read_rate = lines as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (summary, _) = daena_store::ledger::verify_path(&path, Vec::new(), None, |_| {})?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(summary.ok() && summary.entries == n, "the ledger of {n} entries did not verify");
        let mut lat = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let seq = rng.u64(1..=n);
            let t = Instant::now();
            let proof = reader.inclusion_proof(seq, n)?;
            lat.push(t.elapsed());
            anyhow::ensure!(proof.is_some(), "no inclusion proof for entry {seq} of {n}");
        }
        lat.sort();
        let (rate, p50, p99) = (n as f64 / secs, micros(&lat, 0.5), micros(&lat, 0.99));
        println!(
            "growth: ledger of {n} entries: verify {rate:.0} entries/s ({secs:.2} s; reading alone {read_rate:.0} lines/s); inclusion proof p50 {p50:.1} µs, p99 {p99:.1} µs"
        );
        crate::client::record_json(
            &format!("growth: ledger, {n} entries"),
            serde_json::json!({"verify_per_s": rate, "read_per_s": read_rate, "proof_p50_us": p50, "proof_p99_us": p99, "entries": n}),
        );
        verify_curve.push((n as f64, rate / 1e6));
        proof_curve.push((n as f64, p99));
    }
    Ok((verify_curve, proof_curve))
}
