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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// The deployment's signature over `manifest.json` ([`crate::backup_trust`]).
const MANIFEST_SIG: &str = "manifest.sig";
const STATE: &str = "state.redb";

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Segment files of `dir` with the given prefix, and their current lengths.
fn lengths(dir: &Path, prefix: &str) -> AppResult<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir.display(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            let len = entry.metadata().map_err(|e| io(&name, e))?.len();
            out.push((name, len));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends the first `len` bytes of `src` to the archive as `path`, hashing them.
fn add_file<W: Write>(tar: &mut tar::Builder<W>, src: &Path, path: &str, len: u64) -> AppResult<FileEntry> {
    let file = std::fs::File::open(src).map_err(|e| io(src.display(), e))?;
    let mut hasher = Sha256::new();
    let reader = HashingReader { inner: file.take(len), hasher: &mut hasher };
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, reader).map_err(|e| io(path, e))?;
    Ok(FileEntry { path: path.to_owned(), bytes: len, sha256: hex::encode(hasher.finalize()) })
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Takes a snapshot into `<data>/snapshots/`; returns its manifest.
pub async fn create(d: &Daena) -> AppResult<Manifest> {
    let started = std::time::Instant::now();
    let dir = d.data.snapshots_dir();
    std::fs::create_dir_all(&dir).map_err(|e| io(dir.display(), e))?;
    let (ledger_dir, l3_dir) = (d.data.ledger_dir(), d.data.l3_dir());
    let kv = d.kv.clone();
    let reader = d.ledger.reader.clone();
    let (view, head, ledger_files, l3_files) = d
        .commit
        .exclusive(move |sm| -> AppResult<_> {
            sm.settle()?;
            let view = kv.view()?;
            let head = reader.head();
            let mut ledger_files = lengths(&ledger_dir, "seg-")?;
            ledger_files.extend(lengths(&ledger_dir, "checkpoints")?);
            ledger_files.extend(lengths(&ledger_dir, "signing_key")?);
            Ok((view, head, ledger_files, lengths(&l3_dir, "cold-")?))
        })
        .await??;
    let root = d
        .ledger
        .reader
        .root(head.size)
        .map_err(|e| AppError::internal(format!("ledger root: {e}")))?
        .map(hex::encode)
        .unwrap_or_default();
    let now = d.clock.now();
    let name = format!("daena-snapshot-{}-{:08}", crate::clock::compact_stamp(now), head.size);
    let (ledger_dir, l3_dir) = (d.data.ledger_dir(), d.data.l3_dir());
    let master_key_id = d.keyring.master_id().to_owned();
    let signing_key = crate::ledger::signing_key(&d.data)?;
    let target = dir.clone();
    let name2 = name.clone();
    let created_at = rfc3339(now);
    let manifest = tokio::task::spawn_blocking(move || -> AppResult<Manifest> {
        let staging = target.join(format!(".tmp-{name2}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| io(staging.display(), e))?;
        let result = (|| {
            let state = staging.join(STATE);
            let (tables, records) = view.copy_to(&state)?;
            drop(view);
            let part = target.join(format!("{name2}.tar.zst.part"));
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let file = open.open(&part).map_err(|e| io(part.display(), e))?;
            let enc = zstd::Encoder::new(file, 1).map_err(|e| io("zstd", e))?;
            let mut tar = tar::Builder::new(enc);
            let mut files = Vec::new();
            let state_len = std::fs::metadata(&state).map_err(|e| io(state.display(), e))?.len();
            files.push(add_file(&mut tar, &state, STATE, state_len)?);
            for (f, len) in &ledger_files {
                files.push(add_file(&mut tar, &ledger_dir.join(f), &format!("ledger/{f}"), *len)?);
            }
            for (f, len) in &l3_files {
                files.push(add_file(&mut tar, &l3_dir.join(f), &format!("l3/{f}"), *len)?);
            }
            let mut manifest = Manifest {
                format: FORMAT,
                name: name2.clone(),
                created_at,
                daena_version: env!("CARGO_PKG_VERSION").to_owned(),
                ledger_size: head.size,
                ledger_head_hash: hex::encode(head.hash),
                ledger_root: root,
                master_key_id,
                records,
                tables,
                files,
                archive_bytes: 0,
                seconds: 0.0,
            };
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io("manifest", e))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, MANIFEST, text.as_slice()).map_err(|e| io("manifest", e))?;
            let sig = serde_json::to_vec(&crate::backup_trust::sign(&signing_key, "snapshot", &text))
                .map_err(|e| io("manifest signature", e))?;
            let mut header = tar::Header::new_gnu();
            header.set_size(sig.len() as u64);
            header.set_mode(0o600);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, MANIFEST_SIG, sig.as_slice()).map_err(|e| io("manifest signature", e))?;
            let enc = tar.into_inner().map_err(|e| io("archive", e))?;
            let file = enc.finish().map_err(|e| io("zstd", e))?;
            file.sync_all().map_err(|e| io(part.display(), e))?;
            let archive = target.join(format!("{name2}.tar.zst"));
            std::fs::rename(&part, &archive).map_err(|e| io(archive.display(), e))?;
            manifest.archive_bytes = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
            Ok(manifest)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result
    })
    .await
    .map_err(|e| AppError::internal(format!("snapshot task: {e}")))??;
    let mut manifest = manifest;
    manifest.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let sidecar = dir.join(format!("{name}.manifest.json"));
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io("manifest", e))?;
    daena_store::datadir::write_atomic(&sidecar, &text, true).map_err(|e| io(sidecar.display(), e))?;
    // Ledgered after its position: the snapshot holds entries 1..=ledger_size.
    let entry = daena_core::ledger::NewEntry::new("system", "system", "ops.snapshot", manifest.name.clone()).attrs(
        serde_json::json!({
            "ledger_size": manifest.ledger_size,
            "ledger_root": manifest.ledger_root,
            "records": manifest.records,
            "archive_bytes": manifest.archive_bytes,
        }),
    );
    d.commit.append(vec![entry]).await?;
    Ok(manifest)
}

/// The snapshots in `dir`, oldest first, from their sidecar manifests.
pub fn list(dir: &Path) -> AppResult<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir.display(), e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io(dir.display(), e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".manifest.json"))
        else {
            continue;
        };
        let archive = dir.join(format!("{name}.tar.zst"));
        if !archive.exists() {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| io(path.display(), e))?;
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| io(path.display(), e))?;
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
    let file = std::fs::File::open(archive).map_err(|e| io(archive.display(), e))?;
    let dec = zstd::Decoder::new(file).map_err(|e| io(archive.display(), e))?;
    let mut tar = tar::Archive::new(dec);
    let mut seen: std::collections::BTreeMap<String, (u64, String)> = Default::default();
    let mut manifest: Option<Manifest> = None;
    let (mut manifest_bytes, mut signature) = (Vec::new(), None);
    std::fs::create_dir_all(staging).map_err(|e| io(staging.display(), e))?;
    for entry in tar.entries().map_err(|e| io(archive.display(), e))? {
        let mut entry = entry.map_err(|e| io(archive.display(), e))?;
        let path = entry.path().map_err(|e| io(archive.display(), e))?.to_string_lossy().into_owned();
        let safe = !path.is_empty()
            && !path.starts_with('/')
            && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && (path == MANIFEST
                || path == MANIFEST_SIG
                || path == STATE
                || path.starts_with("ledger/")
                || path.starts_with("l3/"));
        if !safe || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(AppError::invalid(format!("{}: unexpected entry {path:?}", archive.display())));
        }
        if path == MANIFEST {
            let mut text = Vec::new();
            entry.by_ref().take(1 << 24).read_to_end(&mut text).map_err(|e| io(archive.display(), e))?;
            manifest = Some(
                serde_json::from_slice(&text)
                    .map_err(|e| AppError::invalid(format!("{}: manifest: {e}", archive.display())))?,
            );
            manifest_bytes = text;
            continue;
        }
        if path == MANIFEST_SIG {
            let mut text = Vec::new();
            entry.by_ref().take(1 << 12).read_to_end(&mut text).map_err(|e| io(archive.display(), e))?;
            signature = Some(
                serde_json::from_slice::<crate::backup_trust::BackupSignature>(&text)
                    .map_err(|e| AppError::invalid(format!("{}: manifest signature: {e}", archive.display())))?,
            );
            continue;
        }
        let dest = staging.join(&path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent.display(), e))?;
        }
        let mut out = std::fs::File::create(&dest).map_err(|e| io(dest.display(), e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n_total = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| io(archive.display(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| io(dest.display(), e))?;
            n_total += n as u64;
        }
        out.sync_all().map_err(|e| io(dest.display(), e))?;
        seen.insert(path, (n_total, hex::encode(hasher.finalize())));
    }
    let manifest =
        manifest.ok_or_else(|| AppError::invalid(format!("{}: no manifest.json inside", archive.display())))?;
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
    let root = data.root();
    let stamp = stamp_now();
    let staging = root.join(format!(".restore-{stamp}"));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        let (mut manifest, provenance) = unpack_verified(data, archive, &staging, trust)?;
        manifest.archive_bytes = std::fs::metadata(archive).map_or(0, |m| m.len());
        let ledger = staging.join("ledger");
        let checkpoints = daena_store::ledger::read_checkpoints(&ledger).map_err(|e| io("snapshot ledger", e))?;
        let (summary, _) = daena_store::ledger::verify_path(&ledger, checkpoints, None, |_| {})
            .map_err(|e| io("snapshot ledger", e))?;
        if let Some(f) = &summary.failure {
            return Err(AppError::invalid(format!("the snapshot's ledger does not verify: {}", f.reason)));
        }
        if summary.entries != manifest.ledger_size || summary.root != manifest.ledger_root {
            return Err(AppError::invalid(format!(
                "the snapshot's ledger holds {} entries with root {}, its manifest says {} and {}",
                summary.entries, summary.root, manifest.ledger_size, manifest.ledger_root
            )));
        }
        adopt_master(data, loaded, &staging.join(STATE), &manifest.master_key_id)?;
        let carried = crate::governance::facts_set_aside(&data.ledger_dir(), &ledger)?;
        crate::governance::record_carried(&staging.join(STATE), &carried)?;
        let aside = swap_in(root, &staging, &stamp)?;
        Ok(RestoreReport {
            archive: archive.display().to_string(),
            manifest,
            replaced_dir: aside.display().to_string(),
            ledger_verified_entries: summary.entries,
            carried_forward: carried.len(),
            provenance,
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The outcome of a DR drill, as it is ledgered (`ops.drill`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    pub snapshot: String,
    pub passed: bool,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    /// Ledger entries written after the snapshot's position when the drill ended.
    pub rpo_entries: u64,
    /// Names of the checks that failed.
    #[serde(default)]
    pub failed_checks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ledgered {
    pub seq: u64,
}

/// Records a drill's outcome in the ledger.
pub async fn record_drill(d: &Daena, who: &crate::auth::Principal, r: &DrillRecord) -> AppResult<Ledgered> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if r.snapshot.is_empty()
        || r.snapshot.len() > 200
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastDrill {
    #[serde(flatten)]
    pub record: DrillRecord,
    pub at: String,
    pub seq: u64,
}

pub fn last_drill(d: &Daena) -> AppResult<Option<LastDrill>> {
    Ok(d.kv.get_doc(daena_store::kv::SETTINGS, LAST_DRILL)?)
}

/// Every record's table key, in order (for a drill's count and sampled reads, and archives),
/// after the commit thread has settled what it holds in memory into the store.
pub async fn record_keys(d: &Daena) -> AppResult<Vec<Vec<u8>>> {
    d.commit.settle().await?;
    Ok(d.kv.view()?.record_keys()?)
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

/// Moves the current state, ledger and L3 of `root` aside to `<root>/replaced/<stamp>/` and
/// the staged ones into their place; returns where the old ones went.
fn swap_in(root: &Path, staging: &Path, stamp: &str) -> AppResult<PathBuf> {
    // Two operations within one second get two directories.
    let mut aside = root.join("replaced").join(stamp);
    for n in 2.. {
        if !aside.exists() {
            break;
        }
        aside = root.join("replaced").join(format!("{stamp}-{n}"));
    }
    std::fs::create_dir_all(&aside).map_err(|e| io(aside.display(), e))?;
    for part in [STATE, "ledger", "l3"] {
        let current = root.join(part);
        if current.exists() {
            std::fs::rename(&current, aside.join(part)).map_err(|e| io(current.display(), e))?;
        }
    }
    // The signing key's public half stays with the key that signs from now on.
    if let Ok(p) = std::fs::read(aside.join("ledger/signing_key.pub")) {
        let _ = std::fs::write(staging.join("ledger/signing_key.pub"), p);
    }
    for part in [STATE, "ledger", "l3"] {
        let staged = staging.join(part);
        if staged.exists() {
            std::fs::rename(&staged, root.join(part)).map_err(|e| io(staged.display(), e))?;
        } else if part != STATE {
            std::fs::create_dir_all(root.join(part)).map_err(|e| io(part, e))?;
        }
    }
    Ok(aside)
}

fn stamp_now() -> String {
    use crate::clock::Clock;
    crate::clock::compact_stamp(crate::clock::SystemClock.now())
}
