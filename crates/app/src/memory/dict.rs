//! Trained zstd dictionaries per tenant and class, for small records.
//!
//! Small JSON records compress poorly alone (a 250-byte chat turn barely shrinks), because
//! each frame starts with no history. A dictionary trained on the tenant's own records of a
//! class gives every frame that history: on the generated corpus of `benches/compression.rs`
//! it roughly doubles the ratio of records under 1 KiB.
//!
//! - Sampling: sealing a record of at most [`MAX_SAMPLE`] bytes for a (tenant, class) with no
//!   dictionary keeps a copy of its plaintext in memory (bounded per pair and in pairs).
//! - Training (`train_due`, every minute from the scheduler): a pair with [`MIN_SAMPLES`]
//!   samples gets a [`DICT_BYTES`] dictionary trained on 80% of them, kept only when it
//!   compresses the other 20% to at most [`KEEP_IF`] of their size without it. A pair whose
//!   dictionary is not worth it is not sampled again until the next start.
//! - A kept dictionary is sealed under the tenant's data key (it holds fragments of records)
//!   and goes through the commit thread as `memory.dict`, the sealed bytes as the entry body:
//!   state, snapshots and replay all see it before any record that uses it.
//! - Frames name their dictionary by the id zstd writes into the frame header, so the envelope
//!   is unchanged; opening a frame looks the id up among the (tenant, class) dictionaries.
//!   Dictionaries are never deleted: old records keep theirs.
//!
//! Crypto-shredding a tenant makes its dictionaries unreadable with its records.

use crate::error::{AppError, AppResult};
use crate::keyring::{Codec, Keyring};
use daena_core::ids::TenantId;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use zeroize::Zeroizing;
use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

// Dictionary rows: tenant ‖ 0 ‖ class ‖ 0 ‖ dictionary id (u32 BE) → created_at µs (i64 BE)
// ‖ sealed dictionary.

/// Records larger than this are compressed without a dictionary and not sampled.
pub const MAX_SAMPLE: usize = 4096;
/// Samples needed before a pair is trained.
pub const MIN_SAMPLES: usize = 256;
const MAX_SAMPLES: usize = 1024;
const MAX_SAMPLE_BYTES: usize = 1 << 20;
/// (tenant, class) pairs sampled at once.
const MAX_PAIRS: usize = 256;
pub const DICT_BYTES: usize = 16 * 1024;
/// Kept only if the held-out samples compress to at most this share of their dictionary-less size.
pub const KEEP_IF: f64 = 0.85;

type Pair = (String, String);

pub struct Dict {
    pub id: u32,
    pub created_at: i64,
    pub bytes: usize,
    raw: Zeroizing<Vec<u8>>,
    ddict: DDict<'static>,
    cdicts: Mutex<Vec<(i32, Arc<CDict<'static>>)>>,
}

impl Dict {
    fn new(raw: Vec<u8>, created_at: i64) -> AppResult<Dict> {
        let id = zstd::zstd_safe::get_dict_id_from_dict(&raw)
            .ok_or_else(|| AppError::internal("not a zstd dictionary"))?
            .get();
        let ddict = DDict::try_create(&raw).ok_or_else(|| AppError::internal("zstd: cannot load a dictionary"))?;
        Ok(Dict { id, created_at, bytes: raw.len(), raw: Zeroizing::new(raw), ddict, cdicts: Mutex::new(Vec::new()) })
    }

    fn cdict(&self, level: i32) -> AppResult<Arc<CDict<'static>>> {
        let mut all = self.cdicts.lock();
        if let Some((_, c)) = all.iter().find(|(l, _)| *l == level) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            CDict::try_create(&self.raw, level)
                .ok_or_else(|| AppError::internal("zstd: cannot prepare a dictionary"))?,
        );
        all.push((level, c.clone()));
        Ok(c)
    }
}

