//! Near-duplicate lookup in process: the multi-index against a linear scan over the same
//! entries, at 100k and 1M SimHashes in one scope (the worst case), max distance 7.
//!
//! Run: `cargo bench -p daena-core --bench near_index`

use daena_core::cas::NearIndex;
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for n in [100_000usize, 1_000_000] {
        let mut idx = NearIndex::default();
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            let h = rng.next();
            idx.insert(7, h);
            hashes.push(h);
        }
        // Queries: half near an existing entry (up to 7 flipped bits), half random.
        let queries: Vec<u64> = (0..2000)
            .map(|i| {
                if i % 2 == 0 {
                    let mut q = hashes[(rng.next() % n as u64) as usize];
                    for _ in 0..(rng.next() % 8) {
                        q ^= 1 << (rng.next() % 64);
                    }
                    q
                } else {
                    rng.next()
                }
            })
            .collect();
        let mut mih = Vec::new();
        let mut found = 0usize;
        for q in &queries {
            let t = Instant::now();
            found += black_box(idx.search(7, *q, 7)).len();
            mih.push(t.elapsed());
        }
        let mut scan = Vec::new();
        let mut found_scan = 0usize;
        for q in queries.iter().take(200) {
            let t = Instant::now();
            found_scan += black_box(idx.scan(7, *q, 7)).len();
            scan.push(t.elapsed());
        }
        let (p50, p99) = (pct(&mut mih, 0.5), pct(&mut mih, 0.99));
        let (s50, s99) = (pct(&mut scan, 0.5), pct(&mut scan, 0.99));
        println!(
            "{n:>8} entries: multi-index p50 {p50:>7.1} µs p99 {p99:>7.1} µs ({found} matches / 2000 queries) | linear scan p50 {s50:>9.1} µs p99 {s99:>9.1} µs ({found_scan} / 200) | p99 ratio {:.0}x",
            s99 / p99
        );
    }
}
