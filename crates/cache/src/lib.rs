//! The LLM response cache: content-addressed entries with SimHash near-duplicate matching,
//! in front of an OpenAI-compatible upstream.
//!
//! Entries live in the state store's cache rows (response encrypted in the tenant's
//! envelope), their metadata and the near-duplicate index in memory. Stores and evictions go
//! through the commit thread like every mutation: a `llm.cache_store` entry carries the
//! encrypted response as its body, so replay rebuilds the cache after a crash.

pub mod memo;
pub mod sse;
mod state;
pub mod stats;

pub use state::{CasOp, CasState};

use daena_base::clock::Clock;
use daena_base::config::{Config, Secret};
use daena_base::error::{AppError, AppResult};
use daena_core::cas::NearIndex;
use daena_core::ids::TenantId;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::time::Micros;
use daena_governance::keyring::{Codec, Keyring};
use daena_store::kv::Kv;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Row format 2 adds `client_reported`; rows of format 1 are read too ([`CasRow::decode`]).
pub const ROW_FORMAT: u8 = 2;

/// A cache entry as stored (postcard).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CasRow {
    pub format: u8,
    pub model: String,
    pub scope: u64,
    pub simhash: u64,
    pub guard: u64,
    pub prompt_hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What the upstream call cost (USD), from its usage and the price table.
    pub cost_usd: f64,
    pub agent: Option<String>,
    pub class: Option<String>,
    /// The upstream's response JSON, sealed in the tenant's envelope.
    pub envelope: Vec<u8>,
    /// The usage (and so `cost_usd`) is what a client reported with a cache-aside store,
    /// not what an upstream answered through Daena.
    pub client_reported: bool,
}

/// A cache entry as format 1 stored it.
#[derive(Deserialize)]
struct CasRowV1 {
    format: u8,
    model: String,
    scope: u64,
    simhash: u64,
    guard: u64,
    prompt_hash: [u8; 32],
    created_at: i64,
    expires_at: i64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    agent: Option<String>,
    class: Option<String>,
    envelope: Vec<u8>,
}

impl CasRow {
    /// A stored row of any format this version reads.
    pub fn decode(bytes: &[u8]) -> AppResult<CasRow> {
        let bad = |e: postcard::Error| AppError::internal(format!("cas row: {e}"));
        if bytes.first() != Some(&1) {
            return postcard::from_bytes(bytes).map_err(bad);
        }
        let v1: CasRowV1 = postcard::from_bytes(bytes).map_err(bad)?;
        debug_assert_eq!(v1.format, 1);
        Ok(CasRow {
            format: ROW_FORMAT,
            model: v1.model,
            scope: v1.scope,
            simhash: v1.simhash,
            guard: v1.guard,
            prompt_hash: v1.prompt_hash,
            created_at: v1.created_at,
            expires_at: v1.expires_at,
            prompt_tokens: v1.prompt_tokens,
            completion_tokens: v1.completion_tokens,
            cost_usd: v1.cost_usd,
            agent: v1.agent,
            class: v1.class,
            envelope: v1.envelope,
            client_reported: false,
        })
    }
}

/// An entry's metadata, kept in memory.
#[derive(Debug)]
pub struct CasMeta {
    pub tenant: String,
    pub key: [u8; 32],
    pub model: String,
    pub scope: u64,
    pub simhash: u64,
    pub guard: u64,
    pub prompt_hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: i64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// The usage figures are a client's word (cache-aside store).
    pub client_reported: bool,
    pub bytes: u64,
    pub slot: u32,
    /// Unique to this entry in this process: the key of its decrypted answer in the hot
    /// map, so an answer read for an entry since replaced can never be served for its
    /// successor.
    pub serial: u64,
    pub hits: AtomicU64,
}

