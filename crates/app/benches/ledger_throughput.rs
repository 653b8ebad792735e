//! Ledger throughput: durable appends per second at concurrency 1, 16 and 64 through the
//! commit thread (group commit), beside a baseline of raw `write + fdatasync` on the same
//! disk; and verification speed over 1M entries beside a baseline of just reading them.
//!
//! Run: `cargo bench -p daena-app --bench ledger_throughput` (add `-- --quick` for 100k entries).

use daena_app::clock::{Clock, SystemClock};
use daena_app::commit::{CommitPolicy, Committer, NoState};
use daena_core::ledger::entry::NewEntry;
use daena_core::ledger::verify::ChainVerifier;
use daena_core::time::Micros;
use ed25519_dalek::SigningKey;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn entry(i: u64) -> NewEntry {
    entry_with_body(i, 160)
}

fn entry_with_body(i: u64, body: usize) -> NewEntry {
    NewEntry::new("acme", "key:bench", "memory.put", format!("chat/k{i}"))
        .attrs(json!({"version": 1, "class": "chat"}))
        .body(vec![0x5a; body])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Baseline: one writer doing 250-byte appends, each followed by fdatasync.
fn fsync_baseline(dir: &std::path::Path, secs: f64) -> f64 {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("baseline.bin")).expect("open");
    let line = vec![b'x'; 250];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&line).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn appends(concurrency: usize, secs: f64) -> (f64, Duration, Duration, u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (writer, _reader, _) = daena_store::ledger::open(&tmp.path().join("ledger"), 64 << 20).expect("open");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let policy = CommitPolicy {
        checkpoint_every_entries: 1_000_000,
        checkpoint_every: Duration::from_secs(3600),
        flush_every: Duration::from_secs(3600),
    };
    let commit = Committer::start(
        Box::new(writer),
        Box::new(NoState),
        SigningKey::from_bytes(&[1; 32]),
        clock,
        policy,
        Vec::new(),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let commit = commit.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                commit.append(vec![entry(w as u64 * 1_000_000_000 + i)]).await.expect("append");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let batches = commit.stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    commit.shutdown().await.expect("shutdown");
    lat.sort();
    (lat.len() as f64 / elapsed, percentile(&lat, 0.5), percentile(&lat, 0.99), batches)
}

fn build_ledger(dir: &std::path::Path, n: u64, body: usize) {
    let (mut writer, _, _) = daena_store::ledger::open(dir, 64 << 20).expect("open");
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEntry> = (i..(i + 10_000).min(n)).map(|i| entry_with_body(i, body)).collect();
        writer.append(&batch, Micros(i as i64)).expect("append");
        i += batch.len() as u64;
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let verify_only = std::env::args().any(|a| a == "--verify-only");
    let secs = if quick { 2.0 } else { 5.0 };
    let machine = format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("ledger throughput ({machine}, {secs} s per point)");

    let tmp = tempfile::tempdir().expect("tempdir");
    let base = fsync_baseline(tmp.path(), secs);
    println!("baseline: write+fdatasync, 1 writer           {base:>10.0} /s");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    for c in if verify_only { vec![] } else { vec![1usize, 16, 64] } {
        let (rate, p50, p99, batches) = rt.block_on(appends(c, secs));
        println!(
            "appends, concurrency {c:>2}                      {rate:>10.0} /s  p50 {:>7.3} ms  p99 {:>7.3} ms  {:.1} entries/fsync  ratio to baseline {:.2}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            rate * secs / batches.max(1) as f64,
            rate / base
        );
    }

    for body in [160usize, 0] {
        let dir = tmp.path().join(format!("big-{body}"));
        let t = Instant::now();
        build_ledger(&dir, n, body);
        println!("built a ledger of {n} entries with {body}-byte bodies in {:.1} s", t.elapsed().as_secs_f64());
        for _ in 0..2 {
            let t = Instant::now();
            let mut lines = 0u64;
            let mut bytes = 0u64;
            daena_store::ledger::stream_dir(&dir, |l| {
                lines += 1;
                bytes += l.len() as u64;
            })
            .expect("stream");
            let read = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut v = ChainVerifier::new(Vec::new(), None);
            daena_store::ledger::stream_dir(&dir, |l| v.push(l)).expect("stream");
            let s = v.finish();
            assert!(s.ok() && s.entries == n);
            let single = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let (s, _) = daena_store::ledger::verify_path(&dir, Vec::new(), None, |_| {}).expect("verify");
            assert!(s.ok() && s.entries == n);
            let verify = t.elapsed().as_secs_f64();
            println!(
                "baseline: read {lines} lines ({:.0} MB)            {:>10.0} /s",
                bytes as f64 / 1e6,
                lines as f64 / read
            );
            println!(
                "verify, one thread                           {:>10.0} /s  ratio to read {:.2}",
                n as f64 / single,
                read / single
            );
            println!(
                "verify, all cores (daena ledger verify)      {:>10.0} /s  {:.0} MB/s  ratio to read {:.2}",
                n as f64 / verify,
                bytes as f64 / 1e6 / verify,
                read / verify
            );
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
