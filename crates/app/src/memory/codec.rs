//! A record's body at rest: payload and meta JSON, compressed with zstd when that helps (with
//! the tenant's trained dictionary for the class when the record is small, see `dict`), then
//! sealed in the tenant's envelope (`crypto`).
//!
//! Plaintext layout: payload length (u32 BE) ‖ payload JSON ‖ meta JSON.

use super::MemoryShared;
use crate::error::{AppError, AppResult};
use crate::keyring::{Codec, record_address};
use daena_core::ids::TenantId;
use std::sync::Arc;

/// A record's decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    pub payload: Arc<str>,
    pub meta: Arc<str>,
}

/// The most any record body may decompress to; bounds memory against a forged frame.
const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

pub fn plaintext(plain: &Plain) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + plain.payload.len() + plain.meta.len());
    out.extend_from_slice(&(plain.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(plain.payload.as_bytes());
    out.extend_from_slice(plain.meta.as_bytes());
    out
}

thread_local! {
    /// One zstd context per thread and level: creating a context costs more than
    /// compressing a small record.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn compress(raw: &[u8], level: i32) -> AppResult<Vec<u8>> {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                let c = zstd::bulk::Compressor::new(level).map_err(|e| AppError::internal(format!("zstd: {e}")))?;
                all.push((level, c));
                all.len() - 1
            }
        };
        all[i].1.compress(raw).map_err(|e| AppError::internal(format!("zstd: {e}")))
    })
}

thread_local! {
    /// One zstd decompression context per thread: creating one (about 100 KiB, zeroed) cost
    /// more than decompressing a record, 12% of the CPU of uniform GETs over HTTP.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decompress(frame: &[u8], size: usize) -> AppResult<Vec<u8>> {
    let zstd_err = |e: std::io::Error| AppError::internal(format!("zstd: {e}"));
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(zstd_err)?),
        };
        d.decompress(frame, size).map_err(zstd_err)
    })
}

/// Compresses (at `level`, kept only if smaller) and seals; returns (envelope, raw length).
pub fn seal(
    m: &MemoryShared,
    tenant: &TenantId,
    class: &str,
    key: &str,
    plain: &Plain,
    level: i32,
) -> AppResult<(Vec<u8>, u32)> {
    let keyring = &m.keyring;
    let raw = plaintext(plain);
    let raw_len = u32::try_from(raw.len()).map_err(|_| AppError::invalid("record too large"))?;
    let compressed = match m.dicts.compress(tenant.as_str(), class, &raw, level)? {
        Some(c) => c,
        None => compress(&raw, level)?,
    };
    let aad = record_address(tenant.as_str(), class, key);
    let envelope = if compressed.len() < raw.len() {
        keyring.seal(tenant, &aad, Codec::Zstd, &compressed)?
    } else {
        keyring.seal(tenant, &aad, Codec::Raw, &raw)?
    };
    Ok((envelope, raw_len))
}

/// Opens and decompresses an envelope sealed by [`seal`].
pub fn open(m: &MemoryShared, tenant: &TenantId, class: &str, key: &str, envelope: &[u8]) -> AppResult<Plain> {
    let aad = record_address(tenant.as_str(), class, key);
    let (codec, body) = m.keyring.open(tenant, &aad, envelope)?;
    let raw = match codec {
        Codec::Raw => body,
        Codec::Zstd => {
            let size = zstd::zstd_safe::get_frame_content_size(&body)
                .ok()
                .flatten()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_PLAINTEXT)
                .ok_or_else(|| AppError::internal("compressed record without a valid content size"))?;
            match zstd::zstd_safe::get_dict_id_from_frame(&body) {
                Some(id) => m.dicts.decompress(tenant.as_str(), class, id.get(), &body, size)?,
                None => decompress(&body, size)?,
            }
        }
    };
    if raw.len() < 4 {
        return Err(AppError::internal("record body too short"));
    }
    let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    let rest = &raw[4..];
    if n > rest.len() {
        return Err(AppError::internal("record body length mismatch"));
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(Arc::<str>::from).map_err(|_| AppError::internal("record body is not UTF-8"))
    };
    Ok(Plain { payload: text(&rest[..n])?, meta: text(&rest[n..])? })
}

/// Re-seals an envelope at another compression level (aging).
pub fn recompress(
    m: &MemoryShared,
    tenant: &TenantId,
    class: &str,
    key: &str,
    envelope: &[u8],
    level: i32,
) -> AppResult<(Vec<u8>, u32)> {
    let plain = open(m, tenant, class, key, envelope)?;
    seal(m, tenant, class, key, &plain, level)
}
