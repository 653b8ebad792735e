//! The operator dashboard's history: every minute, one sample of the figures its charts
//! draw (health, cache hit rates, tier latencies, error rate, spend and savings, ledger size),
//! the last 24 hours kept in memory and saved every few minutes (and at shutdown), so a
//! restart keeps the history. The live panels read the service's own endpoints; this is only
//! what they cannot: the past.

use crate::error::AppResult;
use crate::health::HealthStatus;
use crate::{Daena, analytics, cas};
use daena_store::kv::{DocTable, Kv, doc_table};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const SERIES: DocTable = doc_table("dashboard_series");
/// How often the samples are saved (and at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(300);

/// Samples kept: 24 hours at one a minute.
pub const KEEP: usize = 24 * 60;
/// Seconds between samples.
pub const INTERVAL_SECS: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sample {
    /// Milliseconds since 1970-01-01 UTC.
    pub at_ms: i64,
    /// `healthy`, `degraded` or `unhealthy`.
    pub health: HealthStatus,
    /// Cache lookups so far (exact hits, near hits, misses): differences give per-minute rates.
    pub cache_exact_hits: u64,
    pub cache_near_hits: u64,
    pub cache_misses: u64,
    /// Hit rate since start, in [0, 1].
    pub cache_hit_rate: f64,
    /// p95 latency of reads served by each tier over the last minute or two (ms).
    pub l1_p95_ms: Option<f64>,
    pub l2_p95_ms: Option<f64>,
    pub l3_p95_ms: Option<f64>,
    /// Failed share of the agents' reported interactions over the last 5 minutes.
    pub error_rate: f64,
    /// Upstream spend and what cache hits saved, since start (USD).
    pub spend_usd: f64,
    pub saved_usd: f64,
    pub ledger_size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesView {
    pub interval_secs: u64,
    /// Oldest first; the last one is taken at the request.
    pub samples: Vec<Sample>,
}

/// The kept samples, and when they were last saved.
#[derive(Debug)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
    saved: Mutex<Option<Instant>>,
    kv: Kv,
}

impl Series {
    /// The samples saved by the last run, if any.
    pub fn load(kv: Kv) -> AppResult<Series> {
        let mut samples: VecDeque<Sample> = kv.get_doc::<VecDeque<Sample>>(SERIES, "samples")?.unwrap_or_default();
        while samples.len() > KEEP {
            samples.pop_front();
        }
        Ok(Series { samples: Mutex::new(samples), saved: Mutex::new(None), kv })
    }

    /// Saves the samples when the last save is older than [`SAVE_EVERY`], or now with `force`.
    pub fn save(&self, force: bool) -> AppResult<()> {
        let mut saved = self.saved.lock();
        if !force && saved.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        let samples = self.samples.lock().clone();
        self.kv.put_doc(SERIES, "samples", &samples)?;
        *saved = Some(Instant::now());
        Ok(())
    }

    /// Takes a sample now and keeps it, dropping what is older than [`KEEP`] samples.
    pub fn record(&self, d: &Daena) {
        let s = sample(d);
        let mut q = self.samples.lock();
        if q.len() >= KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// The kept samples and one taken now.
    pub fn view(&self, d: &Daena) -> SeriesView {
        let mut samples: Vec<Sample> = self.samples.lock().iter().cloned().collect();
        samples.push(sample(d));
        SeriesView { interval_secs: INTERVAL_SECS, samples }
    }
}

fn sample(d: &Daena) -> Sample {
    let rates = cas::report::cas(d).rates;
    let costs = cas::report::costs(d).total;
    let [l1, l2, l3] = crate::memory::monitor::tier_p95(d);
    Sample {
        at_ms: d.clock().now().0 / 1000,
        health: crate::health::check(d, false).status,
        cache_exact_hits: rates.exact_hits,
        cache_near_hits: rates.near_hits,
        cache_misses: rates.misses,
        cache_hit_rate: rates.hit_rate,
        l1_p95_ms: l1,
        l2_p95_ms: l2,
        l3_p95_ms: l3,
        error_rate: analytics::fleet_error_rate(d, 5).rate,
        spend_usd: costs.spend_usd,
        saved_usd: costs.saved_usd,
        ledger_size: d.ledger().reader.head().size,
    }
}