#[derive(Default)]
struct Samples {
    items: Vec<Zeroizing<Vec<u8>>>,
    bytes: usize,
}

#[derive(Default)]
pub struct Dictionaries {
    /// The newest dictionary of each pair, used for new records.
    active: RwLock<HashMap<Pair, Arc<Dict>>>,
    by_id: RwLock<HashMap<(String, String, u32), Arc<Dict>>>,
    samples: Mutex<HashMap<Pair, Samples>>,
    /// Pairs whose trained dictionary was not worth keeping (until the next start).
    declined: Mutex<std::collections::HashSet<Pair>>,
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionaries").field("dictionaries", &self.by_id.read().len()).finish()
    }
}

/// A dictionary's row in the state store: (key, value).
fn row(tenant: &str, class: &str, id: u32, created_at: i64, sealed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut value = created_at.to_be_bytes().to_vec();
    value.extend_from_slice(sealed);
    (table_key(tenant, class, id), value)
}

/// The row a `memory.dict` entry's body (`sealed`: the id in clear, then the envelope) leaves
/// in the state store.
pub(crate) fn sealed_row(tenant: &str, class: &str, created_at: i64, sealed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    row(tenant, class, sealed_id(sealed), created_at, sealed)
}

/// The id a sealed dictionary carries in clear before its envelope (0 when it is too short).
fn sealed_id(sealed: &[u8]) -> u32 {
    sealed.get(..4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
}

fn table_key(tenant: &str, class: &str, id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + class.len() + 6);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// (tenant, class) of a row key made by [`table_key`].
fn split_key(k: &[u8]) -> Option<(&str, &str)> {
    let mut parts = k.splitn(3, |b| *b == 0);
    let (t, c) = (parts.next()?, parts.next()?);
    Some((std::str::from_utf8(t).ok()?, std::str::from_utf8(c).ok()?))
}

/// The associated data binding a sealed dictionary to its place.
fn address(tenant: &str, class: &str, id: u32) -> Vec<u8> {
    let mut a = b"daena-dict\0".to_vec();
    a.extend_from_slice(&table_key(tenant, class, id));
    a
}

thread_local! {
    static CCTX: std::cell::RefCell<Option<CCtx<'static>>> = const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<DCtx<'static>>> = const { std::cell::RefCell::new(None) };
}

impl Dictionaries {
    /// Loads every stored dictionary the keyring can open (a shredded tenant's cannot).
    pub fn load(kv: &daena_store::kv::Kv, keyring: &Keyring) -> AppResult<Dictionaries> {
        let dicts = Dictionaries::default();
        kv.scan_dicts(|k, v| {
            let Some((tenant, class)) = split_key(k) else { return Ok(()) };
            if let Err(e) = dicts.register_sealed(keyring, tenant, class, v) {
                tracing::debug!(tenant, class, error = %e.message, "a dictionary does not open");
            }
            Ok(())
        })?;
        Ok(dicts)
    }

    /// Opens a stored value (created_at ‖ sealed dictionary) and makes it available.
    fn register_sealed(&self, keyring: &Keyring, tenant: &str, class: &str, value: &[u8]) -> AppResult<Arc<Dict>> {
        let (stamp, sealed) =
            value.split_at_checked(8).ok_or_else(|| AppError::internal("dictionary row too short"))?;
        let created_at = i64::from_be_bytes(stamp.try_into().unwrap_or_default());
        let t = TenantId::new(tenant)?;
        let dict = self.open_sealed(keyring, &t, class, created_at, sealed)?;
        self.register(tenant, class, dict.clone());
        Ok(dict)
    }

    fn open_sealed(
        &self,
        keyring: &Keyring,
        tenant: &TenantId,
        class: &str,
        created_at: i64,
        sealed: &[u8],
    ) -> AppResult<Arc<Dict>> {
        // The id is in clear before the envelope so that the address can be rebuilt.
        let (id, envelope) = sealed.split_at_checked(4).ok_or_else(|| AppError::internal("dictionary too short"))?;
        let id = u32::from_be_bytes(id.try_into().unwrap_or_default());
        let (_, raw) = keyring.open(tenant, &address(tenant.as_str(), class, id), envelope)?;
        let dict = Dict::new(raw, created_at)?;
        if dict.id != id {
            return Err(AppError::internal("a dictionary's id does not match its row"));
        }
        Ok(Arc::new(dict))
    }

    fn register(&self, tenant: &str, class: &str, dict: Arc<Dict>) {
        let pair = (tenant.to_owned(), class.to_owned());
        self.by_id.write().insert((tenant.to_owned(), class.to_owned(), dict.id), dict.clone());
        let mut active = self.active.write();
        if active.get(&pair).is_none_or(|a| a.created_at <= dict.created_at) {
            active.insert(pair.clone(), dict);
        }
        self.samples.lock().remove(&pair);
    }

    /// Installs a `memory.dict` entry's body (on the commit thread, and when replaying).
    pub fn install(
        &self,
        kv: &daena_store::kv::Kv,
        keyring: &Keyring,
        tenant: &TenantId,
        class: &str,
        created_at: i64,
        sealed: &[u8],
    ) -> AppResult<u32> {
        let dict = match self.open_sealed(keyring, tenant, class, created_at, sealed) {
            Ok(d) => d,
            // A shredded tenant's dictionary (or one whose data key this state lacks): kept
            // sealed, as its records are; reading a record that needs it says so.
            Err(e) => {
                tracing::warn!(tenant = %tenant, class, error = %e.message, "a compression dictionary does not open");
                let id = sealed_id(sealed);
                self.write_row(kv, tenant.as_str(), class, id, created_at, sealed)?;
                return Ok(id);
            }
        };
        self.write_row(kv, tenant.as_str(), class, dict.id, created_at, sealed)?;
        let id = dict.id;
        self.register(tenant.as_str(), class, dict);
        Ok(id)
    }

    fn write_row(
        &self,
        kv: &daena_store::kv::Kv,
        tenant: &str,
        class: &str,
        id: u32,
        created_at: i64,
        sealed: &[u8],
    ) -> AppResult<()> {
        let (key, value) = row(tenant, class, id, created_at, sealed);
        Ok(kv.put_dict(&key, &value)?)
    }

    /// Forgets a shredded tenant's dictionaries and samples (their rows stay, sealed).
    pub fn forget_tenant(&self, tenant: &str) {
        self.active.write().retain(|(t, _), _| t != tenant);
        self.by_id.write().retain(|(t, _, _), _| t != tenant);
        self.samples.lock().retain(|(t, _), _| t != tenant);
    }

    /// (tenant, class, id, bytes) of every dictionary loaded, sorted.
    pub fn list(&self) -> Vec<(String, String, u32, usize)> {
        let mut out: Vec<_> =
            self.by_id.read().iter().map(|((t, c, id), d)| (t.clone(), c.clone(), *id, d.bytes)).collect();
        out.sort();
        out
    }

    /// Compresses a record's plaintext, with the pair's dictionary when it has one and the
    /// record is small; otherwise samples it for training.
    pub fn compress(&self, tenant: &str, class: &str, raw: &[u8], level: i32) -> AppResult<Option<Vec<u8>>> {
        if raw.len() > MAX_SAMPLE {
            return Ok(None);
        }
        let pair = (tenant.to_owned(), class.to_owned());
        let dict = self.active.read().get(&pair).cloned();
        match dict {
            Some(d) => {
                let cdict = d.cdict(level)?;
                compress_with(&cdict, raw).map(Some)
            }
            None => {
                self.sample(pair, raw);
                Ok(None)
            }
        }
    }

    fn sample(&self, pair: Pair, raw: &[u8]) {
        if self.declined.lock().contains(&pair) {
            return;
        }
        let mut all = self.samples.lock();
        if !all.contains_key(&pair) && all.len() >= MAX_PAIRS {
            return;
        }
        let s = all.entry(pair).or_default();
        if s.items.len() < MAX_SAMPLES && s.bytes + raw.len() <= MAX_SAMPLE_BYTES {
            s.bytes += raw.len();
            s.items.push(Zeroizing::new(raw.to_vec()));
        }
    }

    /// Decompresses a frame that names a dictionary of this pair.
    pub fn decompress(&self, tenant: &str, class: &str, id: u32, frame: &[u8], size: usize) -> AppResult<Vec<u8>> {
        let dict = self.by_id.read().get(&(tenant.to_owned(), class.to_owned(), id)).cloned().ok_or_else(|| {
            AppError::internal(format!("record compressed with dictionary {id}, which this state does not hold"))
        })?;
        let mut out = Vec::with_capacity(size);
        DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(DCtx::try_create().ok_or_else(|| AppError::internal("zstd: no context"))?),
            };
            dctx.decompress_using_ddict(&mut out, frame, &dict.ddict)
                .map_err(|code| AppError::internal(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))))
        })?;
        Ok(out)
    }

    /// Pairs with enough samples, and their samples (taken out).
    fn due(&self) -> Vec<(Pair, Vec<Zeroizing<Vec<u8>>>)> {
        let mut all = self.samples.lock();
        let ready: Vec<Pair> =
            all.iter().filter(|(_, s)| s.items.len() >= MIN_SAMPLES).map(|(p, _)| p.clone()).collect();
        ready.into_iter().filter_map(|p| all.remove(&p).map(|s| (p, s.items))).collect()
    }

    fn decline(&self, pair: Pair) {
        self.declined.lock().insert(pair);
    }
}

