//! Portable logical backups: every record of one tenant or all, decrypted, as zstd-compressed
//! JSON lines (`legacy_archive_<UTC time>.json.zst`). Unlike a snapshot, an archive does not
//! depend on the keys or the storage format: it is for moving data and keeping it for years.
//! It holds plaintext, so it must be kept as carefully as the data itself.
//!
//! ```text
//! {"header":{"format":"daena-archive/1","created_at":"...","tenant":null,"daena_version":"0.1.0"}}
//! {"record":{"tenant":"acme","class":"chat","key":"k1","version":3,...,"payload":{...},"meta":{...}}}
//! ...
//! {"trailer":{"records":2,"sha256":"<SHA-256 of every record line, newline included>","signature":{...}}}
//! ```
//! Each record carries `content_sha256`, the SHA-256 of its canonical payload, so `verify`
//! checks every record as well as the whole. The trailer's signature, by the deployment's
//! signing key, covers the header line, the record count and the records' SHA-256
//! ([`signed_manifest`], [`crate::backup_trust`]).

use crate::Daena;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
use daena_core::ids::TenantId;
use daena_core::time::Micros;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "daena-archive/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub created_at: String,
    pub tenant: Option<String>,
    pub daena_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedRecord {
    pub tenant: String,
    pub class: String,
    pub key: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub tier: String,
    pub content_sha256: String,
    pub payload: Value,
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trailer {
    pub records: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::backup_trust::BackupSignature>,
}

/// What an archive's signature covers: its header line as written, the record count and
/// the SHA-256 of the record lines.
pub fn signed_manifest(header_line: &[u8], records: u64, sha256: &str) -> Vec<u8> {
    let mut m = header_line.to_vec();
    m.extend_from_slice(format!("\n{records}\n{sha256}").as_bytes());
    m
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Header(Header),
    Record(Box<ArchivedRecord>),
    Trailer(Trailer),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveSummary {
    pub path: String,
    pub format: String,
    pub created_at: String,
    pub tenant: Option<String>,
    pub records: u64,
    pub tenants: Vec<String>,
    pub bytes: u64,
    pub sha256: String,
    /// The trailer's signature, if any (who it vouches for is decided by [`check_signature`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::backup_trust::BackupSignature>,
    /// The bytes the signature covers.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub signed_manifest: Vec<u8>,
}

/// Checks an archive's signature (read by [`read`]) against `ours`, this deployment's public
/// key (hex, as `/api/v1/ledger/head` shows it).
pub fn check_signature(
    s: &ArchiveSummary,
    ours: &str,
    trust: &crate::backup_trust::Trust,
) -> AppResult<crate::backup_trust::Provenance> {
    let ours = crate::backup_trust::parse_key(ours, "this deployment's public key")?;
    let what = format!("archive {}", s.path);
    crate::backup_trust::check(&what, "archive", &s.signed_manifest, s.signature.as_ref(), &ours, trust)
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> AppError {
    AppError::internal(format!("{what}: {e}"))
}

fn micros_text(us: i64) -> String {
    rfc3339(Micros(us))
}

/// Writes every record (of `tenant`, or all) into `dir/legacy_archive_<time>.json.zst`.
pub async fn export(d: &std::sync::Arc<Daena>, tenant: Option<TenantId>, dir: PathBuf) -> AppResult<ArchiveSummary> {
    let keys = crate::snapshot::record_keys(d).await?;
    let d = d.clone();
    tokio::task::spawn_blocking(move || write_archive(&d, keys, tenant.as_ref(), &dir))
        .await
        .map_err(|e| AppError::internal(format!("archive task: {e}")))?
}

fn write_archive(d: &Daena, keys: Vec<Vec<u8>>, tenant: Option<&TenantId>, dir: &Path) -> AppResult<ArchiveSummary> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
    let now = d.clock.now();
    let created_at = rfc3339(now);
    let stamp = crate::clock::compact_stamp(now);
    let path = dir.join(format!("legacy_archive_{stamp}.json.zst"));
    let part = dir.join(format!(".legacy_archive_{stamp}.json.zst.part"));
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let file = open.open(&part).map_err(|e| io(part.display(), e))?;
    let mut out = zstd::Encoder::new(std::io::BufWriter::new(file), 9).map_err(|e| io("zstd", e))?;
    let header = Line::Header(Header {
        format: FORMAT.into(),
        created_at: created_at.clone(),
        tenant: tenant.map(ToString::to_string),
        daena_version: env!("CARGO_PKG_VERSION").into(),
    });
    let write_line = |out: &mut zstd::Encoder<_>, line: &Line| -> AppResult<Vec<u8>> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| io("archive", e))?;
        bytes.push(b'\n');
        std::io::Write::write_all(out, &bytes).map_err(|e| io(part.display(), e))?;
        Ok(bytes)
    };
    let header_line = write_line(&mut out, &header)?;
    let header_line = header_line.strip_suffix(b"\n").unwrap_or(&header_line).to_vec();
    let signing_key = crate::ledger::signing_key(&d.data)?;
    let mut hasher = Sha256::new();
    let (mut records, mut tenants) = (0u64, std::collections::BTreeSet::new());
    let only = tenant.map(|t| daena_store::records::tenant_prefix(t.as_str()));
    for k in keys {
        if only.as_ref().is_some_and(|p| !k.starts_with(p)) {
            continue;
        }
        let view = crate::memory::get_stored(d, &k)?;
        let (t, class, key) = (view.addr.tenant.as_str(), view.addr.class.as_str(), view.addr.key.as_str());
        let payload: Value = serde_json::from_str(&view.plain.payload).map_err(|e| io("a stored payload", e))?;
        let meta: Value = if view.plain.meta.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&view.plain.meta).map_err(|e| io("a stored meta", e))?
        };
        let rec = ArchivedRecord {
            tenant: t.to_owned(),
            class: class.to_owned(),
            key: key.to_owned(),
            version: view.meta.version,
            created_at: micros_text(view.meta.created_at),
            updated_at: micros_text(view.meta.updated_at),
            tier: format!("{:?}", view.meta.tier),
            content_sha256: hex::encode(view.meta.content_sha256),
            payload,
            meta,
        };
        hasher.update(write_line(&mut out, &Line::Record(Box::new(rec)))?);
        records += 1;
        tenants.insert(t.to_owned());
    }
    let sha256 = hex::encode(hasher.finalize());
    let signed = signed_manifest(&header_line, records, &sha256);
    let signature = crate::backup_trust::sign(&signing_key, "archive", &signed);
    let trailer = Trailer { records, sha256: sha256.clone(), signature: Some(signature.clone()) };
    write_line(&mut out, &Line::Trailer(trailer))?;
    let buf = out.finish().map_err(|e| io("zstd", e))?;
    let file = buf.into_inner().map_err(|e| io(part.display(), e.error()))?;
    file.sync_all().map_err(|e| io(part.display(), e))?;
    std::fs::rename(&part, &path).map_err(|e| io(path.display(), e))?;
    Ok(ArchiveSummary {
        bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
        path: path.display().to_string(),
        format: FORMAT.into(),
        created_at,
        tenant: tenant.map(ToString::to_string),
        records,
        tenants: tenants.into_iter().collect(),
        sha256,
        signature: Some(signature),
        signed_manifest: signed,
    })
}

