//! Point-in-time rollback and rebuilds: a new state built from a prefix of the ledger (or from
//! a snapshot's ledger) by replaying it, then swapped in while the service is stopped.

use super::*;
use crate::error::{AppError, AppResult};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A ledger that cannot be read is the caller's input problem; anything else is ours.
fn ledger_error(e: daena_store::StoreError) -> AppError {
    match e {
        daena_store::StoreError::Corrupt { .. } => AppError::invalid(format!("the ledger: {e}")),
        other => AppError::from(other),
    }
}

/// The sequence number `to` names: a number, or the last entry at or before an RFC 3339 time.
pub fn resolve_point(ledger: &Path, to: &str) -> AppResult<u64> {
    if let Ok(seq) = to.parse::<u64>() {
        return Ok(seq);
    }
    let t = crate::clock::parse_rfc3339(to)
        .ok_or_else(|| AppError::invalid(format!("--to {to:?} is neither a sequence number nor an RFC 3339 time")))?;
    daena_store::ledger::last_at_or_before(ledger, t.0).map_err(ledger_error)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The state is now as it was after this entry.
    pub to_seq: u64,
    pub previous_head: u64,
    pub snapshot: String,
    pub snapshot_position: u64,
    /// Entries after the snapshot applied again at the next open.
    pub replayed_entries: u64,
    /// Entries after `to_seq`, kept with the replaced state.
    pub set_aside_entries: u64,
    pub replaced_dir: String,
    /// Revocations and shreds among the entries set aside, applied again to the new state.
    pub carried_forward: usize,
    /// Who vouched for the snapshot: this deployment, a pinned key, or nobody.
    pub provenance: crate::backup_trust::Provenance,
}

/// Point-in-time recovery of a stopped data directory: the newest snapshot at or before
/// `to`, plus the current ledger's entries up to `to`, which the next open applies again.
/// The current state, ledger and L3 are moved aside, never deleted.
pub fn rollback(
    loaded: &crate::config::LoadedConfig,
    to: &str,
    trust: crate::backup_trust::Trust,
) -> AppResult<RollbackReport> {
    rebuild(loaded, Rebuild { ledger: None, snapshot: None, to: Some(to), holder: "rollback", trust })
}

/// What to rebuild a stopped data directory from.
#[derive(Debug, Clone)]
pub struct Rebuild<'a> {
    /// A ledger directory (default: the data directory's own).
    pub ledger: Option<&'a Path>,
    /// A snapshot archive (default: the newest in `<data>/snapshots` at or before the point).
    pub snapshot: Option<&'a Path>,
    /// A sequence number or RFC 3339 time (default: the ledger's end).
    pub to: Option<&'a str>,
    /// `rollback` (the point must be before the end) or `replay`.
    pub holder: &'static str,
    /// Whose snapshot signature is accepted.
    pub trust: crate::backup_trust::Trust,
}

/// Rebuilds the state of a stopped data directory from a snapshot and the ledger entries after
/// it, up to a point: the snapshot is unpacked and verified, the ledger's entries up to the
/// point are copied beside it (checked to continue the snapshot's head hash, and verified),
/// the master key is checked, and only then are the current state, ledger and L3 moved aside
/// to `<data>/replaced/<time>/`; the next open applies the entries after the snapshot.
pub fn rebuild(loaded: &crate::config::LoadedConfig, spec: Rebuild<'_>) -> AppResult<RollbackReport> {
    let data = lock_stopped(&loaded.config.data_dir, spec.holder)?;
    rebuild_in(&data, loaded, spec)
}

