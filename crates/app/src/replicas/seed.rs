//! Seeds: a replica started on an empty data directory while the state PostgreSQL keeps
//! awaits a rebuild (it starts from that state otherwise: [`super::start_from_postgres`])
//! begins from the newest snapshot the lease holder wrote under `<storage.l3_path>/seeds/`,
//! and replays only the entries after it instead of the whole chain.
//!
//! A seed is a snapshot archive (the same format, signed with the deployment's shared key) of
//! the lease holder's copy: its state, its copy of the ledger and its cold segments. The new
//! replica checks it as a restore does (every file against the manifest, the signature, the
//! ledger chain and its root; PostgreSQL then checks that the copy is a prefix of the shared
//! chain), leaves out what the lease holder observed on its own (its analytics, cache
//! counters and dashboard history: each replica publishes its own), and puts the cold segments
//! in its own directory. A seed that fails a check is skipped with a warning, and the replica
//! rebuilds from the whole chain as it would without seeds.

use super::Replicas;
use crate::config::{Config, StorageBackend};
use crate::error::AppResult;
use crate::snapshot::{self, Manifest};
use daena_store::backup::{self, STATE_FILE};
use daena_store::datadir::{DataDir, list_dir};
use daena_store::kv::{DocTable, Kv};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seconds between seeds when `storage.seed_every_secs` is not set.
pub const DEFAULT_EVERY_SECS: u64 = 3600;
/// Seeds kept: the newest, and the one before it for a replica still reading it.
const KEEP: usize = 2;

/// How often the lease holder writes a seed; `None` when seeds are off (the embedded backend,
/// no `storage.l3_path`, or `storage.seed_every_secs = 0`).
pub fn every(config: &Config) -> Option<Duration> {
    if config.storage.backend != StorageBackend::Postgres || config.storage.l3_path.is_none() {
        return None;
    }
    match config.storage.seed_every_secs.unwrap_or(DEFAULT_EVERY_SECS) {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    }
}

/// Where seeds are kept; `None` when they are off.
fn dir(config: &Config) -> Option<PathBuf> {
    every(config)?;
    config.storage.l3_path.as_ref().map(|p| p.join("seeds"))
}

/// Writes a seed of this replica's copy when the chain grew since the newest seed (run by the
/// lease holder); its manifest, or `None` when there was nothing new.
pub async fn write(d: &crate::Daena) -> AppResult<Option<Manifest>> {
    let Some(dir) = dir(d.config()) else { return Ok(None) };
    let size = d.ledger().reader.head().size;
    let newest = snapshot::list(&dir)?.last().map(|(_, m)| m.ledger_size);
    if size == 0 || newest.is_some_and(|n| n >= size) {
        return Ok(None);
    }
    let m = snapshot::write(d, &dir, "daena-seed").await?;
    tracing::info!(seed = %m.name, entries = m.ledger_size, bytes = m.archive_bytes, "wrote a seed for new replicas");
    for (archive, old) in snapshot::list(&dir)?.iter().rev().skip(KEEP) {
        for path in [archive.clone(), dir.join(format!("{}.manifest.json", old.name))] {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "removing an old seed failed");
            }
        }
    }
    Ok(Some(m))
}

/// What `/health` says of seeds: off, none yet, or the newest.
pub fn describe(config: &Config) -> String {
    let Some(dir) = dir(config) else {
        return "seeds are off (no storage.l3_path, or storage.seed_every_secs = 0): a replica started on an \
                empty data directory copies the state PostgreSQL keeps, or applies the whole chain while that \
                awaits a rebuild"
            .to_owned();
    };
    match snapshot::list(&dir) {
        Ok(seeds) => match seeds.last() {
            Some((_, m)) => format!(
                "the newest seed for new replicas covers {} entries ({}, written {})",
                m.ledger_size, m.name, m.created_at
            ),
            None => "no seed yet: the lease holder writes one once the chain has grown".to_owned(),
        },
        Err(e) => format!("the seeds in {} cannot be listed: {}", dir.display(), e.message),
    }
}

/// Starts an empty data directory from the newest seed; the ledger position it starts at, or
/// `None` (no seed, a directory that is not empty, or a seed that failed a check).
pub fn start_from(config: &Config, data: &DataDir, r: &Replicas) -> AppResult<Option<u64>> {
    let Some(dir) = dir(config) else { return Ok(None) };
    if !empty(data)? {
        return Ok(None);
    }
    let newest = match snapshot::list(&dir) {
        Ok(mut seeds) => seeds.pop(),
        Err(e) => {
            tracing::warn!(error = %e.message, dir = %dir.display(), "the seeds cannot be listed; rebuilding from the whole chain");
            None
        }
    };
    let Some((archive, _)) = newest else { return Ok(None) };
    let stamp = crate::clock::compact_stamp(crate::clock::Clock::now(&crate::clock::SystemClock));
    let staged = backup::Staging::new(data.root(), "seed", &stamp)?;
    let manifest = match check(data, &archive, staged.path()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e.message, seed = %archive.display(), "skipping the seed; rebuilding from the whole chain");
            return Ok(None);
        }
    };
    super::put_in_place(config, data, r, staged.path(), &stamp)?;
    tracing::info!(
        seed = %manifest.name,
        entries = manifest.ledger_size,
        "started from the seed; only the entries after it are copied and applied"
    );
    Ok(Some(manifest.ledger_size))
}

