//! Snapshots: one `tar` + zstd archive of the state at one ledger position, with a manifest
//! of every file's SHA-256, taken online without stopping writes for longer than it takes to
//! note file lengths.
//!
//! Consistency: on the commit thread (the only writer of the ledger, the records and L3),
//! between batches, the overlay is settled into the state store, a consistent view of it is
//! taken and the lengths of the ledger and L3 segment files are noted. Ledger and L3 files
//! only grow, so their first `length` bytes are that moment's content; the view sees the
//! store as it was then (the rows and their `applied` mark together). Writes continue while
//! the files are copied.
//!
//! Key material stays out: no master key and no ledger signing key is archived. The manifest
//! names the master key id the state was sealed with, and a restore refuses an archive whose
//! keys the current master key cannot open, before it replaces anything.

mod rollback;

pub use rollback::*;

use crate::Daena;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
use daena_store::backup::{self, STATE_FILE as STATE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SnapshotManifest))]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub created_at: String,
    pub daena_version: String,
    /// The ledger position the state is at: entries 1..=ledger_size.
    pub ledger_size: u64,
    pub ledger_head_hash: String,
    pub ledger_root: String,
    /// The master key id the tenant data keys are wrapped with (not the key).
    pub master_key_id: String,
    pub records: u64,
    pub tables: Vec<String>,
    pub files: Vec<FileEntry>,
    /// Bytes of the compressed archive (in the sidecar manifest only).
    #[serde(default)]
    pub archive_bytes: u64,
    #[serde(default)]
    pub seconds: f64,
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> AppError {
    AppError::internal(format!("{what}: {e}"))
}

impl From<backup::ArchivedFile> for FileEntry {
    fn from(f: backup::ArchivedFile) -> FileEntry {
        FileEntry { path: f.path, bytes: f.bytes, sha256: f.sha256 }
    }
}

/// Takes a snapshot into `<data>/snapshots/`; returns its manifest. On a replica
/// (`storage.backend = "postgres"`) it holds this replica's copy of the shared chain and of
/// the state it leaves, as far as the replica has applied it: restorable on the embedded
/// backend (a single node, or the scratch directory of a drill), while the deployment itself
/// is restored from PostgreSQL's own backups.
pub async fn create(d: &Daena) -> AppResult<Manifest> {
    let manifest = write(d, &d.data().snapshots_dir(), "daena-snapshot").await?;
    // Ledgered after its position: the snapshot holds entries 1..=ledger_size.
    let entry = daena_core::ledger::NewEntry::new("system", "system", "ops.snapshot", manifest.name.clone()).attrs(
        serde_json::json!({
            "ledger_size": manifest.ledger_size,
            "ledger_root": manifest.ledger_root,
            "records": manifest.records,
            "archive_bytes": manifest.archive_bytes,
        }),
    );
    d.commit().append(vec![entry]).await?;
    Ok(manifest)
}

/// Writes a snapshot archive named `<prefix>-<time>-<position>` and its sidecar manifest
/// into `dir`; returns the manifest.
pub(crate) async fn write(d: &Daena, dir: &Path, prefix: &str) -> AppResult<Manifest> {
    let started = std::time::Instant::now();
    let (ledger_dir, l3_dir, kv) = (d.data().ledger_dir(), d.cold_dir().to_path_buf(), d.kv().clone());
    let reader = d.ledger().reader.clone();
    // A replica keeps the tenants' data keys in PostgreSQL: the copy carries them, or its
    // records could not be opened where it is restored.
    let data_keys = d.replicas().is_some().then(|| d.governance().data_keys().clone());
    let (cut, head) = d
        .commit()
        .exclusive(move |sm| -> AppResult<_> {
            sm.settle()?;
            let mut cut = backup::cut(&kv, ledger_dir, l3_dir)?;
            if let Some(keys) = data_keys {
                cut = cut.with_docs(keys.wrapped_docs()?);
            }
            Ok((cut, reader.head()))
        })
        .await??;
    let root = d
        .ledger()
        .reader
        .root(head.size)
        .map_err(|e| AppError::internal(format!("ledger root: {e}")))?
        .map(hex::encode)
        .unwrap_or_default();
    let now = d.clock().now();
    let name = format!("{prefix}-{}-{:08}", crate::clock::compact_stamp(now), head.size);
    std::fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
    let dir2 = dir.to_path_buf();
    let data_root = d.data().root().to_path_buf();
    let master_key_id = d.governance().data_keys().master_id().to_owned();
    let signing_key = crate::ledger::signing_key(d.data())?;
    let name2 = name.clone();
    let created_at = rfc3339(now);
    let manifest = tokio::task::spawn_blocking(move || -> AppResult<Manifest> {
        let scratch = backup::Staging::new(&data_root, "snapshot", &name2)?;
        let mut archive = backup::ArchiveFile::create(&dir2, &name2)?;
        let written = cut.write_into(&mut archive.tar, scratch.path())?;
        let mut manifest = Manifest {
            format: FORMAT,
            name: name2,
            created_at,
            daena_version: env!("CARGO_PKG_VERSION").to_owned(),
            ledger_size: head.size,
            ledger_head_hash: hex::encode(head.hash),
            ledger_root: root,
            master_key_id,
            records: written.records,
            tables: written.tables,
            files: written.files.into_iter().map(FileEntry::from).collect(),
            archive_bytes: 0,
            seconds: 0.0,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io("manifest", e))?;
        backup::append_bytes(&mut archive.tar, backup::MANIFEST, &text)?;
        let sig = serde_json::to_vec(&crate::backup_trust::sign(&signing_key, "snapshot", &text))
            .map_err(|e| io("manifest signature", e))?;
        backup::append_bytes(&mut archive.tar, backup::MANIFEST_SIG, &sig)?;
        manifest.archive_bytes = archive.finish()?.1;
        Ok(manifest)
    })
    .await
    .map_err(|e| AppError::internal(format!("snapshot task: {e}")))??;
    let mut manifest = manifest;
    manifest.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let sidecar = dir.join(format!("{name}.manifest.json"));
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io("manifest", e))?;
    daena_store::datadir::write_atomic(&sidecar, &text, true).map_err(|e| io(sidecar.display(), e))?;
    Ok(manifest)
}

