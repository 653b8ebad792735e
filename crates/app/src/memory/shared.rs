//! Memory's shared state: record addresses, row metadata, the L1 cache, counters and the
//! [`MemoryShared`] handle every memory use case runs against.

use super::codec::Plain;
use super::*;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::AppResult;
use crate::keyring::Keyring;
use daena_core::ids::{ClassName, RecordKey, TenantId};
use daena_core::time::Micros;
use daena_store::cold::ColdSegments;
use daena_store::kv::Kv;
use daena_store::overlay::Overlay;
use daena_store::records::{self, RecordRow, Tier, TrustRow};
pub use latency::LatencyWindow;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A record's address. The tenant is always part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addr {
    pub tenant: TenantId,
    pub class: ClassName,
    pub key: RecordKey,
}

impl Addr {
    pub fn table_key(&self) -> Vec<u8> {
        records::address_key(self.tenant.as_str(), self.class.as_str(), self.key.as_str())
    }
}

/// Trust after n distinct confirmations: n / (n + 1) (0.5, 0.67, 0.75, ...).
pub fn trust_score(confirmations: usize) -> f32 {
    confirmations as f32 / (confirmations as f32 + 1.0)
}

/// The system fields of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct RowMeta {
    pub seq: u64,
    pub version: u64,
    pub tier: Tier,
    pub created_at: i64,
    pub updated_at: i64,
    pub content_sha256: [u8; 32],
    pub raw_len: u32,
    pub stored_len: u64,
    pub level: i8,
    pub trust: Option<TrustRow>,
}

impl RowMeta {
    pub fn of(row: &RecordRow) -> RowMeta {
        RowMeta {
            seq: row.seq,
            version: row.version,
            tier: row.tier,
            created_at: row.created_at,
            updated_at: row.updated_at,
            content_sha256: row.content_sha256,
            raw_len: row.raw_len,
            stored_len: row.stored_len(),
            level: row.level,
            trust: row.trust.clone(),
        }
    }
}

/// An L1 entry: the decoded record and its access statistics.
#[derive(Debug)]
pub struct Cached {
    pub meta: RowMeta,
    pub plain: Plain,
    pub(super) last_accessed: AtomicI64,
    pub(super) access_count: AtomicU64,
}

/// L1: decrypted records by table key, bounded in bytes and (through [`L1Weight`]) in
/// entries. quick_cache (S3-FIFO-like, no background or batched maintenance): a hit is a
/// shard read lock and a reference bit, so no read pays for other reads' bookkeeping.
pub type L1 = quick_cache::sync::Cache<Vec<u8>, Arc<Cached>, L1Weight>;

/// An entry weighs its plaintext bytes, and at least one slot (`l1_cache_bytes` ÷
/// `l1_cache_size`), so the byte bound also bounds the count.
#[derive(Debug, Clone, Copy)]
pub struct L1Weight(u64);

impl quick_cache::Weighter<Vec<u8>, Arc<Cached>> for L1Weight {
    fn weight(&self, _key: &Vec<u8>, value: &Arc<Cached>) -> u64 {
        value.weight().max(self.0)
    }
}

impl Cached {
    pub fn new(meta: RowMeta, plain: Plain, last_accessed: i64, access_count: u64) -> Cached {
        Cached { meta, plain, last_accessed: AtomicI64::new(last_accessed), access_count: AtomicU64::new(access_count) }
    }

    pub(super) fn weight(&self) -> u64 {
        (self.plain.payload.len() + self.plain.meta.len() + 256) as u64
    }
}

#[derive(Debug, Default)]
pub struct Latencies {
    pub l1: LatencyWindow,
    pub l2: LatencyWindow,
    pub l3: LatencyWindow,
    pub write: LatencyWindow,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub l1_hits: AtomicU64,
    pub l2_hits: AtomicU64,
    pub l3_hits: AtomicU64,
    pub misses: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub policy_denies: AtomicU64,
    /// Overwrites whose divergence was measured.
    pub overwrites: AtomicU64,
    /// Unintended overwrites diverging at least [`DIVERGENCE_EVENT`] (accepted or refused).
    pub divergence_events: AtomicU64,
    pub divergence_aborts: AtomicU64,
    pub intended_revisions: AtomicU64,
    /// Microseconds the commit thread waited for the settler to finish writing to redb.
    pub settle_wait_micros: AtomicU64,
}

/// The settings document holding the governance counters across restarts.
pub(super) const DURABLE_COUNTERS: &str = "memory_counters";

