//! The master key: where it comes from (the environment or `<data>/keys/master.key`), its
//! identity, and the files of a rotation in progress (the next key, retired keys).

use crate::keyring::*;
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use base64::Engine;
use daena_base::config::Secret;
use daena_base::error::{AppError, AppResult};
use daena_store::datadir::{DataDir, write_atomic};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const MASTER_KEY_FILE: &str = "master.key";

/// The master (key-encryption) key.
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    /// A non-secret identifier: the first 8 bytes of SHA-256("daena-master-key-id\0" ‖ key), hex.
    pub id: String,
    /// Where it came from, for messages: `DAENA_MEMORY_AES_KEY` or the key file path.
    pub source: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).field("source", &self.source).finish()
    }
}

pub(crate) fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"daena-master-key-id\0");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32], source: &str) -> MasterKey {
        MasterKey { id: key_id(&key), key: Zeroizing::new(key), source: source.to_owned() }
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        // A 32-byte slice is always a valid AES-256 key.
        Aes256Gcm::new(&(*self.key).into())
    }
}

/// Parses a master key given as base64 (standard or URL-safe, padded or not) or hex of
/// exactly 32 bytes. The error never repeats the value.
pub fn parse_master_key(text: &str, source: &str) -> AppResult<[u8; 32]> {
    let t = text.trim();
    let decoded = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).ok()
    } else {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(t).ok())
    };
    let bytes = Zeroizing::new(decoded.unwrap_or_default());
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        AppError::invalid(format!(
            "{source} must be 32 bytes given as base64 (44 characters) or hex (64 characters), \
             e.g. the output of `openssl rand -base64 32`; the value given is not (its content is not shown)"
        ))
    })
}

/// Loads the master key: `DAENA_MEMORY_AES_KEY` if set, else `keys/master.key`, else a new
/// key generated into that file (mode 0600) with a warning.
pub fn load_master(data: &DataDir, env: Option<&Secret>) -> AppResult<MasterKey> {
    if let Some(secret) = env {
        let key = parse_master_key(secret.expose(), "DAENA_MEMORY_AES_KEY")?;
        return Ok(MasterKey::from_bytes(key, "DAENA_MEMORY_AES_KEY"));
    }
    let path = data.keys_dir().join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = parse_master_key(&text, &path.display().to_string())?;
            Ok(MasterKey::from_bytes(key, &path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let text = Zeroizing::new(format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key)));
            write_atomic(&path, text.as_bytes(), true)?;
            tracing::warn!(
                path = %path.display(),
                "no DAENA_MEMORY_AES_KEY set: generated a master key file; back it up apart from the data, \
                 or set DAENA_MEMORY_AES_KEY"
            );
            Ok(MasterKey::from_bytes(key, &path.display().to_string()))
        }
        Err(e) => Err(AppError::internal(format!("reading {}: {e}", path.display()))),
    }
}

const NEXT_MASTER: &str = "master.key.next";

const RETIRED_DIR: &str = "retired";

/// Writes the next master key to `keys/master.key.next` (mode 0600, synced) before the data
/// keys are re-wrapped under it.
pub fn write_next_master(keys: &std::path::Path, raw: &[u8; 32]) -> AppResult<()> {
    let text = Zeroizing::new(format!("{}\n", base64::engine::general_purpose::STANDARD.encode(raw)));
    write_atomic(&keys.join(NEXT_MASTER), text.as_bytes(), true)?;
    Ok(())
}

/// After the data keys are under the next key: `master.key` → `retired/master-<old id>.key`,
/// `master.key.next` → `master.key`.
pub fn finish_rotation_files(keys: &std::path::Path, old_id: &str) -> AppResult<()> {
    let retired = keys.join(RETIRED_DIR);
    std::fs::create_dir_all(&retired).map_err(|e| AppError::internal(format!("{}: {e}", retired.display())))?;
    let current = keys.join(MASTER_KEY_FILE);
    if current.exists() {
        let to = retired.join(format!("master-{old_id}.key"));
        std::fs::rename(&current, &to).map_err(|e| AppError::internal(format!("retiring the master key: {e}")))?;
    }
    std::fs::rename(keys.join(NEXT_MASTER), &current)
        .map_err(|e| AppError::internal(format!("installing the new master key: {e}")))?;
    if let Ok(dir) = std::fs::File::open(keys) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// At start: completes a rotation interrupted after its data keys were re-wrapped, or drops
/// the unused next key of one interrupted before.
pub fn finish_rotation(data: &DataDir) -> AppResult<()> {
    let keys = data.keys_dir();
    let next = keys.join(NEXT_MASTER);
    let Ok(text) = std::fs::read_to_string(&next) else {
        return Ok(());
    };
    let text = Zeroizing::new(text);
    let new = MasterKey::from_bytes(parse_master_key(&text, &next.display().to_string())?, "next");
    let wrapped_by_new = daena_store::kv::read_docs_untouched::<TenantKeyDoc>(&data.state_db(), DATA_KEYS)?
        .is_some_and(|docs| {
            !docs.is_empty() && docs.iter().all(|(_, d)| d.keys.iter().all(|k| k.master_key_id == new.id))
        });
    if wrapped_by_new {
        let old_id = std::fs::read_to_string(keys.join(MASTER_KEY_FILE))
            .ok()
            .and_then(|t| parse_master_key(&Zeroizing::new(t), "master.key").ok())
            .map_or_else(|| "unknown".to_owned(), |k| key_id(&k));
        tracing::warn!("completing an interrupted master key rotation");
        finish_rotation_files(&keys, &old_id)
    } else {
        tracing::warn!("dropping the next master key of a rotation interrupted before it took effect");
        std::fs::remove_file(&next).map_err(|e| AppError::internal(format!("{}: {e}", next.display())))
    }
}

/// The retired master key with id `id`, if kept (`keys/retired/master-<id>.key`).
pub fn retired_master(keys: &std::path::Path, id: &str) -> Option<MasterKey> {
    let path = keys.join(RETIRED_DIR).join(format!("master-{id}.key"));
    let text = Zeroizing::new(std::fs::read_to_string(&path).ok()?);
    let key = parse_master_key(&text, &path.display().to_string()).ok()?;
    Some(MasterKey::from_bytes(key, &path.display().to_string()))
}
