//! Encryption at rest: the master key, per-tenant data keys wrapped by it, and the
//! AES-256-GCM envelope every record body (and every memory ledger body) is sealed in.
//!
//! Envelope, format 1:
//!
//! ```text
//! "DN" | 0x01 | codec (0 raw, 1 zstd) | key version (u32 BE) | nonce (12) | ciphertext ‖ tag (16)
//! ```
//!
//! The associated data is the 8 header bytes followed by the record address
//! (`daena-record-v1\0tenant\0class\0key`), so a body cannot be moved to another address or
//! tenant, nor its header altered, without failing authentication. The key version names the
//! tenant's data key; data keys are wrapped (AES-256-GCM) by the master key, whose id (not the
//! key) is stored with them so a wrong master key is refused at start before anything is
//! written. Key material never reaches logs, errors, the ledger or output.

pub use crate::master::*;
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use daena_base::error::{AppError, AppResult, ErrorCode};
use daena_core::ids::TenantId;
use daena_core::time::Micros;
use daena_store::kv::{DocTable, Kv, doc_table};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
pub use wrap::{check_master, merge_missing_data_keys, rewrap_file};
use wrap::{decode_doc, rewrap_docs, unwrap_all, wrap_one};
use zeroize::Zeroizing;

pub(crate) const DATA_KEYS: DocTable = doc_table("data_keys");
const MAGIC: &[u8; 2] = b"DN";
const FORMAT: u8 = 1;
pub const HEADER: usize = 8;
const NONCE: usize = 12;

/// What the body inside an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// The key store at a glance; ids and dates only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyStatus {
    pub master_key_id: String,
    /// `DAENA_MEMORY_AES_KEY` or the key file's path.
    pub master_key_source: String,
    pub tenants_with_data_keys: usize,
    pub data_keys: usize,
    pub oldest_data_key_created_at: Option<String>,
    pub oldest_data_key_age_days: f64,
    /// Master key rotations done (`daena key rotate`), and when the newest was.
    pub rotations: u64,
    pub last_rotation_at: Option<String>,
    /// Days the current master key has been in use: since the newest rotation, else since the
    /// oldest data key.
    pub master_key_age_days: f64,
}

/// A tenant data key as stored: wrapped by a master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WrappedKey {
    pub(crate) version: u32,
    pub(crate) master_key_id: String,
    /// nonce ‖ ciphertext ‖ tag, base64.
    pub(crate) wrapped: String,
    pub(crate) created_at: Micros,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TenantKeyDoc {
    pub(crate) current: u32,
    pub(crate) keys: Vec<WrappedKey>,
    /// Versions up to this one were crypto-shredded (0: none).
    #[serde(default)]
    pub(crate) shredded_through: u32,
}

struct TenantKeys {
    current: u32,
    ciphers: BTreeMap<u32, Arc<Aes256Gcm>>,
    /// Per version, the key of the content MACs the ledger carries ([`Keyring::content_mac`]).
    macs: BTreeMap<u32, Arc<Zeroizing<[u8; 32]>>>,
}

/// The content-MAC key of a data key: a keyed hash of a record's payload, in the ledger in
/// place of a bare SHA-256, says nothing once the data key is shredded.
fn mac_key(raw: &[u8]) -> Arc<Zeroizing<[u8; 32]>> {
    use sha2::Digest;
    let digest: [u8; 32] =
        sha2::Sha256::new().chain_update(b"daena-content-mac-v1\0").chain_update(raw).finalize().into();
    Arc::new(Zeroizing::new(digest))
}

/// The keyring: the master key and every tenant's unwrapped data keys.
pub struct Keyring {
    /// Swapped by a rotation, under `create`.
    master: RwLock<Arc<MasterKey>>,
    clock: Arc<dyn daena_base::clock::Clock>,
    kv: Kv,
    tenants: RwLock<HashMap<String, TenantKeys>>,
    create: Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &*self.master.read())
            .field("tenants", &self.tenants.read().len())
            .finish()
    }
}

impl Keyring {
    /// The stored documents of the tenants' data keys, still wrapped under the master key:
    /// what a copy of the state needs to open its records when the keys are kept apart from
    /// it (replicas share them in PostgreSQL).
    pub fn wrapped_docs(&self) -> AppResult<Vec<(DocTable, String, Vec<u8>)>> {
        Ok(self.kv.scan_doc_bytes(DATA_KEYS)?.into_iter().map(|(tenant, doc)| (DATA_KEYS, tenant, doc)).collect())
    }