/// The snapshots in `dir`, oldest first, from their sidecar manifests.
pub fn list(dir: &Path) -> AppResult<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    for (archive, text) in backup::sidecars(dir)? {
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| io(archive.display(), e))?;
        out.push((archive, m));
    }
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(out)
}

/// Unpacks `archive` into `staging`, checks every file against the manifest inside it, and
/// the manifest's signature against `trust` ([`crate::backup_trust`]).
pub fn unpack_verified(
    data: &daena_store::datadir::DataDir,
    archive: &Path,
    staging: &Path,
    trust: &crate::backup_trust::Trust,
) -> AppResult<(Manifest, crate::backup_trust::Provenance)> {
    let unpacked = backup::unpack(archive, staging).map_err(|e| match e {
        backup::UnpackError::Invalid(m) => AppError::invalid(m),
        backup::UnpackError::Store(e) => AppError::from(e),
    })?;
    let mut seen = unpacked.files;
    let manifest_bytes = unpacked
        .manifest
        .ok_or_else(|| AppError::invalid(format!("{}: no manifest.json inside", archive.display())))?;
    let mut manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| AppError::invalid(format!("{}: manifest: {e}", archive.display())))?;
    let signature = match unpacked.signature {
        Some(text) => Some(
            serde_json::from_slice::<crate::backup_trust::BackupSignature>(&text)
                .map_err(|e| AppError::invalid(format!("{}: manifest signature: {e}", archive.display())))?,
        ),
        None => None,
    };
    manifest.archive_bytes = unpacked.archive_bytes;
    if manifest.format != FORMAT {
        return Err(AppError::invalid(format!(
            "snapshot format {} is not supported (this is {FORMAT})",
            manifest.format
        )));
    }
    for f in &manifest.files {
        match seen.remove(&f.path) {
            Some((bytes, sha)) if bytes == f.bytes && sha == f.sha256 => {}
            Some(_) => {
                return Err(AppError::invalid(format!(
                    "{}: {} does not match its manifest hash",
                    archive.display(),
                    f.path
                )));
            }
            None => return Err(AppError::invalid(format!("{}: {} is missing", archive.display(), f.path))),
        }
    }
    if let Some(extra) = seen.keys().next() {
        return Err(AppError::invalid(format!("{}: {extra} is not in the manifest", archive.display())));
    }
    let ours = crate::ledger::signing_key(data)?.verifying_key();
    let what = format!("snapshot {}", archive.display());
    let provenance = crate::backup_trust::check(&what, "snapshot", &manifest_bytes, signature.as_ref(), &ours, trust)?;
    Ok((manifest, provenance))
}

/// Verifies the ledger unpacked from an archive (the `what`'s) and that it is the one its
/// manifest names; the entries verified.
pub(crate) fn verify_unpacked_ledger(ledger: &Path, manifest: &Manifest, what: &str) -> AppResult<u64> {
    let checkpoints = daena_store::ledger::read_checkpoints(ledger).map_err(|e| io(format!("{what} ledger"), e))?;
    let (summary, _) = daena_store::ledger::verify_path(ledger, checkpoints, None, |_| {})
        .map_err(|e| io(format!("{what} ledger"), e))?;
    if let Some(f) = &summary.failure {
        return Err(AppError::invalid(format!("the {what}'s ledger does not verify: {}", f.reason)));
    }
    if summary.entries != manifest.ledger_size || summary.root != manifest.ledger_root {
        return Err(AppError::invalid(format!(
            "the {what}'s ledger holds {} entries with root {}, its manifest says {} and {}",
            summary.entries, summary.root, manifest.ledger_size, manifest.ledger_root
        )));
    }
    Ok(summary.entries)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub archive: String,
    pub manifest: Manifest,
    /// Where the replaced state was moved (never deleted).
    pub replaced_dir: String,
    pub ledger_verified_entries: u64,
    /// Revocations and shreds of the replaced ledger applied again to the restored state.
    pub carried_forward: usize,
    /// Who vouched for the snapshot: this deployment, a pinned key, or nobody.
    pub provenance: crate::backup_trust::Provenance,
}

