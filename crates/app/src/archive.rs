//! Portable logical backups: every record of one tenant or all, decrypted, as zstd-compressed
//! JSON lines (`legacy_archive_<UTC time>.json.zst`) in the format of
//! [`daena_core::archive`]. Unlike a snapshot, an archive does not depend on the keys or the
//! storage format: it is for moving data and keeping it for years. It holds plaintext, so it
//! must be kept as carefully as the data itself. The trailer's signature is by the
//! deployment's signing key ([`crate::backup_trust`]).

use crate::Daena;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
pub use daena_core::archive::{ArchivedRecord, FORMAT, Header, signed_manifest};
use daena_core::archive::{ReadError, Trailer, header_line, read_lines, record_line, trailer_line};
use daena_core::ids::TenantId;
use daena_core::time::Micros;
use daena_store::backup::{LinesFile, file_size, open_lines};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

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

/// A file error of an archive (its message names the file), as archives have always
/// answered them.
fn stored(e: daena_store::StoreError) -> AppError {
    AppError::internal(e.to_string())
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
    let now = d.clock().now();
    let created_at = rfc3339(now);
    let stamp = crate::clock::compact_stamp(now);
    let name = format!("legacy_archive_{stamp}.json.zst");
    let mut out = LinesFile::create(dir, &name, 9).map_err(stored)?;
    let header = Header {
        format: FORMAT.into(),
        created_at: created_at.clone(),
        tenant: tenant.map(ToString::to_string),
        daena_version: env!("CARGO_PKG_VERSION").into(),
    };
    let write_line = |out: &mut LinesFile, bytes: Vec<u8>| -> AppResult<Vec<u8>> {
        out.write(&bytes).map_err(stored)?;
        Ok(bytes)
    };
    let header_line = write_line(&mut out, header_line(&header))?;
    let header_line = header_line.strip_suffix(b"\n").unwrap_or(&header_line).to_vec();
    let signing_key = crate::ledger::signing_key(d.data())?;
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
        hasher.update(write_line(&mut out, record_line(&rec))?);
        records += 1;
        tenants.insert(t.to_owned());
    }
    let sha256 = hex::encode(hasher.finalize());
    let signed = signed_manifest(&header_line, records, &sha256);
    let signature = crate::backup_trust::sign(&signing_key, "archive", &signed);
    let signature_value = serde_json::to_value(&signature).map_err(|e| io("archive signature", e))?;
    let trailer = Trailer { records, sha256: sha256.clone(), signature: Some(signature_value) };
    write_line(&mut out, trailer_line(&trailer))?;
    let (path, bytes) = out.finish().map_err(stored)?;
    Ok(ArchiveSummary {
        bytes,
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
/// every record's content hash, and the trailer's count and hash
/// ([`daena_core::archive::read_lines`]).
pub fn read(path: &Path, f: impl FnMut(ArchivedRecord) -> AppResult<()>) -> AppResult<ArchiveSummary> {
    let lines = open_lines(path).map_err(stored)?;
    let contents = read_lines(lines, f).map_err(|e| match e {
        ReadError::Line(n, m) => AppError::invalid(format!("{} line {n}: {m}", path.display())),
        ReadError::Whole(m) => AppError::invalid(format!("{}: {m}", path.display())),
        ReadError::Stopped(e) => e,
    })?;
    let signature = contents
        .signature
        .map(serde_json::from_value::<crate::backup_trust::BackupSignature>)
        .transpose()
        .map_err(|e| AppError::invalid(format!("{}: the trailer's signature: {e}", path.display())))?;
    Ok(ArchiveSummary {
        path: path.display().to_string(),
        format: contents.header.format,
        created_at: contents.header.created_at,
        tenant: contents.header.tenant,
        records: contents.records,
        tenants: contents.tenants.into_iter().collect(),
        bytes: file_size(path),
        signed_manifest: signed_manifest(&contents.header_line, contents.records, &contents.sha256),
        sha256: contents.sha256,
        signature,
    })
}

/// Where the server writes archives it is asked for.
pub fn archives_dir(d: &Daena) -> PathBuf {
    d.data().root().join("archives")
}