impl Counters {
    /// The counters kept across restarts (divergence and policy), in a fixed order.
    pub fn durable(&self) -> [u64; 5] {
        [
            self.overwrites.load(Ordering::Relaxed),
            self.divergence_events.load(Ordering::Relaxed),
            self.divergence_aborts.load(Ordering::Relaxed),
            self.intended_revisions.load(Ordering::Relaxed),
            self.policy_denies.load(Ordering::Relaxed),
        ]
    }

    pub(super) fn restore(kv: &Kv) -> AppResult<Counters> {
        let c = Counters::default();
        if let Some(v) = kv.get_doc::<[u64; 5]>(daena_store::kv::SETTINGS, DURABLE_COUNTERS)? {
            c.overwrites.store(v[0], Ordering::Relaxed);
            c.divergence_events.store(v[1], Ordering::Relaxed);
            c.divergence_aborts.store(v[2], Ordering::Relaxed);
            c.intended_revisions.store(v[3], Ordering::Relaxed);
            c.policy_denies.store(v[4], Ordering::Relaxed);
        }
        Ok(c)
    }

    /// The durable counters as the settings document the settler saves and `restore` reads.
    pub(super) fn doc(values: [u64; 5]) -> AppResult<daena_store::kv::DocWrite> {
        Ok((daena_store::kv::SETTINGS, DURABLE_COUNTERS, daena_store::kv::encode_doc(&values)?))
    }
}

/// Divergence below this counts as an edit, not a divergence event.
pub const DIVERGENCE_EVENT: f64 = 0.05;

/// Records, stored bytes and plaintext bytes per (tenant, class, tier).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub records: u64,
    pub stored: u64,
    pub raw: u64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub by: HashMap<(String, String, Tier), Agg>,
}

/// What one row counts for in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    pub tier: Tier,
    pub stored: u64,
    pub raw: u64,
}

impl Footprint {
    pub fn of(row: &RecordRow) -> Footprint {
        Footprint { tier: row.tier, stored: row.stored_len(), raw: u64::from(row.raw_len) }
    }
}

impl Stats {
    pub fn replace(&mut self, addr: &Addr, old: Option<Footprint>, new: Option<Footprint>) {
        let mut bump = |f: Footprint, sign: i64| {
            let a = self.by.entry((addr.tenant.to_string(), addr.class.to_string(), f.tier)).or_default();
            let add = |v: &mut u64, d: u64| *v = if sign > 0 { v.saturating_add(d) } else { v.saturating_sub(d) };
            add(&mut a.records, 1);
            add(&mut a.stored, f.stored);
            add(&mut a.raw, f.raw);
        };
        if let Some(o) = old {
            bump(o, -1);
        }
        if let Some(n) = new {
            bump(n, 1);
        }
    }

    pub fn total(&self) -> Agg {
        self.by.values().fold(Agg::default(), |a, b| Agg {
            records: a.records + b.records,
            stored: a.stored + b.stored,
            raw: a.raw + b.raw,
        })
    }
}

/// Access statistics by record address: (last access µs, reads).
type AccessStats = HashMap<Vec<u8>, (i64, u64)>;

/// State shared by the readers and the commit thread.
pub struct MemoryShared {
    pub kv: Kv,
    pub cold: Box<dyn ColdSegments>,
    pub keyring: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub l1: L1,
    pub(super) stripes: Box<[RwLock<()>]>,
    /// Per stripe, how many times the commit thread changed rows of its records, bumped
    /// after the overlay holds the change. A writer that saw a record absent at generation
    /// `g` knows it is still absent while the stripe stays at `g` (`prepare_put`).
    pub(super) generations: Box<[AtomicU64]>,
    pub stats: Mutex<Stats>,
    pub counters: Counters,
    pub latency: Latencies,
    /// Access statistics not yet written to the `access` table: (last, count).
    pub(super) pending_access: Mutex<HashMap<Vec<u8>, (i64, u64)>>,
    /// Replicas only: access statistics not yet published to the fleet's (aging asks those).
    unpublished_access: Option<Mutex<AccessStats>>,
    /// Rows the commit thread applied but redb does not hold yet (see [`crate::overlay`]),
    /// written by the settler thread every second or 4096 rows.
    pub overlay: Overlay<RecordRow>,
    /// Reads of records while in L3, towards promotion.
    pub(super) l3_reads: Mutex<HashMap<Vec<u8>, u32>>,
    /// (time, records, bytes) samples for the growth rate.
    pub(super) growth: Mutex<VecDeque<(i64, u64, u64)>>,
    /// Trained compression dictionaries per tenant and class.
    pub dicts: dict::Dictionaries,
}

impl std::fmt::Debug for MemoryShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryShared").field("l1_entries", &self.l1.len()).finish()
    }
}

pub(super) const STRIPES: usize = 1024;