pub fn table_key(tenant: &str, key: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 33);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn envelope_address(tenant: &str, key: &[u8; 32]) -> Vec<u8> {
    format!("daena-cas-v1\0{tenant}\0{}", hex::encode(key)).into_bytes()
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<(String, [u8; 32]), Arc<CasMeta>>,
    index: NearIndex,
    by_slot: HashMap<u32, (String, [u8; 32])>,
    /// Per tenant, entries by age, for eviction of the oldest.
    by_age: HashMap<String, BTreeSet<(i64, [u8; 32])>>,
    bytes: u64,
}

/// Bytes of decrypted answers kept for hot hits.
const HOT_BYTES: usize = 64 * 1024 * 1024;

/// A hot answer weighs its bytes and a little for its slot.
#[derive(Debug, Clone, Copy)]
struct HotWeight;

impl quick_cache::Weighter<u64, bytes::Bytes> for HotWeight {
    fn weight(&self, _serial: &u64, answer: &bytes::Bytes) -> u64 {
        answer.len() as u64 + 64
    }
}

/// Cache state shared by request handlers and the commit thread.
pub struct CasShared {
    pub kv: Kv,
    pub keyring: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    inner: RwLock<Inner>,
    /// Rows applied but not yet in redb (None: deleted), keyed by table key.
    pub pending: daena_store::overlay::Overlay<CasRow>,
    pub stats: Mutex<stats::CasStats>,
    pub http: reqwest::Client,
    /// The bearer token sent to the upstream model endpoint (`DAENA_LLM_API_KEY`).
    pub upstream_key: Option<Secret>,
    /// Decrypted answers of recently hit entries by [`CasMeta::serial`], so hot hits skip
    /// redb and AES.
    hot: quick_cache::sync::Cache<u64, bytes::Bytes, HotWeight>,
    serials: AtomicU64,
    /// Request bodies seen by the proxy, with their keys.
    pub memo: memo::BodyMemo,
    /// (day number, "YYYY-MM-DD") of the last cost record.
    day: Mutex<(i64, String)>,
}

impl std::fmt::Debug for CasShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CasShared").field("entries", &self.inner.read().by_key.len()).finish()
    }
}