    /// Unwraps every tenant data key; fails when they were wrapped by another master key.
    pub fn load(kv: Kv, master: MasterKey, clock: Arc<dyn daena_base::clock::Clock>) -> AppResult<Keyring> {
        let tenants = unwrap_all(kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?, &master)?;
        Ok(Keyring {
            master: RwLock::new(Arc::new(master)),
            clock,
            kv,
            tenants: RwLock::new(tenants),
            create: Mutex::new(()),
        })
    }

    pub fn master_id(&self) -> String {
        self.master.read().id.clone()
    }

    pub fn master_source(&self) -> String {
        self.master.read().source.clone()
    }

    /// Wraps every tenant data key under `new` in one transaction and makes `new` the master
    /// key from then on. New tenants wait meanwhile; reads and writes go on, as the data keys
    /// themselves do not change. Returns (tenants, data keys).
    pub fn rewrap(&self, new: MasterKey, dry_run: bool) -> AppResult<(usize, usize)> {
        let _guard = self.create.lock();
        let old = self.master.read().clone();
        let docs = rewrap_docs(self.kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?, &old, &new)?;
        let counts = (docs.len(), docs.iter().map(|(_, d)| d.keys.len()).sum());
        if !dry_run {
            self.kv.put_docs(DATA_KEYS, &docs)?;
            *self.master.write() = Arc::new(new);
        }
        Ok(counts)
    }

    /// The highest data key version `tenant` has had (0: none), and the highest shredded.
    pub fn versions(&self, tenant: &str) -> AppResult<(u32, u32)> {
        Ok(self.kv.get_doc::<TenantKeyDoc>(DATA_KEYS, tenant)?.map_or((0, 0), |d| {
            (d.keys.iter().map(|k| k.version).max().unwrap_or(0).max(d.current), d.shredded_through)
        }))
    }

    /// How many of `tenant`'s stored data keys have a version up to `through`.
    pub fn count_through(&self, tenant: &str, through: u32) -> AppResult<usize> {
        Ok(self
            .kv
            .get_doc::<TenantKeyDoc>(DATA_KEYS, tenant)?
            .map_or(0, |d| d.keys.iter().filter(|k| k.version <= through).count()))
    }

    /// Crypto-shreds `tenant`'s data keys up to version `through`: they are deleted, leaving
    /// a tombstone with the highest version destroyed so a later key never reuses one, and
    /// their ciphers are dropped (zeroized). Keys made after the shred survive, so applying
    /// the same shred again (replay, rollback) destroys nothing new. Returns how many data
    /// keys were destroyed.
    pub fn shred_through(&self, tenant: &str, through: u32) -> AppResult<usize> {
        let _guard = self.create.lock();
        let Some(mut doc) = self.kv.get_doc::<TenantKeyDoc>(DATA_KEYS, tenant)? else {
            if through > 0 {
                let doc = TenantKeyDoc { current: through, keys: Vec::new(), shredded_through: through };
                self.kv.put_doc(DATA_KEYS, tenant, &doc)?;
            }
            return Ok(0);
        };
        let before = doc.keys.len();
        doc.keys.retain(|k| k.version > through);
        let destroyed = before - doc.keys.len();
        if destroyed == 0 && doc.shredded_through >= through {
            return Ok(0);
        }
        doc.shredded_through = doc.shredded_through.max(through);
        doc.current = doc.keys.iter().map(|k| k.version).max().unwrap_or(doc.shredded_through);
        self.kv.put_doc(DATA_KEYS, tenant, &doc)?;
        let mut tenants = self.tenants.write();
        if let Some(t) = tenants.get_mut(tenant) {
            t.ciphers.retain(|v, _| *v > through);
            t.macs.retain(|v, _| *v > through);
            match t.ciphers.keys().max() {
                Some(&top) => t.current = top,
                None => {
                    tenants.remove(tenant);
                }
            }
        }
        Ok(destroyed)
    }

