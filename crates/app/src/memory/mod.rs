//! Memory: records addressed by (tenant, class, key) in three tiers.
//!
//! Writes are sealed (compressed, encrypted) here, then go through the commit thread, which
//! ledgers them before they are acknowledged and applies them to L2 (or L2Q) and L1. Reads go
//! L1 → L2 → L3. ABAC is checked on every read, write, delete and list; denials are ledgered.
//! Quarantined classes land in L2Q until distinct agents confirm them (or a reviewer
//! promotes them); overwrites are measured for divergence and refused above a class's
//! threshold unless marked as an intended revision.

pub mod aging;
pub mod codec;
pub mod dict;
pub mod latency;
pub mod monitor;
pub use latency::LatencyWindow;
mod settle;
pub mod state;

use crate::Daena;
use crate::auth::Principal;
use crate::clock::{Clock, rfc3339};
use crate::commit::Op;
use crate::config::Config;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::keyring::Keyring;
use crate::policy::Action;
use codec::Plain;
use daena_core::auth::Role;
use daena_core::ids::{ClassName, RecordKey, TenantId};
use daena_core::ledger::NewEntry;
use daena_core::time::Micros;
use daena_store::cold::ColdStore;
use daena_store::kv::Kv;
use daena_store::overlay::Overlay;
use daena_store::records::{self, RecordRow, RowBody, Tier, TrustRow};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use state::{MemoryOp, Put};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

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
    last_accessed: AtomicI64,
    access_count: AtomicU64,
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

    fn weight(&self) -> u64 {
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
const DURABLE_COUNTERS: &str = "memory_counters";

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

    fn restore(kv: &Kv) -> AppResult<Counters> {
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
    fn doc(values: [u64; 5]) -> AppResult<daena_store::kv::DocWrite> {
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

/// State shared by the readers and the commit thread.
pub struct MemoryShared {
    pub kv: Kv,
    pub cold: ColdStore,
    pub keyring: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub l1: L1,
    stripes: Box<[RwLock<()>]>,
    /// Per stripe, how many times the commit thread changed rows of its records, bumped
    /// after the overlay holds the change. A writer that saw a record absent at generation
    /// `g` knows it is still absent while the stripe stays at `g` (`prepare_put`).
    generations: Box<[AtomicU64]>,
    pub stats: Mutex<Stats>,
    pub counters: Counters,
    pub latency: Latencies,
    /// Access statistics not yet written to the `access` table: (last, count).
    pending_access: Mutex<HashMap<Vec<u8>, (i64, u64)>>,
    /// Rows the commit thread applied but redb does not hold yet (see [`crate::overlay`]),
    /// written by the settler thread every second or 4096 rows.
    pub overlay: Overlay<RecordRow>,
    /// Reads of records while in L3, towards promotion.
    l3_reads: Mutex<HashMap<Vec<u8>, u32>>,
    /// (time, records, bytes) samples for the growth rate.
    growth: Mutex<VecDeque<(i64, u64, u64)>>,
    /// Trained compression dictionaries per tenant and class.
    pub dicts: dict::Dictionaries,
}

impl std::fmt::Debug for MemoryShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryShared").field("l1_entries", &self.l1.len()).finish()
    }
}

const STRIPES: usize = 1024;

impl MemoryShared {
    pub fn open(
        kv: Kv,
        cold: ColdStore,
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

    fn stripe_of(&self, key: &[u8]) -> usize {
        let h = Sha256::digest(key);
        (usize::from(h[0]) << 8 | usize::from(h[1])) % STRIPES
    }

    /// Records an access and returns the new (last_accessed, access_count).
    fn touch(&self, key: &[u8], cached: &Cached) -> (i64, u64) {
        let now = self.clock.now().0;
        cached.last_accessed.store(now, Ordering::Relaxed);
        let count = cached.access_count.fetch_add(1, Ordering::Relaxed) + 1;
        self.pending_access.lock().insert(key.to_vec(), (now, count));
        (now, count)
    }

    /// Access statistics not yet saved, copied for the settler.
    fn unsaved_access(&self) -> HashMap<Vec<u8>, (i64, u64)> {
        self.pending_access.lock().clone()
    }

    /// The settler saved `written`: drop each entry that has not changed since.
    fn forget_access(&self, written: &HashMap<Vec<u8>, (i64, u64)>) {
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

/// The caller's agent identity: the `X-Agent-ID` header (which a key bound to an agent
/// may only set to that agent), else the bound agent or the key's name.
pub fn agent_of(who: &Principal, header: Option<&str>) -> AppResult<String> {
    who.acting_agent(header)
}

fn check_policy(d: &Daena, who: &Principal, addr_class: &ClassName, reference: &str, action: Action) -> AppResult<()> {
    let decision = d.policy.decide(who, addr_class, action);
    if decision.allowed {
        return Ok(());
    }
    d.memory.counters.policy_denies.fetch_add(1, Ordering::Relaxed);
    let entry = NewEntry::new(who.tenant().as_str(), who.actor(), "policy.deny", reference).attrs(json!({
        "class": addr_class, "action": action.as_str(), "rules": decision.rules, "reason": decision.reason,
        "roles": crate::policy::Subject::of(who).roles,
    }));
    d.commit.append_detached(vec![entry]);
    Err(AppError::new(
        ErrorCode::PolicyDenied,
        format!("{} on class {addr_class} denied: {}", action.as_str(), decision.reason),
    )
    .with_details(json!({"rules": decision.rules, "class": addr_class, "action": action.as_str()})))
}

fn writes_enabled(d: &Daena) -> AppResult<()> {
    if d.writes_enabled() {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorCode::WritesDisabled,
            "the service is read-only (DAENA_NBMF_ENABLED=false or `daena writes off`); reads continue",
        ))
    }
}

/// A record as `GET` returns it.
#[derive(Debug, Clone)]
pub struct RecordView {
    pub addr: Addr,
    pub meta: RowMeta,
    pub plain: Plain,
    pub last_accessed: i64,
    pub access_count: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrustView {
    pub quarantined: bool,
    pub score: f32,
    pub confirmations: Vec<String>,
    pub promote_threshold: f64,
}

/// System fields as JSON (everything but payload and meta).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemFields {
    pub tenant: String,
    pub class: String,
    pub key: String,
    pub version: u64,
    /// `L1` when served from the hot cache, else where the record lives: `L2`, `L2Q`, `L3`.
    pub tier: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_accessed: Option<String>,
    pub access_count: u64,
    pub content_sha256: String,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    /// The ledger entry of the last change.
    pub seq: u64,
    pub trust: TrustView,
}

fn system_fields(
    addr: &Addr,
    meta: &RowMeta,
    served: &str,
    last_accessed: i64,
    access_count: u64,
    threshold: f64,
) -> SystemFields {
    SystemFields {
        tenant: addr.tenant.to_string(),
        class: addr.class.to_string(),
        key: addr.key.to_string(),
        version: meta.version,
        tier: served.to_owned(),
        created_at: rfc3339(Micros(meta.created_at)),
        updated_at: rfc3339(Micros(meta.updated_at)),
        last_accessed: (last_accessed > 0).then(|| rfc3339(Micros(last_accessed))),
        access_count,
        content_sha256: hex::encode(meta.content_sha256),
        size_bytes: u64::from(meta.raw_len),
        stored_bytes: meta.stored_len,
        seq: meta.seq,
        trust: TrustView {
            quarantined: meta.tier == Tier::L2Q,
            score: meta.trust.as_ref().map_or(1.0, |t| t.score),
            confirmations: meta.trust.as_ref().map(|t| t.confirmations.clone()).unwrap_or_default(),
            promote_threshold: threshold,
        },
    }
}

/// The response body of `GET`: the system fields of [`SystemFields`], in its order, then
/// `payload` and `meta` spliced in as the stored JSON text. Written directly, with no
/// intermediate strings: it is on every read (`record_json_is_system_fields_serialized`
/// holds it to the serialized struct).
pub fn record_json(view: &RecordView, served: &str, threshold: f64) -> Vec<u8> {
    use daena_core::canonical::write_str;
    use std::fmt::Write;
    fn name(out: &mut String, name: &str) {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
    }
    let (addr, meta, plain) = (&view.addr, &view.meta, &view.plain);
    let mut out = String::with_capacity(480 + plain.payload.len() + plain.meta.len());
    out.push_str("{\"tenant\":");
    write_str(addr.tenant.as_str(), &mut out);
    name(&mut out, "class");
    write_str(addr.class.as_str(), &mut out);
    name(&mut out, "key");
    write_str(addr.key.as_str(), &mut out);
    name(&mut out, "version");
    let _ = write!(out, "{}", meta.version);
    name(&mut out, "tier");
    write_str(served, &mut out);
    name(&mut out, "created_at");
    write_str(&rfc3339(Micros(meta.created_at)), &mut out);
    name(&mut out, "updated_at");
    write_str(&rfc3339(Micros(meta.updated_at)), &mut out);
    name(&mut out, "last_accessed");
    if view.last_accessed > 0 {
        write_str(&rfc3339(Micros(view.last_accessed)), &mut out);
    } else {
        out.push_str("null");
    }
    name(&mut out, "access_count");
    let _ = write!(out, "{}", view.access_count);
    name(&mut out, "content_sha256");
    let mut hex = [0u8; 64];
    if hex::encode_to_slice(meta.content_sha256, &mut hex).is_ok() {
        write_str(std::str::from_utf8(&hex).unwrap_or_default(), &mut out);
    }
    name(&mut out, "size_bytes");
    let _ = write!(out, "{}", meta.raw_len);
    name(&mut out, "stored_bytes");
    let _ = write!(out, "{}", meta.stored_len);
    name(&mut out, "seq");
    let _ = write!(out, "{}", meta.seq);
    out.push_str(",\"trust\":{\"quarantined\":");
    out.push_str(if meta.tier == Tier::L2Q { "true" } else { "false" });
    name(&mut out, "score");
    // serde_json's own float text (f32 and f64 print differently).
    out.push_str(&serde_json::to_string(&meta.trust.as_ref().map_or(1.0, |t| t.score)).unwrap_or_default());
    name(&mut out, "confirmations");
    out.push('[');
    for (i, agent) in meta.trust.iter().flat_map(|t| &t.confirmations).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(agent, &mut out);
    }
    out.push(']');
    name(&mut out, "promote_threshold");
    out.push_str(&serde_json::to_string(&threshold).unwrap_or_default());
    out.push('}');
    name(&mut out, "payload");
    out.push_str(&plain.payload);
    name(&mut out, "meta");
    out.push_str(&plain.meta);
    out.push('}');
    out.into_bytes()
}

/// Reads a record: L1, else L2/L2Q, else L3. Returns the view and the tier it came from.
pub fn get(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<(RecordView, &'static str)> {
    let start = Instant::now();
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Read)?;
    let m = &d.memory;
    let k = addr.table_key();
    if let Some(c) = m.l1.get(&k) {
        let (last, count) = m.touch(&k, &c);
        m.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l1.record(start.elapsed().as_secs_f64() * 1e3);
        maybe_reheat(d, &addr, &c.meta, &k);
        return Ok((
            RecordView { addr, meta: c.meta.clone(), plain: c.plain.clone(), last_accessed: last, access_count: count },
            "L1",
        ));
    }
    let cached = {
        let _stripe = m.stripes[m.stripe_of(&k)].read();
        match m.l1.get(&k) {
            Some(c) => c,
            None => {
                let Some(row) = m.row(&k)? else {
                    m.counters.misses.fetch_add(1, Ordering::Relaxed);
                    return Err(AppError::not_found(format!("no record {class}/{key}")));
                };
                let envelope = match &row.body {
                    RowBody::Inline(b) => b.clone(),
                    RowBody::Cold { segment, offset, len } => m.cold.read(*segment, *offset, *len)?,
                };
                let plain = codec::open(m, &addr.tenant, class, key, &envelope)?;
                let (last, count) = match m.pending_access.lock().get(&k).copied() {
                    Some(v) => v,
                    None => m.kv.access(&k)?.unwrap_or((0, 0)),
                };
                // Reads from before this record was created were of an earlier record at this
                // address, deleted since; its statistics may not be cleared yet.
                let (last, count) = if last < row.created_at { (0, 0) } else { (last, count) };
                let c = Arc::new(Cached::new(RowMeta::of(&row), plain, last, count));
                m.l1.insert(k.clone(), c.clone());
                c
            }
        }
    };
    let (last, count) = m.touch(&k, &cached);
    let tier = cached.meta.tier;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if tier == Tier::L3 {
        m.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l3.record(ms);
    } else {
        m.counters.l2_hits.fetch_add(1, Ordering::Relaxed);
        m.latency.l2.record(ms);
    }
    maybe_reheat(d, &addr, &cached.meta, &k);
    Ok((
        RecordView {
            addr,
            meta: cached.meta.clone(),
            plain: cached.plain.clone(),
            last_accessed: last,
            access_count: count,
        },
        tier.as_str(),
    ))
}

/// Counts a read of an L3 record and moves it back to L2 after `promote_after_accesses`.
fn maybe_reheat(d: &Daena, addr: &Addr, meta: &RowMeta, key: &[u8]) {
    if meta.tier != Tier::L3 || !d.writes_enabled() {
        return;
    }
    let reads = {
        let mut l3 = d.memory.l3_reads.lock();
        let n = l3.entry(key.to_vec()).or_default();
        *n += 1;
        *n
    };
    if reads < d.config.memory.promote_after_accesses {
        return;
    }
    d.memory.l3_reads.lock().remove(key);
    let op = MemoryOp::Reheat { addr: addr.clone(), expect_seq: meta.seq, reads };
    let commit = d.commit.clone();
    tokio::spawn(async move {
        if let Err(e) = commit.submit(Op::Memory(Box::new(op))).await
            && e.code != ErrorCode::VersionConflict
        {
            tracing::warn!(error = %e.message, "moving a record back from L3 failed");
        }
    });
}

/// A write request.
#[derive(Debug, Clone)]
pub struct PutRequest {
    pub class: String,
    pub key: String,
    pub payload: Value,
    pub meta: Option<Value>,
    pub if_match: Option<u64>,
    pub intended_revision: bool,
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WriteResult {
    pub created: bool,
    /// Divergence from the previous version (overwrites only).
    pub divergence: Option<f64>,
    #[serde(flatten)]
    pub record: SystemFields,
}

/// Writes a record (create or overwrite); acknowledged once its ledger entry is durable.
pub async fn put(d: &Daena, who: &Principal, req: PutRequest) -> AppResult<WriteResult> {
    let start = Instant::now();
    let addr =
        Addr { tenant: who.tenant().clone(), class: ClassName::new(&req.class)?, key: RecordKey::new(&req.key)? };
    let reference = format!("{}/{}", addr.class, addr.key);
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &reference, Action::Write)?;
    let meta = match req.meta {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(AppError::invalid("meta must be a JSON object")),
    };
    let payload_text = serde_json::to_string(&req.payload).map_err(|e| AppError::invalid(e.to_string()))?;
    let max = d.config.memory.max_payload_bytes;
    if payload_text.len() > max {
        return Err(AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("payload is {} bytes; memory.max_payload_bytes is {max}", payload_text.len()),
        ));
    }
    let meta_text = serde_json::to_string(&meta).map_err(|e| AppError::invalid(e.to_string()))?;
    let writer = agent_of(who, req.agent.as_deref())?;
    let class_cfg = d.config.memory.class(&addr.class);
    let level = class_cfg.zstd_level.unwrap_or(d.config.memory.zstd_level);
    let quarantine = d.config.memory.trust.require_quarantine.contains(&addr.class);
    let canonical = daena_core::canonical::to_string(&req.payload);
    let content_sha256: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    // The ledger carries a keyed hash of the payload, not its SHA-256 (crypto::content_mac).
    let (mac_version, mac) = d.keyring.content_mac(&addr.tenant, canonical.as_bytes())?;
    let content_mac = format!("{mac_version}:{}", hex::encode(mac));
    let plain = Plain { payload: Arc::from(payload_text.as_str()), meta: Arc::from(meta_text.as_str()) };
    // Small records are sealed on the request's thread (tens of microseconds); large ones on
    // the blocking pool so they do not stall other requests.
    let (envelope, raw_len) = if payload_text.len() + meta_text.len() < 64 * 1024 {
        codec::seal(&d.memory, &addr.tenant, addr.class.as_str(), addr.key.as_str(), &plain, level)?
    } else {
        let m = d.memory.clone();
        let (tenant, class, key, sealed_plain) =
            (addr.tenant.clone(), addr.class.to_string(), addr.key.to_string(), plain.clone());
        tokio::task::spawn_blocking(move || codec::seal(&m, &tenant, &class, &key, &sealed_plain, level))
            .await
            .map_err(|e| AppError::internal(format!("seal task: {e}")))??
    };

    let table_key = addr.table_key();
    for _attempt in 0..5 {
        let generation = d.memory.generation(&table_key);
        // What is there now, to measure divergence against.
        let current = match get_current(d, &addr, &table_key) {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let divergence = match &current {
            Some((_, old)) => {
                let old: Value = serde_json::from_str(&old.payload).unwrap_or(Value::Null);
                Some(daena_core::divergence::divergence(&old, &req.payload))
            }
            None => None,
        };
        if let Some(div) = divergence {
            let c = &d.memory.counters;
            c.overwrites.fetch_add(1, Ordering::Relaxed);
            if req.intended_revision {
                c.intended_revisions.fetch_add(1, Ordering::Relaxed);
            } else if div >= DIVERGENCE_EVENT {
                c.divergence_events.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(limit) = class_cfg.divergence_abort
                && div >= limit
                && !req.intended_revision
            {
                c.divergence_aborts.fetch_add(1, Ordering::Relaxed);
                let entry = NewEntry::new(addr.tenant.as_str(), who.actor(), "memory.divergence_abort", &reference)
                    .attrs(json!({
                        "class": addr.class, "key": addr.key, "divergence": (div * 10_000.0).round() / 10_000.0,
                        "threshold": limit, "current_version": current.as_ref().map(|(v, _)| *v),
                    }));
                d.commit.append(vec![entry]).await?;
                return Err(AppError::new(
                    ErrorCode::DivergenceAbort,
                    format!(
                        "this overwrite of {reference} diverges {div:.3} from the current version, at or above the \
                         {} threshold {limit}; send it with \"intended_revision\": true if the change is intended",
                        addr.class
                    ),
                )
                .with_details(json!({"divergence": div, "threshold": limit})));
            }
        }
        let op = Put {
            addr: addr.clone(),
            actor: who.actor(),
            writer: writer.clone(),
            writer_key: who.key_id().to_owned(),
            envelope: envelope.clone(),
            raw_len,
            level: i8::try_from(level).unwrap_or(i8::MAX),
            content_sha256,
            content_mac: content_mac.clone(),
            payload_bytes: payload_text.len(),
            if_match: req.if_match,
            observed: current.as_ref().map(|(v, _)| *v),
            absent_at: current.is_none().then_some(generation),
            quarantine,
            divergence,
            intended: req.intended_revision,
            result: Arc::new(std::sync::OnceLock::new()),
        };
        let result = op.result.clone();
        match d.commit.submit(Op::Memory(Box::new(MemoryOp::Put(Box::new(op))))).await {
            Ok(receipts) => {
                d.memory.counters.writes.fetch_add(1, Ordering::Relaxed);
                d.memory.latency.write.record(start.elapsed().as_secs_f64() * 1e3);
                let mut meta =
                    result.get().cloned().ok_or_else(|| AppError::internal("the commit did not report the row"))?;
                meta.seq = receipts.first().map_or(0, |r| r.seq);
                let threshold = d.config.memory.trust.promote_threshold;
                let tier = meta.tier.as_str();
                return Ok(WriteResult {
                    created: current.is_none(),
                    divergence,
                    record: system_fields(&addr, &meta, tier, 0, 0, threshold),
                });
            }
            Err(e) if e.details.as_ref().and_then(|v| v.get("retry")).and_then(Value::as_bool) == Some(true) => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(AppError::new(ErrorCode::VersionConflict, "the record kept changing while this write was prepared; retry"))
}

/// Reads a record by its table key as the local operator of its tenant, for the offline
/// tools that walk every record (archives, drills, key validation); errors name the record.
pub fn get_stored(d: &Daena, table_key: &[u8]) -> AppResult<RecordView> {
    let (t, c, k) = records::split_key(table_key).ok_or_else(|| {
        AppError::internal(format!("a record address is malformed: {:?}", String::from_utf8_lossy(table_key)))
    })?;
    let who = Principal::local_operator(TenantId::new(t)?);
    get(d, &who, c, k)
        .map(|(view, _)| view)
        .map_err(|e| AppError { message: format!("{t}/{c}/{k}: {}", e.message), ..e })
}

/// The current (version, body) of the record at `addr` (`table_key`), from L1 or L2/L3.
fn get_current(d: &Daena, addr: &Addr, table_key: &[u8]) -> AppResult<Option<(u64, Plain)>> {
    if let Some(c) = d.memory.l1.get(table_key) {
        return Ok(Some((c.meta.version, c.plain.clone())));
    }
    let Some(row) = d.memory.row(table_key)? else { return Ok(None) };
    let envelope = match &row.body {
        RowBody::Inline(b) => b.clone(),
        RowBody::Cold { segment, offset, len } => d.memory.cold.read(*segment, *offset, *len)?,
    };
    let plain = codec::open(&d.memory, &addr.tenant, addr.class.as_str(), addr.key.as_str(), &envelope)?;
    Ok(Some((row.version, plain)))
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeleteResult {
    pub deleted: bool,
    pub class: String,
    pub key: String,
    pub seq: u64,
}

async fn remove(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    if_match: Option<u64>,
    action: &'static str,
    policy: Action,
) -> AppResult<DeleteResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), policy)?;
    let op = MemoryOp::Delete { addr, actor: who.actor(), if_match, action };
    let receipts = d.commit.submit(Op::Memory(Box::new(op))).await?;
    d.memory.counters.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(DeleteResult {
        deleted: true,
        class: class.to_owned(),
        key: key.to_owned(),
        seq: receipts.first().map_or(0, |r| r.seq),
    })
}

pub async fn delete(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    if_match: Option<u64>,
) -> AppResult<DeleteResult> {
    remove(d, who, class, key, if_match, "memory.delete", Action::Delete).await
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrustResult {
    pub class: String,
    pub key: String,
    pub tier: String,
    pub quarantined: bool,
    pub score: f32,
    pub confirmations: Vec<String>,
    pub promoted: bool,
    pub seq: u64,
}

async fn trust_result(d: &Daena, addr: &Addr, seq: u64) -> AppResult<TrustResult> {
    let row = d.memory.row(&addr.table_key())?.ok_or_else(|| AppError::not_found("the record is gone"))?;
    let trust = row.trust.clone().unwrap_or(TrustRow { writer: String::new(), confirmations: Vec::new(), score: 1.0 });
    Ok(TrustResult {
        class: addr.class.to_string(),
        key: addr.key.to_string(),
        tier: row.tier.as_str().to_owned(),
        quarantined: row.tier == Tier::L2Q,
        score: trust.score,
        confirmations: trust.confirmations,
        promoted: row.tier != Tier::L2Q,
        seq,
    })
}

/// A distinct agent confirms a quarantined record; enough confirmations promote it.
pub async fn confirm(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    agent: Option<&str>,
) -> AppResult<TrustResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Write)?;
    let agent = agent_of(who, agent)?;
    let threshold = d.config.memory.trust.promote_threshold as f32;
    let op =
        MemoryOp::Confirm { addr: addr.clone(), actor: who.actor(), agent, by: who.key_id().to_owned(), threshold };
    let receipts = d.commit.submit(Op::Memory(Box::new(op))).await?;
    trust_result(d, &addr, receipts.first().map_or(0, |r| r.seq)).await
}

/// Reviewers (ops keys or keys with the ABAC role `trust.reviewer`) may promote or reject.
fn require_reviewer(who: &Principal) -> AppResult<()> {
    if who.role() == Role::Ops || who.attributes().roles.iter().any(|r| r == "trust.reviewer") {
        Ok(())
    } else {
        Err(AppError::forbidden("promoting or rejecting needs an ops key or the ABAC role trust.reviewer"))
    }
}

pub async fn promote(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<TrustResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    require_reviewer(who)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Write)?;
    let receipts =
        d.commit.submit(Op::Memory(Box::new(MemoryOp::Promote { addr: addr.clone(), actor: who.actor() }))).await?;
    trust_result(d, &addr, receipts.first().map_or(0, |r| r.seq)).await
}

