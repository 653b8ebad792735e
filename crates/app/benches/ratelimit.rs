//! The tenant rate limiter's decision cost in process: the GCRA kernel alone (baseline), the
//! limiter for one hot tenant, and the limiter holding one million tenants, asked about
//! tenants spread over all of them (every decision a cache miss). Prints the resident memory
//! the million tenants cost.
//!
//! Run: `cargo bench -p daena-app --bench ratelimit`

use criterion::{Criterion, criterion_group, criterion_main};
use daena_app::config::LoadedConfig;
use daena_app::{Daena, OpenOptions};
use daena_core::gcra::{self, Limit};
use std::hint::black_box;

const TENANTS: usize = 1_000_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = LoadedConfig::in_dir(dir.path(), Some("k"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let d = rt.block_on(async { Daena::open(loaded, OpenOptions::offline("bench")) }).expect("open");
    let limiter = &d.governance().limiter();

    let limit = Limit { rpm: 1000, burst: 100 };
    let mut tat = None;
    let mut now = 0i64;
    c.bench_function("gcra kernel (baseline)", |b| {
        b.iter(|| {
            now += 60_000;
            let (decision, next) = gcra::decide(black_box(limit), tat, now);
            tat = next;
            black_box(decision)
        });
    });
    c.bench_function("limiter check, one tenant", |b| b.iter(|| black_box(limiter.check(black_box("acme")))));

    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i:07}")).collect();
    let before = rss_bytes();
    for n in &names {
        limiter.check(n);
    }
    let after = rss_bytes();
    println!(
        "{TENANTS} tenants held: resident memory +{:.0} MiB ({:.0} bytes per tenant)",
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / TENANTS as f64
    );
    // A multiplicative stride visits every tenant in an order the caches cannot follow.
    // Fetching the id from the table is itself two cache misses, which a server does not
    // pay (the id comes from the request): measured alone as the baseline.
    let mut i = 0usize;
    c.bench_function("fetch tenant id from the 1M table (baseline)", |b| {
        b.iter(|| {
            i = (i + 618_033) % TENANTS;
            let n = &names[i];
            black_box(n.as_bytes()[n.len() - 1])
        });
    });
    c.bench_function("limiter check, 1M tenants", |b| {
        b.iter(|| {
            i = (i + 618_033) % TENANTS;
            black_box(limiter.check(&names[i]))
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
