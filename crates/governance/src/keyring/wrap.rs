//! Data keys wrapped under the master key: wrapping, unwrapping, checking a master key
//! against a state file without opening it for writing, and re-wrapping under a new one.

use super::*;

fn wrap_aad(tenant: &str, version: u32) -> Vec<u8> {
    format!("daena-dek-v1\0{tenant}\0{version}").into_bytes()
}

/// Checks, without opening the database for writing, that `master` unwraps the data keys
/// stored in `state_db`: a wrong key is refused before anything is touched.
pub fn check_master(state_db: &std::path::Path, master: &MasterKey) -> AppResult<()> {
    if let Some(docs) = daena_store::kv::read_docs_untouched::<TenantKeyDoc>(state_db, DATA_KEYS)? {
        unwrap_all(docs, master)?;
    }
    Ok(())
}

/// The raw data key of `tenant` version `k.version`, unwrapped with `master`.
fn unwrap_one(master: &MasterKey, tenant: &str, k: &WrappedKey) -> AppResult<Zeroizing<Vec<u8>>> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&k.wrapped)
        .map_err(|_| AppError::internal(format!("data key {tenant}/{} is not base64", k.version)))?;
    if raw.len() < NONCE + 16 {
        return Err(AppError::internal(format!("data key {tenant}/{} is truncated", k.version)));
    }
    let (nonce, ct) = raw.split_at(NONCE);
    let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| AppError::internal("bad nonce"))?;
    master
        .cipher()
        .decrypt((&nonce).into(), Payload { msg: ct, aad: &wrap_aad(tenant, k.version) })
        .map(Zeroizing::new)
        .map_err(|_| {
            AppError::unavailable(format!(
                "cannot unwrap the data key of tenant {tenant} (version {}) with the master key from {}: \
                 wrong key or damaged key store. Nothing was changed.",
                k.version, master.source
            ))
        })
}

/// `key` wrapped for `tenant` version `version` under `master`: nonce ‖ ciphertext ‖ tag, base64.
pub(super) fn wrap_one(master: &MasterKey, tenant: &str, version: u32, key: &[u8]) -> AppResult<String> {
    let nonce: [u8; NONCE] = rand::random();
    let wrapped = master
        .cipher()
        .encrypt((&nonce).into(), Payload { msg: key, aad: &wrap_aad(tenant, version) })
        .map_err(|_| AppError::internal("wrapping a data key failed"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&wrapped);
    Ok(base64::engine::general_purpose::STANDARD.encode(&blob))
}

/// Every data key of `docs` unwrapped with `old` and wrapped again with `new`; the data keys
/// themselves do not change, so no record needs re-encrypting.
pub(super) fn rewrap_docs(
    docs: Vec<(String, TenantKeyDoc)>,
    old: &MasterKey,
    new: &MasterKey,
) -> AppResult<Vec<(String, TenantKeyDoc)>> {
    let mut out = Vec::with_capacity(docs.len());
    for (tenant, mut doc) in docs {
        for k in &mut doc.keys {
            if k.master_key_id == new.id {
                continue;
            }
            let raw = unwrap_one(old, &tenant, k)?;
            k.wrapped = wrap_one(new, &tenant, k.version, &raw)?;
            k.master_key_id = new.id.clone();
        }
        out.push((tenant, doc));
    }
    Ok(out)
}

/// Re-wraps the data keys stored in the redb file at `state_db` (a restored snapshot's) from
/// `old` to `new`, in one transaction.
pub fn rewrap_file(state_db: &std::path::Path, old: &MasterKey, new: &MasterKey) -> AppResult<usize> {
    let kv = Kv::open(state_db, 16 * 1024 * 1024)?;
    let docs = rewrap_docs(kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?, old, new)?;
    let n = docs.len();
    kv.put_docs(DATA_KEYS, &docs)?;
    Ok(n)
}

/// Copies into the redb file `into` the data keys it lacks from the redb file `from` (both
/// under the same master key): tenants, and versions of tenants, created after `into` was.
/// A rebuild replays entries written after its snapshot, which may be sealed under such keys
/// (a tenant's first write, or a rotation's new version). Returns how many keys were added.
pub fn merge_missing_data_keys(into: &std::path::Path, from: &std::path::Path) -> AppResult<usize> {
    let Some(theirs) = daena_store::kv::read_docs_untouched::<TenantKeyDoc>(from, DATA_KEYS)? else {
        return Ok(0);
    };
    let kv = Kv::open(into, 16 * 1024 * 1024)?;
    let mut ours: HashMap<String, TenantKeyDoc> = kv.scan_docs::<TenantKeyDoc>(DATA_KEYS)?.into_iter().collect();
    let mut added = 0;
    let mut changed = Vec::new();
    for (tenant, doc) in theirs {
        match ours.remove(&tenant) {
            None => {
                added += doc.keys.len();
                changed.push((tenant, doc));
            }
            Some(mut mine) => {
                let missing: Vec<WrappedKey> =
                    doc.keys.into_iter().filter(|k| !mine.keys.iter().any(|m| m.version == k.version)).collect();
                if !missing.is_empty() {
                    added += missing.len();
                    mine.keys.extend(missing);
                    mine.current = mine.current.max(doc.current);
                    changed.push((tenant, mine));
                }
            }
        }
    }
    kv.put_docs(DATA_KEYS, &changed)?;
    Ok(added)
}

pub(super) fn decode_doc(bytes: &[u8]) -> AppResult<TenantKeyDoc> {
    serde_json::from_slice(bytes).map_err(|e| AppError::internal(format!("a stored data key document: {e}")))
}

pub(super) fn unwrap_all(
    docs: Vec<(String, TenantKeyDoc)>,
    master: &MasterKey,
) -> AppResult<HashMap<String, TenantKeys>> {
    let mut tenants = HashMap::new();
    for (tenant, doc) in docs {
        let mut ciphers = BTreeMap::new();
        let mut macs = BTreeMap::new();
        for k in &doc.keys {
            if k.master_key_id != master.id {
                return Err(AppError::unavailable(format!(
                    "the master key from {} (id {}) is not the one this data directory's keys were wrapped with \
                         (id {}); start with the right DAENA_MEMORY_AES_KEY. Nothing was changed.",
                    master.source, master.id, k.master_key_id
                )));
            }
            let key = unwrap_one(master, &tenant, k)?;
            let cipher =
                Aes256Gcm::new_from_slice(&key).map_err(|_| AppError::internal("data key has the wrong length"))?;
            ciphers.insert(k.version, Arc::new(cipher));
            macs.insert(k.version, mac_key(&key));
        }
        tenants.insert(tenant, TenantKeys { current: doc.current, ciphers, macs });
    }
    Ok(tenants)
}