fn compress_with(cdict: &CDict<'static>, raw: &[u8]) -> AppResult<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cctx = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(CCtx::try_create().ok_or_else(|| AppError::internal("zstd: no context"))?),
        };
        cctx.compress_using_cdict(&mut out, raw, cdict)
            .map_err(|code| AppError::internal(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))))
    })?;
    Ok(out)
}

/// What one training did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trained {
    pub tenant: String,
    pub class: String,
    pub samples: usize,
    /// Held-out bytes compressed without and with the dictionary.
    pub without: usize,
    pub with: usize,
    pub kept: Option<u32>,
}

/// Trains a dictionary for every pair with enough samples and keeps those worth it (see the
/// module); called by the scheduler every minute.
pub async fn train_due(d: &crate::Daena) -> AppResult<Vec<Trained>> {
    let mut out = Vec::new();
    for ((tenant, class), samples) in d.memory().dicts.due() {
        let level = d
            .config()
            .memory
            .class(&daena_core::ids::ClassName::new(&class)?)
            .zstd_level
            .unwrap_or(d.config().memory.zstd_level);
        let n = samples.len();
        let trained = tokio::task::spawn_blocking(move || evaluate(&samples, level))
            .await
            .map_err(|e| AppError::internal(format!("training task: {e}")))?;
        let Some((raw, without, with)) = trained else {
            d.memory().dicts.decline((tenant.clone(), class.clone()));
            out.push(Trained { tenant, class, samples: n, without: 0, with: 0, kept: None });
            continue;
        };
        if (with as f64) > KEEP_IF * without as f64 {
            tracing::info!(%tenant, %class, without, with, "a trained dictionary is not worth keeping");
            d.memory().dicts.decline((tenant.clone(), class.clone()));
            out.push(Trained { tenant, class, samples: n, without, with, kept: None });
            continue;
        }
        let t = TenantId::new(&tenant)?;
        let id = zstd::zstd_safe::get_dict_id_from_dict(&raw).map_or(0, |i| i.get());
        let mut sealed = id.to_be_bytes().to_vec();
        sealed.extend_from_slice(&d.memory().keyring.seal(&t, &address(&tenant, &class, id), Codec::Raw, &raw)?);
        let op = super::state::MemoryOp::Dict {
            tenant: t,
            class: class.clone(),
            sealed,
            attrs: serde_json::json!({
                "class": class, "dict_id": id, "bytes": raw.len(), "samples": n, "created_at": d.clock().now().0,
                "heldout_bytes_without": without, "heldout_bytes_with": with,
            }),
        };
        d.commit().submit(crate::state::Op::from(op)).await?;
        tracing::info!(%tenant, %class, id, without, with, "trained a compression dictionary");
        out.push(Trained { tenant, class, samples: n, without, with, kept: Some(id) });
    }
    Ok(out)
}