    /// Retires `tenant`'s data keys older than `below` (at most its current version) once
    /// nothing is sealed under them any more: they are deleted and their ciphers dropped.
    /// Applying it again destroys nothing new. Returns how many data keys were destroyed.
    pub fn retire_below(&self, tenant: &str, below: u32) -> AppResult<usize> {
        let _guard = self.create.lock();
        let Some(mut doc) = self.kv.get_doc::<TenantKeyDoc>(DATA_KEYS, tenant)? else { return Ok(0) };
        let below = below.min(doc.current);
        let before = doc.keys.len();
        doc.keys.retain(|k| k.version >= below);
        let destroyed = before - doc.keys.len();
        if destroyed > 0 {
            self.kv.put_doc(DATA_KEYS, tenant, &doc)?;
        }
        if let Some(t) = self.tenants.write().get_mut(tenant) {
            t.ciphers.retain(|v, _| *v >= below);
            t.macs.retain(|v, _| *v >= below);
        }
        Ok(destroyed)
    }

    /// Per tenant still holding data keys older than its current one: (tenant, current
    /// version, how many older keys).
    pub fn older_versions(&self) -> AppResult<Vec<(String, u32, usize)>> {
        Ok(self
            .kv
            .scan_docs::<TenantKeyDoc>(DATA_KEYS)?
            .into_iter()
            .filter_map(|(t, d)| {
                let older = d.keys.iter().filter(|k| k.version < d.current).count();
                (older > 0).then_some((t, d.current, older))
            })
            .collect())
    }

    /// Whether `tenant`'s data key `version` is at hand (not shredded).
    pub fn has_version(&self, tenant: &str, version: u32) -> bool {
        self.tenants.read().get(tenant).is_some_and(|t| t.ciphers.contains_key(&version))
    }

    /// Whether data sealed under `version` is under an older version of `tenant`'s keys that
    /// is still held: to be sealed again before that version can be retired (data under a
    /// shredded version stays as it is, nothing can open it).
    pub fn older_and_held(&self, tenant: &str, version: u32) -> bool {
        self.current_version(tenant).is_some_and(|c| version < c) && self.has_version(tenant, version)
    }

    /// The version new records of `tenant` are sealed with, if it has a key.
    pub fn current_version(&self, tenant: &str) -> Option<u32> {
        self.tenants.read().get(tenant).filter(|t| t.ciphers.contains_key(&t.current)).map(|t| t.current)
    }