/// Restores `archive` into the stopped data directory of `loaded`: unpacks and verifies it
/// (file hashes, the ledger chain and root, the master key against its data keys) before it
/// replaces anything, then moves the current state, ledger and L3 aside to
/// `<data>/replaced/<time>/` and puts the snapshot's in their place.
pub fn restore(
    loaded: &crate::config::LoadedConfig,
    archive: &Path,
    trust: &crate::backup_trust::Trust,
) -> AppResult<RestoreReport> {
    let data = lock_stopped(&loaded.config.data_dir, "snapshot restore")?;
    restore_in(&data, loaded, archive, trust)
}

/// [`restore`] into a data directory this process holds with no store open (`daena serve`
/// during maintenance).
pub fn restore_in(
    data: &daena_store::datadir::DataDir,
    loaded: &crate::config::LoadedConfig,
    archive: &Path,
    trust: &crate::backup_trust::Trust,
) -> AppResult<RestoreReport> {
    crate::replicas::single_node_only(&loaded.config, "a snapshot restore")?;
    let root = data.root();
    let stamp = stamp_now();
    let staged = backup::Staging::new(root, "restore", &stamp)?;
    let staging = staged.path();
    {
        let (manifest, provenance) = unpack_verified(data, archive, staging, trust)?;
        let ledger = staging.join("ledger");
        let verified = verify_unpacked_ledger(&ledger, &manifest, "snapshot")?;
        adopt_master(data, loaded, &staging.join(STATE), &manifest.master_key_id)?;
        let carried = crate::governance::facts_set_aside(&data.ledger_dir(), &ledger)?;
        crate::governance::record_carried(&staging.join(STATE), &carried)?;
        let l3 = crate::service::cold_dir(&loaded.config, data, None);
        let aside = backup::swap_in(root, &l3, staging, &stamp)?;
        Ok(RestoreReport {
            archive: archive.display().to_string(),
            manifest,
            replaced_dir: aside.display().to_string(),
            ledger_verified_entries: verified,
            carried_forward: carried.len(),
            provenance,
        })
    }
}

/// The outcome of a DR drill, as it is ledgered (`ops.drill`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    pub snapshot: String,
    pub passed: bool,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    /// Ledger entries written after the snapshot's position when the drill ended.
    #[serde(deserialize_with = "daena_core::canonical::integer")]
    pub rpo_entries: u64,
    /// Names of the checks that failed.
    #[serde(default)]
    pub failed_checks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ledgered {
    pub seq: u64,
}

/// Records a drill's outcome in the ledger.
pub async fn record_drill(d: &Daena, who: &crate::auth::Principal, r: &DrillRecord) -> AppResult<Ledgered> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if r.snapshot.is_empty()
        || r.snapshot.chars().count() > 200
        || r.failed_checks.len() > 100
        || !ok(r.rto_seconds)
        || !ok(r.rpo_seconds)
    {
        return Err(AppError::invalid(
            "a drill record needs a snapshot name (≤ 200), ≤ 100 failed checks, non-negative times",
        ));
    }
    let op = crate::governance::GovOp::Drill { record: r.clone(), tenant: who.tenant().clone(), actor: who.actor() };
    Ok(Ledgered { seq: crate::governance::submit(d, op).await? })
}

pub(crate) const LAST_DRILL: &str = "last_drill";

/// The newest drill's outcome, when and where it was ledgered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastDrill {
    #[serde(flatten)]
    pub record: DrillRecord,
    pub at: String,
    pub seq: u64,
}

pub fn last_drill(d: &Daena) -> AppResult<Option<LastDrill>> {
    Ok(d.kv().get_doc(daena_store::kv::SETTINGS, LAST_DRILL)?)
}

/// Every record's table key, in order (for a drill's count and sampled reads, and archives),
/// after the commit thread has settled what it holds in memory into the store.
pub async fn record_keys(d: &Daena) -> AppResult<Vec<Vec<u8>>> {
    d.commit().settle().await?;
    Ok(d.kv().view()?.record_keys()?)
}

/// Takes the lock of a stopped data directory whose state `holder` is about to replace.
fn lock_stopped(root: &Path, holder: &str) -> AppResult<daena_store::datadir::DataDir> {
    let info = daena_store::datadir::LockInfo { pid: std::process::id(), listen: None, holder: holder.into() };
    daena_store::datadir::DataDir::open(root, &info).map_err(|e| match e {
        daena_store::StoreError::Locked { .. } => AppError::new(
            crate::error::ErrorCode::Unavailable,
            format!("{e}; stop the server first ({holder} replaces its state on disk)"),
        ),
        other => AppError::internal(other.to_string()),
    })
}

fn stamp_now() -> String {
    use crate::clock::Clock;
    crate::clock::compact_stamp(crate::clock::SystemClock.now())
}