/// Reads `path` through, calling `f` for every record after checking it; checks the header,
/// every record's content hash, and the trailer's count and hash.
pub fn read(path: &Path, mut f: impl FnMut(ArchivedRecord) -> AppResult<()>) -> AppResult<ArchiveSummary> {
    let file = std::fs::File::open(path).map_err(|e| io(path.display(), e))?;
    let dec = zstd::Decoder::new(file).map_err(|e| io(path.display(), e))?;
    let reader = std::io::BufReader::new(dec);
    let bad = |n: usize, m: String| AppError::invalid(format!("{} line {n}: {m}", path.display()));
    let (mut header, mut trailer) = (None::<Header>, None::<Trailer>);
    let mut header_line = Vec::new();
    let mut hasher = Sha256::new();
    let (mut records, mut tenants) = (0u64, std::collections::BTreeSet::new());
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, format!("unreadable: {e}")))?;
        if trailer.is_some() {
            return Err(bad(n, "data after the trailer".into()));
        }
        match serde_json::from_slice::<Line>(&line).map_err(|e| bad(n, e.to_string()))? {
            Line::Header(h) if n == 1 => {
                if h.format != FORMAT {
                    return Err(bad(n, format!("format {:?} is not {FORMAT}", h.format)));
                }
                header = Some(h);
                header_line = line.clone();
            }
            Line::Header(_) => return Err(bad(n, "a second header".into())),
            Line::Record(_) if header.is_none() => return Err(bad(n, "a record before the header".into())),
            Line::Record(r) => {
                let sha = hex::encode(Sha256::digest(daena_core::canonical::to_string(&r.payload).as_bytes()));
                if sha != r.content_sha256 {
                    return Err(bad(
                        n,
                        format!("{}/{}/{}: the payload does not match its content_sha256", r.tenant, r.class, r.key),
                    ));
                }
                hasher.update(&line);
                hasher.update(b"\n");
                records += 1;
                tenants.insert(r.tenant.clone());
                f(*r)?;
            }
            Line::Trailer(t) => trailer = Some(t),
        }
    }
    let header = header.ok_or_else(|| AppError::invalid(format!("{}: empty or no header", path.display())))?;
    let trailer = trailer
        .ok_or_else(|| AppError::invalid(format!("{}: no trailer (the archive was cut short)", path.display())))?;
    let sha256 = hex::encode(hasher.finalize());
    if trailer.records != records || trailer.sha256 != sha256 {
        return Err(AppError::invalid(format!(
            "{}: the trailer says {} records with SHA-256 {}, the archive holds {records} with {sha256}",
            path.display(),
            trailer.records,
            trailer.sha256
        )));
    }
    Ok(ArchiveSummary {
        path: path.display().to_string(),
        format: header.format,
        created_at: header.created_at,
        tenant: header.tenant,
        records,
        tenants: tenants.into_iter().collect(),
        bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
        signed_manifest: signed_manifest(&header_line, records, &sha256),
        sha256,
        signature: trailer.signature,
    })
}

/// Where the server writes archives it is asked for.
pub fn archives_dir(d: &Daena) -> PathBuf {
    d.data.root().join("archives")
}