impl CasShared {
    /// Loads every unexpired entry's metadata and rebuilds the near-duplicate index.
    pub fn open(
        kv: Kv,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        config: Arc<Config>,
        upstream_key: Option<Secret>,
    ) -> AppResult<Arc<CasShared>> {
        // reqwest is built without a bundled TLS provider; `ring` is the one Daena uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(config.llm.timeout_secs))
            .build()
            .map_err(|e| AppError::internal(format!("building the upstream client: {e}")))?;
        let stats = stats::CasStats::load(&kv)?;
        let shared = CasShared {
            kv,
            keyring,
            clock,
            config,
            inner: RwLock::new(Inner::default()),
            pending: daena_store::overlay::Overlay::default(),
            stats: Mutex::new(stats),
            http,
            upstream_key,
            hot: quick_cache::sync::Cache::with_weighter(HOT_BYTES / 1024, HOT_BYTES as u64, HotWeight),
            serials: AtomicU64::new(0),
            memo: memo::BodyMemo::default(),
            day: Mutex::new((-1, String::new())),
        };
        let now = shared.clock.now().0;
        let mut rows = Vec::new();
        shared.kv.scan_cache(|k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        for (k, v) in rows {
            let Some(sep) = k.iter().position(|b| *b == 0) else { continue };
            let (Ok(tenant), Ok(key)) = (std::str::from_utf8(&k[..sep]), <[u8; 32]>::try_from(&k[sep + 1..])) else {
                continue;
            };
            let row = CasRow::decode(&v)?;
            if row.expires_at > now {
                shared.insert_meta(tenant, key, &row);
            }
        }
        Ok(Arc::new(shared))
    }

    fn insert_meta(&self, tenant: &str, key: [u8; 32], row: &CasRow) {
        let mut inner = self.inner.write();
        if let Some(old) = inner.by_key.remove(&(tenant.to_owned(), key)) {
            self.hot.remove(&old.serial);
            Self::forget(&mut inner, &old);
        }
        let slot = inner.index.insert(row.scope, row.simhash);
        let meta = Arc::new(CasMeta {
            tenant: tenant.to_owned(),
            key,
            model: row.model.clone(),
            scope: row.scope,
            simhash: row.simhash,
            guard: row.guard,
            prompt_hash: row.prompt_hash,
            created_at: row.created_at,
            expires_at: row.expires_at,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            cost_usd: row.cost_usd,
            client_reported: row.client_reported,
            bytes: row.envelope.len() as u64,
            slot,
            serial: self.serials.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            hits: AtomicU64::new(0),
        });
        inner.by_slot.insert(slot, (tenant.to_owned(), key));
        inner.by_age.entry(tenant.to_owned()).or_default().insert((row.created_at, key));
        inner.bytes += meta.bytes;
        inner.by_key.insert((tenant.to_owned(), key), meta);
    }

    fn forget(inner: &mut Inner, meta: &CasMeta) {
        inner.index.remove(meta.slot);
        inner.by_slot.remove(&meta.slot);
        if let Some(ages) = inner.by_age.get_mut(&meta.tenant) {
            ages.remove(&(meta.created_at, meta.key));
        }
        inner.bytes = inner.bytes.saturating_sub(meta.bytes);
    }

    fn remove_meta(&self, tenant: &str, key: &[u8; 32]) -> bool {
        let mut inner = self.inner.write();
        match inner.by_key.remove(&(tenant.to_owned(), *key)) {
            Some(meta) => {
                self.hot.remove(&meta.serial);
                Self::forget(&mut inner, &meta);
                true
            }
            None => false,
        }
    }

    /// An unexpired entry of `tenant`.
    pub fn get(&self, tenant: &str, key: &[u8; 32]) -> Option<Arc<CasMeta>> {
        let now = self.clock.now().0;
        self.inner.read().by_key.get(&(tenant.to_owned(), *key)).filter(|m| m.expires_at > now).cloned()
    }

    /// Unexpired near-duplicates of `tenant` in `scope` within `max` bits: (entry, distance).
    pub fn near(&self, tenant: &str, scope: u64, simhash: u64, max: u32) -> Vec<(Arc<CasMeta>, u32)> {
        let now = self.clock.now().0;
        let inner = self.inner.read();
        inner
            .index
            .search(scope, simhash, max)
            .into_iter()
            .filter_map(|(slot, d)| {
                let k = inner.by_slot.get(&slot)?;
                let m = inner.by_key.get(k)?;
                (m.tenant == tenant && m.expires_at > now).then(|| (m.clone(), d))
            })
            .collect()
    }

    /// Today's date (UTC) as `YYYY-MM-DD`, formatted once a day.
    pub fn today(&self) -> String {
        let now = self.clock.now();
        let n = now.0.div_euclid(Micros::DAY);
        let mut day = self.day.lock();
        if day.0 != n {
            *day = (n, daena_base::clock::rfc3339(now).chars().take(10).collect());
        }
        day.1.clone()
    }

    /// The stored answer of an entry as JSON text.
    pub fn response_bytes(&self, meta: &CasMeta) -> AppResult<bytes::Bytes> {
        if let Some(b) = self.hot.get(&meta.serial) {
            return Ok(b);
        }
        let b = bytes::Bytes::from(self.decrypt(meta)?);
        self.hot.insert(meta.serial, b.clone());
        Ok(b)
    }

    /// The stored response of an entry, decrypted and parsed.
    pub fn response(&self, meta: &CasMeta) -> AppResult<Value> {
        serde_json::from_slice(&self.response_bytes(meta)?)
            .map_err(|e| AppError::internal(format!("cached response is not JSON: {e}")))
    }

    fn row(&self, meta: &CasMeta) -> AppResult<Arc<CasRow>> {
        let tk = table_key(&meta.tenant, &meta.key);
        let row = match self.pending.get(&tk) {
            Some(Some(row)) => Some(row.clone()),
            Some(None) => None,
            None => self.kv.cache_row(&tk)?.map(|bytes| CasRow::decode(&bytes).map(Arc::new)).transpose()?,
        };
        row.ok_or_else(|| AppError::not_found("the cache entry is gone"))
    }

    fn decrypt(&self, meta: &CasMeta) -> AppResult<Vec<u8>> {
        let row = self.row(meta)?;
        let tenant = TenantId::new(&meta.tenant)?;
        let (_, plain) = self.keyring.open(&tenant, &envelope_address(&meta.tenant, &meta.key), &row.envelope)?;
        Ok(plain)
    }

    /// The entry's row with its answer sealed again under the tenant's current data key, when
    /// it is sealed under an older version still held (`None`: current already, or under a
    /// shredded version nothing can open).
    pub fn resealed(&self, meta: &CasMeta) -> AppResult<Option<CasRow>> {
        let row = self.row(meta)?;
        let (_, version) = daena_governance::keyring::parse_header(&row.envelope)?;
        if !self.keyring.older_and_held(&meta.tenant, version) {
            return Ok(None);
        }
        let tenant = TenantId::new(&meta.tenant)?;
        let address = envelope_address(&meta.tenant, &meta.key);
        let (_, plain) = self.keyring.open(&tenant, &address, &row.envelope)?;
        let envelope = self.keyring.seal(&tenant, &address, Codec::Raw, &plain)?;
        Ok(Some(CasRow { envelope, ..(*row).clone() }))
    }

    /// Seals a response for storage.
    pub fn seal(&self, tenant: &TenantId, key: &[u8; 32], response: &Value) -> AppResult<Vec<u8>> {
        let text = serde_json::to_vec(response).map_err(|e| AppError::internal(e.to_string()))?;
        self.keyring.seal(tenant, &envelope_address(tenant.as_str(), key), Codec::Raw, &text)
    }

    /// (entries, bytes) overall and per tenant.
    pub fn sizes(&self) -> (usize, u64, HashMap<String, usize>) {
        let inner = self.inner.read();
        let per = inner.by_age.iter().map(|(t, s)| (t.clone(), s.len())).collect();
        (inner.by_key.len(), inner.bytes, per)
    }

    /// Every entry's metadata (diagnostics).
    pub fn all(&self) -> Vec<Arc<CasMeta>> {
        self.inner.read().by_key.values().cloned().collect()
    }

    /// Whether the entry is held, expired or not.
    fn contains(&self, tenant: &str, key: &[u8; 32]) -> bool {
        self.inner.read().by_key.contains_key(&(tenant.to_owned(), *key))
    }

    /// Entries of `tenant`.
    fn tenant_len(&self, tenant: &str) -> usize {
        self.inner.read().by_age.get(tenant).map_or(0, |a| a.len())
    }

    /// The `n` oldest entries of `tenant`, passing over those in `skip`.
    fn oldest(&self, tenant: &str, n: usize, skip: &HashSet<[u8; 32]>) -> Vec<[u8; 32]> {
        if n == 0 {
            return Vec::new();
        }
        let inner = self.inner.read();
        let Some(ages) = inner.by_age.get(tenant) else { return Vec::new() };
        ages.iter().map(|(_, k)| *k).filter(|k| !skip.contains(k)).take(n).collect()
    }
}

/// The TTL of `tenant`'s entries, in microseconds.
pub fn ttl_micros(config: &Config, tenant: &TenantId) -> i64 {
    let cas = &config.memory.cas;
    let days = cas.tenants.get(tenant).and_then(|t| t.ttl_days).unwrap_or(cas.ttl_days);
    (days * Micros::DAY as f64) as i64
}