/// [`rebuild`] in a data directory this process holds with no store open (`daena serve`
/// during maintenance).
pub fn rebuild_in(
    data: &daena_store::datadir::DataDir,
    loaded: &crate::config::LoadedConfig,
    spec: Rebuild<'_>,
) -> AppResult<RollbackReport> {
    crate::replicas::single_node_only(&loaded.config, "a rollback or replay")?;
    let root = data.root();
    let ledger = spec.ledger.map_or_else(|| data.ledger_dir(), Path::to_path_buf);
    if !ledger.is_dir() {
        return Err(AppError::invalid(format!("{} is not a ledger directory", ledger.display())));
    }
    let mut head = 0u64;
    daena_store::ledger::stream_dir(&ledger, |_| head += 1).map_err(|e| io("ledger", e))?;
    let to_seq = match spec.to {
        Some(to) => resolve_point(&ledger, to)?,
        None => head,
    };
    if to_seq > head || (spec.holder == "rollback" && to_seq >= head) {
        return Err(AppError::invalid(format!(
            "the ledger ends at {head}; the point {to_seq} is not {} it",
            if spec.holder == "rollback" { "before" } else { "within" }
        )));
    }
    let archive = match spec.snapshot {
        Some(p) => p.to_path_buf(),
        None => {
            let snapshots = list(&data.snapshots_dir())?;
            match snapshots.iter().rev().find(|(_, m)| m.ledger_size <= to_seq) {
                Some((p, _)) => p.clone(),
                None => {
                    let earliest = snapshots.first().map_or("none".to_owned(), |(_, m)| m.ledger_size.to_string());
                    return Err(AppError::invalid(format!(
                        "no snapshot at or before entry {to_seq} (earliest snapshot position: {earliest}); \
                         one is needed, as the data keys live in the state"
                    )));
                }
            }
        }
    };
    let stamp = stamp_now();
    let staged = backup::Staging::new(root, spec.holder, &stamp)?;
    let staging = staged.path();
    {
        let (chosen, provenance) = unpack_verified(data, &archive, staging, &spec.trust)?;
        if chosen.ledger_size > to_seq {
            return Err(AppError::invalid(format!(
                "snapshot {} is at entry {}, after the point {to_seq}",
                chosen.name, chosen.ledger_size
            )));
        }
        let staged_ledger = staging.join("ledger");
        let (copied, mark) = daena_store::ledger::copy_prefix(&ledger, &staged_ledger, to_seq, chosen.ledger_size)
            .map_err(ledger_error)?;
        if chosen.ledger_size > 0 && mark.as_deref() != Some(chosen.ledger_head_hash.as_str()) {
            return Err(AppError::invalid(format!(
                "snapshot {} is not of this ledger: its entry {} differs",
                chosen.name, chosen.ledger_size
            )));
        }
        let checkpoints = daena_store::ledger::read_checkpoints(&staged_ledger).map_err(|e| io("ledger", e))?;
        let (summary, _) =
            daena_store::ledger::verify_path(&staged_ledger, checkpoints, None, |_| {}).map_err(|e| io("ledger", e))?;
        if let Some(f) = &summary.failure {
            return Err(AppError::invalid(format!("the ledger up to {to_seq} does not verify: {}", f.reason)));
        }
        if copied != to_seq || summary.entries != to_seq {
            return Err(AppError::invalid(format!("copied {copied} entries, expected {to_seq}")));
        }
        adopt_master(data, loaded, &staging.join(STATE), &chosen.master_key_id)?;
        // Tenants whose first write came after the snapshot have their data key only in the
        // current state; the entries replayed at open need it.
        let current = root.join(STATE);
        if current.exists() {
            crate::keyring::merge_missing_data_keys(&staging.join(STATE), &current)?;
            let master = crate::keyring::load_master(data, loaded.secrets.memory_aes_key.as_ref())?;
            crate::keyring::check_master(&staging.join(STATE), &master)?;
        }
        let carried = crate::governance::facts_set_aside(&data.ledger_dir(), &staged_ledger)?;
        crate::governance::record_carried(&staging.join(STATE), &carried)?;
        let l3 = crate::service::cold_dir(&loaded.config, data, None);
        let aside = backup::swap_in(root, &l3, staging, &stamp)?;
        Ok(RollbackReport {
            to_seq,
            previous_head: head,
            snapshot: chosen.name.clone(),
            snapshot_position: chosen.ledger_size,
            replayed_entries: to_seq - chosen.ledger_size,
            set_aside_entries: head - to_seq,
            replaced_dir: aside.display().to_string(),
            carried_forward: carried.len(),
            provenance,
        })
    }
}

/// Makes a snapshot's state openable with the current master key: as it is, or, when it was
/// sealed under a master key retired by a rotation and kept in `keys/retired/`, by re-wrapping
/// its data keys under the current one.
pub(super) fn adopt_master(
    data: &daena_store::datadir::DataDir,
    loaded: &crate::config::LoadedConfig,
    state: &Path,
    sealed_under: &str,
) -> AppResult<()> {
    let master = crate::keyring::load_master(data, loaded.secrets.memory_aes_key.as_ref())?;
    let Err(e) = crate::keyring::check_master(state, &master) else {
        return Ok(());
    };
    let Some(old) = crate::keyring::retired_master(&data.keys_dir(), sealed_under) else {
        return Err(AppError::invalid(format!(
            "the current master key cannot open this snapshot's data keys (sealed under master key id \
             {sealed_under}, which is not in keys/retired/): {}; set DAENA_MEMORY_AES_KEY to that key",
            e.message
        )));
    };
    crate::keyring::check_master(state, &old)?;
    crate::keyring::rewrap_file(state, &old, &master)?;
    crate::keyring::check_master(state, &master)
}
