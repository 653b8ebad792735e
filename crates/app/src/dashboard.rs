//! The operator dashboard's history: every minute, one sample of the figures its charts
//! draw (health, cache hit rates, tier latencies, error rate, spend and savings, ledger size),
//! the last 24 hours kept in memory and saved every few minutes (and at shutdown), so a
//! restart keeps the history. The live panels read the service's own endpoints; this is only
//! what they cannot: the past.
//!
//! Replicas keep one history for the fleet in PostgreSQL: the lease holder takes the sample
//! each minute (the cache, cost and error figures in it are the fleet's already; health and
//! tier latencies are the lease holder's) and adds it to the shared series, and every replica
//! serves that series, so a dashboard behind a load balancer sees one past.

use crate::error::AppResult;
use crate::health::HealthStatus;
use crate::{Daena, analytics, cas};
use daena_store::kv::{DocTable, Kv, decode_doc, doc_table, encode_doc};
use daena_store::pg::PgDocs;
use daena_store::state::DocStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERIES: DocTable = doc_table("dashboard_series");
/// Where this process keeps its history (left out of a seed).
pub(crate) const LOCAL: DocTable = SERIES;
/// How often the samples are saved (and at shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(300);
/// How long a replica reuses the shared series it read.
const SHARED_FRESH: Duration = Duration::from_secs(10);

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
    /// This process's samples, or the shared series as last read.
    samples: Mutex<VecDeque<Sample>>,
    saved: Mutex<Option<Instant>>,
    kv: Kv,
    /// Replicas: the shared series, and when this replica last read it.
    shared: Option<(Arc<PgDocs>, Mutex<Option<Instant>>)>,
}

impl Series {
    /// The samples saved by the last run, if any; with `shared` (replicas), the fleet's series
    /// in PostgreSQL instead.
    pub fn load(kv: Kv, shared: Option<Arc<PgDocs>>) -> AppResult<Series> {
        let mut samples: VecDeque<Sample> = match shared {
            Some(_) => VecDeque::new(),
            None => kv.get_doc::<VecDeque<Sample>>(SERIES, "samples")?.unwrap_or_default(),
        };
        while samples.len() > KEEP {
            samples.pop_front();
        }
        let shared = shared.map(|docs| (docs, Mutex::new(None)));
        Ok(Series { samples: Mutex::new(samples), saved: Mutex::new(None), kv, shared })
    }

    /// Saves the samples when the last save is older than [`SAVE_EVERY`], or now with `force`
    /// (the shared series is written with each sample instead).
    pub fn save(&self, force: bool) -> AppResult<()> {
        if self.shared.is_some() {
            return Ok(());
        }
        let mut saved = self.saved.lock();
        if !force && saved.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        let samples = self.samples.lock().clone();
        self.kv.put_doc(SERIES, "samples", &samples)?;
        *saved = Some(Instant::now());
        Ok(())
    }

    /// Takes a sample now and keeps it (replicas: on the lease holder only, in the shared
    /// series), dropping what is older than [`KEEP`] samples.
    pub fn record(&self, d: &Daena) {
        if self.shared.is_some() && !d.leads() {
            return;
        }
        if let Err(e) = self.push(sample(d)) {
            tracing::warn!(error = %e, "keeping the dashboard's sample failed");
        }
    }

    /// Keeps `sample`, dropping what is older than [`KEEP`] samples.
    fn push(&self, sample: Sample) -> AppResult<()> {
        let add = |q: &mut VecDeque<Sample>| {
            while q.len() >= KEEP {
                q.pop_front();
            }
            q.push_back(sample.clone());
        };
        let Some((docs, read)) = &self.shared else {
            add(&mut self.samples.lock());
            return Ok(());
        };
        // Read, add, and swap: a lease holder taking over at that moment cannot make either
        // sample vanish.
        for _ in 0..3 {
            let (before, mut q) = read_shared(docs)?;
            add(&mut q);
            if docs.swap_doc(SERIES, "samples", before.as_deref(), &encode_doc(&q)?)? {
                *self.samples.lock() = q;
                *read.lock() = Some(Instant::now());
                return Ok(());
            }
        }
        Err(crate::error::AppError::unavailable("the shared dashboard series kept changing; the sample was dropped"))
    }

    /// The kept samples (replicas: the shared series, read at most [`SHARED_FRESH`] ago).
    fn samples(&self) -> Vec<Sample> {
        if let Some((docs, read)) = &self.shared {
            let mut read = read.lock();
            if read.is_none_or(|at| at.elapsed() >= SHARED_FRESH) {
                match read_shared(docs) {
                    Ok((_, q)) => {
                        *self.samples.lock() = q;
                        *read = Some(Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the shared dashboard series failed"),
                }
            }
        }
        self.samples.lock().iter().cloned().collect()
    }

    /// The kept samples and one taken now.
    pub fn view(&self, d: &Daena) -> SeriesView {
        let mut samples = self.samples();
        samples.push(sample(d));
        SeriesView { interval_secs: INTERVAL_SECS, samples }
    }
}

/// The shared series as stored (the bytes a swap expects) and decoded.
fn read_shared(docs: &PgDocs) -> Result<(Option<Vec<u8>>, VecDeque<Sample>), daena_store::StoreError> {
    let stored = docs.get_doc(SERIES, "samples")?;
    let samples = match &stored {
        Some(bytes) => decode_doc(SERIES, "samples", bytes)?,
        None => VecDeque::new(),
    };
    Ok((stored, samples))
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

#[cfg(test)]
mod tests {
    use super::*;
    use daena_store::pg::{self, TestDatabase};

    fn at(minute: i64) -> Sample {
        Sample {
            at_ms: minute * 60_000,
            health: HealthStatus::Healthy,
            cache_exact_hits: minute as u64,
            cache_near_hits: 0,
            cache_misses: 0,
            cache_hit_rate: 1.0,
            l1_p95_ms: None,
            l2_p95_ms: None,
            l3_p95_ms: None,
            error_rate: 0.0,
            spend_usd: 0.0,
            saved_usd: 0.0,
            ledger_size: 0,
        }
    }

    fn minutes(series: &Series) -> Vec<i64> {
        series.samples().iter().map(|s| s.at_ms / 60_000).collect()
    }

    #[test]
    fn replicas_keep_one_history() {
        let db = TestDatabase::create();
        pg::migrate(&db.url).expect("migrate");
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = Kv::open(&dir.path().join("state.redb"), 1 << 20).expect("kv");
        let replica = || {
            let docs = Arc::new(PgDocs::open(&db.url).expect("docs"));
            Series::load(kv.clone(), Some(docs)).expect("load")
        };
        let (a, b) = (replica(), replica());
        a.push(at(1)).expect("push");
        assert_eq!(minutes(&b), [1], "b serves what a sampled");
        // The lease moved to b: it adds to the same history.
        b.push(at(2)).expect("push");
        assert_eq!(minutes(&replica()), [1, 2], "a replica started now sees the whole history");
        assert_eq!(kv.get_doc::<VecDeque<Sample>>(SERIES, "samples").expect("get").map(|q| q.len()), None);
    }
}