impl MemoryShared {
    pub fn open(
        kv: Kv,
        cold: Box<dyn ColdSegments>,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
    ) -> AppResult<Arc<MemoryShared>> {
        let m = &config.memory;
        let slot = (m.l1_cache_bytes / m.l1_cache_size.max(1)).max(1);
        let l1 =
            L1::with_weighter(usize::try_from(m.l1_cache_size).unwrap_or(usize::MAX), m.l1_cache_bytes, L1Weight(slot));
        let dicts = dict::Dictionaries::load(&kv, &keyring)?;
        let counters = Counters::restore(&kv)?;
        let mut stats = Stats::default();
        kv.scan_records(&[], None, |k, row| {
            if let Some((t, c, key)) = records::split_key(k)
                && let (Ok(tenant), Ok(class), Ok(key)) = (TenantId::new(t), ClassName::new(c), RecordKey::new(key))
            {
                stats.replace(&Addr { tenant, class, key }, None, Some(Footprint::of(&row)));
            }
            Ok(true)
        })?;
        let replicated = config.storage.backend == crate::config::StorageBackend::Postgres;
        Ok(Arc::new(MemoryShared {
            kv,
            cold,
            keyring,
            clock,
            config,
            l1,
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stats: Mutex::new(stats),
            counters,
            latency: Latencies::default(),
            pending_access: Mutex::new(HashMap::new()),
            unpublished_access: replicated.then(|| Mutex::new(HashMap::new())),
            l3_reads: Mutex::new(HashMap::new()),
            overlay: Overlay::default(),
            growth: Mutex::new(VecDeque::new()),
            dicts,
        }))
    }

    /// The current row at `key`: the overlay first, then redb.
    pub fn row(&self, key: &[u8]) -> AppResult<Option<RecordRow>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.as_deref().cloned());
        }
        Ok(self.kv.record(key)?)
    }

    /// The generation of `key`'s stripe; load it before reading the record.
    pub(crate) fn generation(&self, key: &[u8]) -> u64 {
        self.generations[self.stripe_of(key)].load(Ordering::Acquire)
    }

    pub(crate) fn bump_generation(&self, stripe: usize) {
        self.generations[stripe].fetch_add(1, Ordering::Release);
    }

    pub(super) fn stripe_of(&self, key: &[u8]) -> usize {
        let h = Sha256::digest(key);
        (usize::from(h[0]) << 8 | usize::from(h[1])) % STRIPES
    }

    /// Records an access and returns the new (last_accessed, access_count).
    pub(super) fn touch(&self, key: &[u8], cached: &Cached) -> (i64, u64) {
        let now = self.clock.now().0;
        cached.last_accessed.store(now, Ordering::Relaxed);
        let count = cached.access_count.fetch_add(1, Ordering::Relaxed) + 1;
        self.pending_access.lock().insert(key.to_vec(), (now, count));
        if let Some(unpublished) = &self.unpublished_access {
            unpublished.lock().insert(key.to_vec(), (now, count));
        }
        (now, count)
    }

    /// Takes the access statistics not yet published to the fleet's (replicas only).
    pub fn take_unpublished_access(&self) -> Vec<(Vec<u8>, (i64, u64))> {
        self.unpublished_access.as_ref().map(|u| u.lock().drain().collect()).unwrap_or_default()
    }

    /// Puts back statistics a publication failed to write, under any taken since.
    pub fn unpublish_access(&self, rows: Vec<(Vec<u8>, (i64, u64))>) {
        if let Some(unpublished) = &self.unpublished_access {
            let mut u = unpublished.lock();
            for (key, (last, count)) in rows {
                let e = u.entry(key).or_insert((last, count));
                *e = (e.0.max(last), e.1.max(count));
            }
        }
    }

    /// Access statistics not yet saved, copied for the settler.
    pub(super) fn unsaved_access(&self) -> HashMap<Vec<u8>, (i64, u64)> {
        self.pending_access.lock().clone()
    }

    /// The settler saved `written`: drop each entry that has not changed since.
    pub(super) fn forget_access(&self, written: &HashMap<Vec<u8>, (i64, u64)>) {
        if !written.is_empty() {
            self.pending_access.lock().retain(|k, v| written.get(k) != Some(v));
        }
    }

    /// Samples the totals for the growth rate (called by the scheduler).
    pub fn sample_growth(&self) {
        let total = self.stats.lock().total();
        let now = self.clock.now().0;
        let mut g = self.growth.lock();
        g.push_back((now, total.records, total.stored));
        while g.front().is_some_and(|(t, _, _)| now - t > 24 * Micros::HOUR) {
            g.pop_front();
        }
    }
}
