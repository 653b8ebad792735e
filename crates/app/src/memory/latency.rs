//! Latency percentiles over the last one to two minutes, from log-linear histograms.
//!
//! A sample is counted in a bucket of its duration in microseconds: exact below 16 µs,
//! then 16 buckets per power of two, so a reported percentile is the middle of a bucket at
//! most 1/16 wide (within about 3% of the true value). Two histograms take turns: samples
//! go to the current one, and once it is a minute old it becomes the previous one. A report
//! merges both, so it covers between one and two minutes whatever the request rate, and
//! an idle tier reports nothing rather than old numbers.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// How long a histogram takes samples before it becomes the previous one.
pub const WINDOW: Duration = Duration::from_secs(60);

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Durations are counted up to 2^40 µs (about 12 days); longer ones in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

fn bucket_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    let mantissa = (micros >> shift) & (SUB - 1);
    ((shift + 1) as usize) * SUB as usize + mantissa as usize
}

/// The middle of bucket `b`, in microseconds.
fn middle_of(b: usize) -> f64 {
    let b = b as u64;
    if b < SUB {
        return b as f64;
    }
    let shift = b / SUB - 1;
    let low = (SUB + b % SUB) << shift;
    low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
}

#[derive(Debug)]
struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0 }
    }

    fn clear(&mut self) {
        if self.total > 0 {
            self.counts.fill(0);
            self.total = 0;
        }
    }
}

#[derive(Debug)]
struct Turns {
    current: Histogram,
    previous: Histogram,
    /// When `current` started taking samples.
    since: Instant,
}

impl Turns {
    fn turn(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age < WINDOW {
            return;
        }
        if age < 2 * WINDOW {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.since += WINDOW;
        } else {
            self.previous.clear();
            self.since = now;
        }
        self.current.clear();
    }
}

/// One kind of operation's latencies (a tier's reads, or writes).
#[derive(Debug)]
pub struct LatencyWindow(Mutex<Turns>);

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow(Mutex::new(Turns {
            current: Histogram::new(),
            previous: Histogram::new(),
            since: Instant::now(),
        }))
    }
}

impl LatencyWindow {
    pub fn record(&self, ms: f64) {
        self.record_at(ms, Instant::now());
    }

    /// (p50, p95, p99 in ms, samples) over the last one to two minutes, nearest rank.
    pub fn percentiles(&self) -> Option<(f64, f64, f64, u64)> {
        self.percentiles_at(Instant::now())
    }

    fn record_at(&self, ms: f64, now: Instant) {
        // `as` saturates: NaN and negatives count as 0 µs, huge values in the last bucket.
        let b = bucket_of((ms * 1000.0).round() as u64);
        let mut t = self.0.lock();
        t.turn(now);
        t.current.counts[b] += 1;
        t.current.total += 1;
    }

    fn percentiles_at(&self, now: Instant) -> Option<(f64, f64, f64, u64)> {
        let (counts, total): (Vec<u64>, u64) = {
            let mut t = self.0.lock();
            t.turn(now);
            let total = t.current.total + t.previous.total;
            if total == 0 {
                return None;
            }
            (t.current.counts.iter().zip(t.previous.counts.iter()).map(|(a, b)| a + b).collect(), total)
        };
        let at = |p: f64| {
            let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            let b = counts.iter().position(|c| {
                seen += c;
                seen >= rank
            });
            middle_of(b.unwrap_or(BUCKETS - 1)) / 1000.0
        };
        Some((at(0.50), at(0.95), at(0.99), total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for micros in (0..100_000u64).chain([1 << 30, (1 << 40) - 1, 1 << 40, u64::MAX]) {
            let b = bucket_of(micros);
            assert!(b >= last && b < BUCKETS, "{micros} µs in bucket {b} after {last}");
            last = b;
            let mid = middle_of(b);
            if micros <= 1 << 40 {
                assert!((mid - micros as f64).abs() <= micros as f64 / 32.0 + 0.5, "{micros} µs reported as {mid}");
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let w = LatencyWindow::default();
        let now = Instant::now();
        assert_eq!(w.percentiles_at(now), None);
        // 1..=1000 µs, once each: p50 0.5 ms, p95 0.95 ms, p99 0.99 ms.
        for us in 1..=1000 {
            w.record_at(f64::from(us) / 1000.0, now);
        }
        let (p50, p95, p99, n) = w.percentiles_at(now).expect("samples");
        assert_eq!(n, 1000);
        for (got, want) in [(p50, 0.5), (p95, 0.95), (p99, 0.99)] {
            assert!((got - want).abs() <= want / 32.0, "got {got} ms, want {want} ms");
        }
        // Garbage in counts somewhere, never panics.
        for ms in [f64::NAN, -1.0, f64::INFINITY, 1e30] {
            w.record_at(ms, now);
        }
        assert_eq!(w.percentiles_at(now).map(|p| p.3), Some(1004));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let w = LatencyWindow::default();
        let t0 = Instant::now();
        w.record_at(100.0, t0);
        // Still reported a minute and a half later, beside newer samples ...
        let t1 = t0 + WINDOW + WINDOW / 2;
        w.record_at(1.0, t1);
        w.record_at(1.0, t1);
        let (p50, _, p99, n) = w.percentiles_at(t1).expect("samples");
        assert_eq!(n, 3);
        assert!(p50 < 1.1 && p99 > 90.0, "p50 {p50}, p99 {p99}");
        // ... and gone once its minute has turned over twice.
        let t2 = t0 + 2 * WINDOW + WINDOW / 2;
        let (_, _, p99, n) = w.percentiles_at(t2).expect("the newer samples");
        assert_eq!(n, 2);
        assert!(p99 < 1.1, "p99 {p99}");
        // An idle window reports nothing.
        assert_eq!(w.percentiles_at(t2 + 3 * WINDOW), None);
    }
}