/// Seals again, under the tenant's current data key, every dictionary sealed under an older
/// version that this process holds open, through the commit thread (`memory.dict` with the
/// same id and creation time), so that the older version can be retired. Returns (resealed,
/// still under an older version afterwards).
pub async fn reseal_stale(d: &crate::Daena) -> AppResult<(u64, u64)> {
    let keyring = &d.memory().keyring;
    let mut stale = Vec::new();
    d.memory().kv.scan_dicts(|k, v| {
        let Some((tenant, class)) = split_key(k) else { return Ok(()) };
        let (Some(stamp), Some(id), Some(envelope)) = (v.get(..8), v.get(8..12), v.get(12..)) else { return Ok(()) };
        let Ok((_, version)) = crate::keyring::parse_header(envelope) else { return Ok(()) };
        if keyring.older_and_held(tenant, version) {
            let id = u32::from_be_bytes(id.try_into().unwrap_or_default());
            let created_at = i64::from_be_bytes(stamp.try_into().unwrap_or_default());
            stale.push((tenant.to_owned(), class.to_owned(), id, created_at));
        }
        Ok(())
    })?;
    let (mut resealed, mut left) = (0, 0);
    for (tenant, class, id, created_at) in stale {
        let held = d.memory().dicts.by_id.read().get(&(tenant.clone(), class.clone(), id)).cloned();
        let Some(dict) = held else {
            tracing::warn!(%tenant, %class, id, "a dictionary under an older data key is not loaded; left as it is");
            left += 1;
            continue;
        };
        let t = TenantId::new(&tenant)?;
        let mut sealed = id.to_be_bytes().to_vec();
        sealed.extend_from_slice(&keyring.seal(&t, &address(&tenant, &class, id), Codec::Raw, &dict.raw)?);
        let attrs = serde_json::json!({
            "class": class, "dict_id": id, "bytes": dict.bytes, "created_at": created_at, "resealed": true,
        });
        let op = super::state::MemoryOp::Dict { tenant: t, class, sealed, attrs };
        d.commit().submit(crate::state::Op::from(op)).await?;
        resealed += 1;
    }
    Ok((resealed, left))
}

/// Trains on 80% of the samples and measures the other 20%: (dictionary, bytes without, with).
fn evaluate(samples: &[Zeroizing<Vec<u8>>], level: i32) -> Option<(Vec<u8>, usize, usize)> {
    let cut = samples.len() * 4 / 5;
    let (train, held) = samples.split_at(cut);
    let train: Vec<&[u8]> = train.iter().map(|s| s.as_slice()).collect();
    let raw = match zstd::dict::from_samples(&train, DICT_BYTES) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "dictionary training failed");
            return None;
        }
    };
    let dict = Dict::new(raw, 0).ok()?;
    let cdict = dict.cdict(level).ok()?;
    let (mut without, mut with) = (0usize, 0usize);
    for s in held {
        let plain = zstd::bulk::compress(s, level).ok()?.len().min(s.len());
        without += plain;
        with += compress_with(&cdict, s).ok()?.len().min(s.len());
    }
    Some((dict.raw.to_vec(), without, with))
}