pub async fn reject(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<DeleteResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    require_reviewer(who)?;
    let row = d.memory.row(&addr.table_key())?;
    if row.as_ref().is_some_and(|r| r.tier != Tier::L2Q) {
        return Err(AppError::invalid(format!("{class}/{key} is not in quarantine; delete it instead")));
    }
    remove(d, who, class, key, None, "memory.reject", Action::Write).await
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub class: Option<String>,
    pub prefix: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ListItem {
    pub class: String,
    pub key: String,
    pub version: u64,
    pub tier: String,
    pub updated_at: String,
    pub size_bytes: u64,
    pub content_sha256: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ListPage {
    pub items: Vec<ListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Lists the caller tenant's records (system fields only), in key order.
pub async fn list(d: &Daena, who: &Principal, q: ListQuery) -> AppResult<ListPage> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(AppError::invalid("limit must be 1..=1000"));
    }
    let class = q.class.as_deref().map(ClassName::new).transpose()?;
    if q.prefix.is_some() && class.is_none() {
        return Err(AppError::invalid("prefix needs class"));
    }
    if let Some(c) = &class {
        check_policy(d, who, c, &format!("{c}/*"), Action::List)?;
    }
    let mut prefix = records::tenant_prefix(who.tenant().as_str());
    if let Some(c) = &class {
        prefix.extend_from_slice(c.as_str().as_bytes());
        prefix.push(0);
        if let Some(p) = &q.prefix {
            prefix.extend_from_slice(p.as_bytes());
        }
    }
    let after = match &q.cursor {
        Some(c) => Some(hex::decode(c).map_err(|_| AppError::invalid("cursor is not one this API returned"))?),
        None => None,
    };
    if after.as_ref().is_some_and(|a| !a.starts_with(&prefix[..who.tenant().as_str().len() + 1])) {
        return Err(AppError::invalid("cursor is not one this API returned"));
    }
    // Rows written in the last moments may still be in the overlay; put them in redb first.
    d.commit.settle().await?;
    let mut items = Vec::new();
    let mut next = None;
    let mut allowed: HashMap<String, bool> = HashMap::new();
    d.memory.kv.scan_records(&prefix, after.as_deref(), |k, row| {
        let Some((_, c, key)) = records::split_key(k) else { return Ok(true) };
        let ok = *allowed.entry(c.to_owned()).or_insert_with(|| {
            ClassName::new(c).map(|cn| d.policy.decide(who, &cn, Action::List).allowed).unwrap_or(false)
        });
        if !ok {
            return Ok(true);
        }
        if items.len() == limit {
            next = Some(hex::encode(k));
            return Ok(false);
        }
        items.push(ListItem {
            class: c.to_owned(),
            key: key.to_owned(),
            version: row.version,
            tier: row.tier.as_str().to_owned(),
            updated_at: rfc3339(Micros(row.updated_at)),
            size_bytes: u64::from(row.raw_len),
            content_sha256: hex::encode(row.content_sha256),
        });
        Ok(true)
    })?;
    // `next` names the first key of the next page; the scan resumes after the last item.
    let next_cursor =
        next.and(items.last().map(|i| hex::encode(records::address_key(who.tenant().as_str(), &i.class, &i.key))));
    Ok(ListPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the serialized [`SystemFields`] with payload and meta spliced in.
    fn serialized(view: &RecordView, served: &str, threshold: f64) -> String {
        let fields = system_fields(&view.addr, &view.meta, served, view.last_accessed, view.access_count, threshold);
        let mut out = serde_json::to_string(&fields).expect("fields serialize");
        out.pop();
        format!("{out},\"payload\":{},\"meta\":{}}}", view.plain.payload, view.plain.meta)
    }

    #[test]
    fn record_json_is_system_fields_serialized() {
        let view = |tier, trust, last_accessed, payload: &str| RecordView {
            addr: Addr {
                tenant: TenantId::new("acme").expect("tenant"),
                class: ClassName::new("legal").expect("class"),
                key: RecordKey::new("contracts/2027-q1.v2").expect("key"),
            },
            meta: RowMeta {
                seq: 912,
                version: 7,
                tier,
                created_at: 1_764_302_400_123_456,
                updated_at: 1_764_302_401_000_000,
                content_sha256: [0xa7; 32],
                raw_len: 311,
                stored_len: 187,
                level: 3,
                trust,
            },
            plain: Plain { payload: payload.into(), meta: r#"{"agent":"legal_scout"}"#.into() },
            last_accessed,
            access_count: 42,
        };
        let trusted = Some(TrustRow {
            writer: "legal_scout".into(),
            confirmations: vec!["legal_synth".into(), "odd \"name\"\u{1}".into()],
            score: 0.1,
        });
        let cases = [
            view(Tier::L2, None, 0, "{}"),
            view(Tier::L2Q, trusted.clone(), 1_764_302_402_000_001, r#"{"text":"é \u2028 \"q\""}"#),
            view(Tier::L3, trusted, -5, "[1,2.5,null]"),
        ];
        for v in &cases {
            for (served, threshold) in [("L1", 0.8), ("L2", 1.0), ("L3", 0.3333333333333333)] {
                let ours = String::from_utf8(record_json(v, served, threshold)).expect("utf-8");
                assert_eq!(ours, serialized(v, served, threshold));
                serde_json::from_str::<Value>(&ours).expect("valid JSON");
            }
        }
    }
}