/// Whether `data` holds no state and no ledger yet.
pub(super) fn empty(data: &DataDir) -> AppResult<bool> {
    if data.state_db().exists() {
        return Ok(false);
    }
    let segments = list_dir(&data.ledger_dir())?;
    Ok(!segments.iter().any(|e| e.file_name().to_string_lossy().starts_with("seg-")))
}

/// Unpacks `archive` into `staging` and checks it as a restore does; leaves out what the
/// replica that wrote it observed on its own.
fn check(data: &DataDir, archive: &Path, staging: &Path) -> AppResult<Manifest> {
    let trust = crate::backup_trust::Trust { trust_unsigned: false, public_key: None };
    let (manifest, _) = snapshot::unpack_verified(data, archive, staging, &trust)?;
    snapshot::verify_unpacked_ledger(&staging.join("ledger"), &manifest, "seed")?;
    forget_observed(&staging.join(STATE_FILE))?;
    Ok(manifest)
}

/// What a replica observes on its own and publishes under its id: a seed carries the writer's,
/// which the new replica must not publish again as its own.
const OBSERVED: [DocTable; 3] = [crate::analytics::LOCAL, daena_cache::stats::LOCAL, crate::dashboard::LOCAL];

fn forget_observed(state: &Path) -> AppResult<()> {
    let kv = Kv::open(state, 1 << 20)?;
    for table in OBSERVED {
        for (key, _) in kv.scan_docs::<serde_json::Value>(table)? {
            kv.delete_doc(table, &key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_store::kv::doc_table;

    /// A seed that cannot be read leaves the replica to rebuild from the whole chain: it never
    /// stops a start.
    #[test]
    fn an_unreadable_seed_leaves_the_replica_to_rebuild() {
        let db = daena_store::pg::TestDatabase::create();
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Postgres;
        config.storage.postgres_url = Some(db.url.clone());
        config.storage.l3_path = Some(tmp.path().join("shared"));
        config.data_dir = tmp.path().join("data");
        let info = daena_store::datadir::LockInfo { pid: std::process::id(), listen: None, holder: "test".into() };
        let data = DataDir::open(&config.data_dir, &info).expect("data dir");
        let r = Replicas::open(&config, &data, false, daena_core::time::Micros(0)).expect("open").expect("a replica");
        let seeds = tmp.path().join("shared/seeds");
        std::fs::create_dir_all(&seeds).expect("seeds dir");
        std::fs::write(seeds.join("daena-seed-1.tar.zst"), b"not an archive").expect("write");
        std::fs::write(seeds.join("daena-seed-1.manifest.json"), b"{not json").expect("write");
        assert_eq!(start_from(&config, &data, &r).expect("start"), None, "an unreadable manifest");
        let manifest = serde_json::json!({"format": 1, "name": "daena-seed-1", "created_at": "", "daena_version": "",
            "ledger_size": 3, "ledger_head_hash": "", "ledger_root": "", "master_key_id": "", "records": 0,
            "tables": [], "files": []});
        std::fs::write(seeds.join("daena-seed-1.manifest.json"), manifest.to_string()).expect("write");
        assert_eq!(start_from(&config, &data, &r).expect("start"), None, "an archive that does not unpack");
        assert!(!data.state_db().exists() && empty(&data).expect("empty"), "nothing was put in place");
    }

    /// A seed keeps what the chain decided and drops what its writer observed itself, which
    /// the new replica would otherwise publish again as its own (counted twice).
    #[test]
    fn a_seed_leaves_out_what_its_writer_observed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        let decided = doc_table("rate_limit_overrides");
        {
            let kv = Kv::open(&path, 1 << 20).expect("kv");
            for table in OBSERVED {
                kv.put_doc(table, "acme", &serde_json::json!({"n": 1})).expect("put");
                kv.put_doc(table, "other", &serde_json::json!({"n": 2})).expect("put");
            }
            kv.put_doc(decided, "acme", &serde_json::json!({"rpm": 60, "burst": 10})).expect("put");
        }
        forget_observed(&path).expect("forget");
        let kv = Kv::open(&path, 1 << 20).expect("kv");
        for table in OBSERVED {
            assert!(kv.scan_docs::<serde_json::Value>(table).expect("scan").is_empty(), "{}", table.name());
        }
        assert_eq!(kv.scan_docs::<serde_json::Value>(decided).expect("scan").len(), 1, "the chain's state stays");
    }
}