    /// Gives every tenant a new data key version (wrapped under the current master key), used
    /// for new records from now on; older versions stay for reading until their records are
    /// sealed again. Returns how many tenants got one.
    pub fn new_data_key_versions(&self) -> AppResult<usize> {
        let _guard = self.create.lock();
        let master = self.master.read().clone();
        let mut docs = self.kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?;
        docs.retain(|(_, d)| !d.keys.is_empty());
        let mut fresh = Vec::with_capacity(docs.len());
        for (tenant, doc) in &mut docs {
            let version =
                doc.keys.iter().map(|k| k.version).max().unwrap_or(0).max(doc.current).max(doc.shredded_through) + 1;
            let key = Zeroizing::new(rand::random::<[u8; 32]>());
            doc.keys.push(WrappedKey {
                version,
                master_key_id: master.id.clone(),
                wrapped: wrap_one(&master, tenant, version, key.as_slice())?,
                created_at: self.clock.now(),
            });
            doc.current = version;
            let cipher =
                Arc::new(Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| AppError::internal("bad key length"))?);
            fresh.push((tenant.clone(), version, cipher, mac_key(key.as_slice())));
        }
        self.kv.put_docs(DATA_KEYS, &docs)?;
        let mut tenants = self.tenants.write();
        for (tenant, version, cipher, mac) in fresh {
            let t = tenants.entry(tenant).or_insert_with(|| TenantKeys {
                current: version,
                ciphers: BTreeMap::new(),
                macs: BTreeMap::new(),
            });
            t.ciphers.insert(version, cipher);
            t.macs.insert(version, mac);
            t.current = version;
        }
        Ok(docs.len())
    }

    /// Tenants whose data keys were shredded.
    pub fn shredded_tenants(&self) -> AppResult<Vec<String>> {
        Ok(self
            .kv
            .scan_docs::<TenantKeyDoc>(DATA_KEYS)?
            .into_iter()
            .filter(|(_, d)| d.shredded_through > 0)
            .map(|(t, _)| t)
            .collect())
    }

    /// Tenants with a data key not wrapped by the current master key.
    pub fn stale_tenants(&self) -> AppResult<Vec<String>> {
        let id = self.master_id();
        Ok(self
            .kv
            .scan_docs::<TenantKeyDoc>(DATA_KEYS)?
            .into_iter()
            .filter(|(_, d)| d.keys.iter().any(|k| k.master_key_id != id))
            .map(|(t, _)| t)
            .collect())
    }

    /// What the key store holds, without any key material: for `daena governance artifacts`
    /// and the monthly checklist.
    pub fn status(&self) -> AppResult<KeyStatus> {
        let docs = self.kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?;
        let oldest = docs.iter().flat_map(|(_, d)| d.keys.iter().map(|k| k.created_at)).min();
        let now = self.clock.now();
        let master = self.master.read().clone();
        Ok(KeyStatus {
            master_key_id: master.id.clone(),
            master_key_source: master.source.clone(),
            tenants_with_data_keys: docs.len(),
            data_keys: docs.iter().map(|(_, d)| d.keys.len()).sum(),
            oldest_data_key_created_at: oldest.map(daena_base::clock::rfc3339),
            oldest_data_key_age_days: oldest.map_or(0.0, |t| (now.days_since(t) * 10.0).round() / 10.0),
            rotations: 0,
            last_rotation_at: None,
            master_key_age_days: oldest.map_or(0.0, |t| (now.days_since(t) * 10.0).round() / 10.0),
        })
    }

    /// The tenant's current data key, created (and stored wrapped) on first use.
    fn current(&self, tenant: &str) -> AppResult<(u32, Arc<Aes256Gcm>)> {
        if let Some(t) = self.tenants.read().get(tenant)
            && let Some(c) = t.ciphers.get(&t.current)
        {
            return Ok((t.current, c.clone()));
        }
        let _guard = self.create.lock();
        if let Some(t) = self.tenants.read().get(tenant)
            && let Some(c) = t.ciphers.get(&t.current)
        {
            return Ok((t.current, c.clone()));
        }
        loop {
            // Replicas sharing the documents may have made this tenant's key since this
            // process loaded them: use theirs. A new key is stored only if the document is
            // still as read, so two replicas never seal with different keys.
            let stored = self.kv.get_doc_bytes(DATA_KEYS, tenant)?;
            let doc = stored.as_deref().map(decode_doc).transpose()?;
            if let Some(doc) = &doc
                && doc.keys.iter().any(|k| k.version == doc.current)
            {
                return self.adopt(tenant, doc);
            }
            // After a shred the stored doc keeps the highest version destroyed: never reuse it.
            let shredded_through = doc.map_or(0, |d| d.shredded_through);
            let version = shredded_through + 1;
            let key = Zeroizing::new(rand::random::<[u8; 32]>());
            let master = self.master.read().clone();
            let doc = TenantKeyDoc {
                current: version,
                keys: vec![WrappedKey {
                    version,
                    master_key_id: master.id.clone(),
                    wrapped: wrap_one(&master, tenant, version, key.as_slice())?,
                    created_at: self.clock.now(),
                }],
                shredded_through,
            };
            if !self.kv.swap_doc(DATA_KEYS, tenant, stored.as_deref(), &doc)? {
                continue;
            }
            let cipher =
                Arc::new(Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| AppError::internal("bad key length"))?);
            self.tenants.write().insert(
                tenant.to_owned(),
                TenantKeys {
                    current: version,
                    ciphers: BTreeMap::from([(version, cipher.clone())]),
                    macs: BTreeMap::from([(version, mac_key(key.as_slice()))]),
                },
            );
            return Ok((version, cipher));
        }
    }

    /// Takes `tenant`'s keys as stored (made by another replica) and returns the current one.
    fn adopt(&self, tenant: &str, doc: &TenantKeyDoc) -> AppResult<(u32, Arc<Aes256Gcm>)> {
        let master = self.master.read().clone();
        let mut unwrapped = unwrap_all(vec![(tenant.to_owned(), doc.clone())], &master)?;
        let keys = unwrapped.remove(tenant).ok_or_else(|| AppError::internal("adopted no keys"))?;
        let current = keys.ciphers.get(&keys.current).cloned().map(|c| (keys.current, c));
        self.tenants.write().insert(tenant.to_owned(), keys);
        current.ok_or_else(|| AppError::internal(format!("tenant {tenant} has no current data key")))
    }

    /// The cipher of `tenant`'s data key `version`, reading the stored keys again when this
    /// process does not hold it (another replica made it).
    fn cipher(&self, tenant: &TenantId, version: u32) -> AppResult<Arc<Aes256Gcm>> {
        let held =
            |ring: &Keyring| ring.tenants.read().get(tenant.as_str()).and_then(|t| t.ciphers.get(&version).cloned());
        if let Some(c) = held(self) {
            return Ok(c);
        }
        {
            let _guard = self.create.lock();
            if let Some(doc) = self.kv.get_doc::<TenantKeyDoc>(DATA_KEYS, tenant.as_str())?
                && doc.keys.iter().any(|k| k.version == version)
            {
                self.adopt(tenant.as_str(), &doc)?;
            }
        }
        held(self).ok_or_else(|| {
            AppError::unavailable(format!("no data key version {version} for tenant {tenant} (shredded or missing)"))
        })
    }

    /// HMAC-SHA256 of `message` under the content-MAC key of `tenant`'s current data key, and
    /// that key's version. After a shred no one can recompute it, so it confirms no guess.
    pub fn content_mac(&self, tenant: &TenantId, message: &[u8]) -> AppResult<(u32, [u8; 32])> {
        use hmac::{KeyInit, Mac};
        let (version, _) = self.current(tenant.as_str())?;
        let key =
            self.tenants.read().get(tenant.as_str()).and_then(|t| t.macs.get(&version).cloned()).ok_or_else(|| {
                AppError::internal(format!("no content-MAC key for tenant {tenant} version {version}"))
            })?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_slice())
            .map_err(|_| AppError::internal("content-MAC key length"))?;
        mac.update(message);
        Ok((version, mac.finalize().into_bytes().into()))
    }

    /// Seals `plaintext` for `aad_address` of `tenant`.
    pub fn seal(&self, tenant: &TenantId, address: &[u8], codec: Codec, plaintext: &[u8]) -> AppResult<Vec<u8>> {
        let (version, cipher) = self.current(tenant.as_str())?;
        let mut out = Vec::with_capacity(HEADER + NONCE + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(codec as u8);
        out.extend_from_slice(&version.to_be_bytes());
        let nonce: [u8; NONCE] = rand::random();
        let mut aad = Vec::with_capacity(HEADER + address.len());
        aad.extend_from_slice(&out[..HEADER]);
        aad.extend_from_slice(address);
        let ct = cipher
            .encrypt((&nonce).into(), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| AppError::internal("encryption failed"))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens an envelope sealed for `address` of `tenant`: (codec, plaintext).
    pub fn open(&self, tenant: &TenantId, address: &[u8], envelope: &[u8]) -> AppResult<(Codec, Vec<u8>)> {
        let (codec, version) = parse_header(envelope)?;
        let cipher = self.cipher(tenant, version)?;
        let mut aad = Vec::with_capacity(HEADER + address.len());
        aad.extend_from_slice(&envelope[..HEADER]);
        aad.extend_from_slice(address);
        let body = &envelope[HEADER..];
        let nonce: [u8; NONCE] = body[..NONCE].try_into().map_err(|_| AppError::internal("bad nonce"))?;
        let plaintext = cipher.decrypt((&nonce).into(), Payload { msg: &body[NONCE..], aad: &aad }).map_err(|_| {
            AppError::new(
                ErrorCode::Corrupt,
                format!(
                    "sealed data of tenant {tenant} failed authentication: its stored bytes are corrupt (or were \
                     moved); restore it from a snapshot or delete it"
                ),
            )
        })?;
        Ok((codec, plaintext))
    }
}

/// (codec, key version) of an envelope.
pub fn parse_header(envelope: &[u8]) -> AppResult<(Codec, u32)> {
    if envelope.len() < HEADER + NONCE + 16 || &envelope[..2] != MAGIC || envelope[2] != FORMAT {
        return Err(AppError::internal("not a Daena envelope (format 1)"));
    }
    let codec = match envelope[3] {
        0 => Codec::Raw,
        1 => Codec::Zstd,
        c => return Err(AppError::internal(format!("unknown envelope codec {c}"))),
    };
    let version = u32::from_be_bytes([envelope[4], envelope[5], envelope[6], envelope[7]]);
    Ok((codec, version))
}

/// The associated data naming a record address.
pub fn record_address(tenant: &str, class: &str, key: &str) -> Vec<u8> {
    format!("daena-record-v1\0{tenant}\0{class}\0{key}").into_bytes()
}

#[cfg(test)]
mod tests;
mod wrap;
