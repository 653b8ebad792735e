//! Master key rotation and validation.
//!
//! A rotation wraps every tenant data key under a new master key in one transaction and makes
//! it the master from then on, gives every tenant a new data key version for new records, and
//! then seals every record again under it through the commit thread (ledgered, one record at
//! a time, with progress), while requests go on: old versions stay readable until then. With the master key in `keys/master.key`, the new key is
//! written to `keys/master.key.next` first, the retired one is kept as
//! `keys/retired/master-<id>.key` (so snapshots sealed under it can still be restored), and an
//! interrupted rotation is completed or undone at the next start (`keyring::finish_rotation`).
//! With `DAENA_MEMORY_AES_KEY`, the new key comes from `DAENA_MEMORY_AES_KEY_NEW` and the
//! operator switches the variable before the next start.
//!
//! Every rotation is a line of `keys/rotations.jsonl`, hash-chained (key ids and counts only,
//! never key material) and signed with the ledger's checkpoint signing key (Ed25519 over the
//! line's hash), and a `key.rotate` ledger entry, which the signed checkpoints cover.

use crate::Daena;
use crate::auth::Principal;
use crate::config::Secret;
use crate::error::{AppError, AppResult};
use crate::keyring::{self, MasterKey};
use crate::operations::Operation;
use daena_core::ids::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const ROTATIONS_FILE: &str = "rotations.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotationReport {
    pub dry_run: bool,
    pub old_key_id: String,
    pub new_key_id: String,
    pub tenants: usize,
    pub data_keys: usize,
    /// Tenants given a new data key version.
    pub new_data_key_versions: usize,
    /// Records sealed again under the new data keys (with --dry-run: records that would be).
    pub records_reencrypted: u64,
    pub reencryption: crate::memory::aging::ResealReport,
    pub ledger_seq: Option<u64>,
    pub next_step: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RotationLine {
    n: u64,
    at: String,
    old_key_id: String,
    new_key_id: String,
    tenants: usize,
    data_keys: usize,
    prev: String,
    hash: String,
    /// Ed25519 signature of `hash` (hex) by the ledger's checkpoint signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

fn line_hash(l: &RotationLine) -> String {
    let body =
        format!("{}\0{}\0{}\0{}\0{}\0{}\0{}", l.n, l.at, l.old_key_id, l.new_key_id, l.tenants, l.data_keys, l.prev);
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// The rotation lines and the first break in their chain (or, with `signer`, the first line
/// whose signature does not verify), if any.
fn read_chain(
    keys: &Path,
    signer: Option<&ed25519_dalek::VerifyingKey>,
) -> AppResult<(Vec<RotationLine>, Option<String>)> {
    let Some(text) = daena_store::datadir::read_optional(&keys.join(ROTATIONS_FILE))? else {
        return Ok((Vec::new(), None));
    };
    let mut lines = Vec::new();
    let mut prev = "0".repeat(64);
    for (i, raw) in text.lines().enumerate() {
        let l: RotationLine = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => return Ok((lines, Some(format!("line {}: {e}", i + 1)))),
        };
        if l.prev != prev || line_hash(&l) != l.hash || l.n != i as u64 + 1 {
            return Ok((lines, Some(format!("line {} breaks the chain", i + 1))));
        }
        if let Some(key) = signer {
            let sig = l.sig.as_deref().and_then(|s| hex::decode(s).ok()).and_then(|b| <[u8; 64]>::try_from(b).ok());
            let Some(sig) = sig else {
                return Ok((lines, Some(format!("line {} is not signed", i + 1))));
            };
            let sig = ed25519_dalek::Signature::from_bytes(&sig);
            if key.verify_strict(l.hash.as_bytes(), &sig).is_err() {
                return Ok((lines, Some(format!("line {}: the signature does not verify", i + 1))));
            }
        }
        prev = l.hash.clone();
        lines.push(l);
    }
    Ok((lines, None))
}

/// Rotates the master key (see the module). `new_key` is `DAENA_MEMORY_AES_KEY_NEW`, needed
/// when the master key comes from the environment.
pub async fn rotate(
    d: &Daena,
    who: &Principal,
    new_key: Option<&Secret>,
    dry_run: bool,
    progress: impl FnMut(u64, u64),
) -> AppResult<RotationReport> {
    let keys = d.data().keys_dir();
    let from_env = d.governance().data_keys().master_source() == "DAENA_MEMORY_AES_KEY";
    let old_id = d.governance().data_keys().master_id();
    let (new, bytes) = if from_env {
        let Some(secret) = new_key else {
            return Err(AppError::invalid(
                "the master key comes from DAENA_MEMORY_AES_KEY: stop the server and run `daena key rotate` with the \
                 new key in DAENA_MEMORY_AES_KEY_NEW, then start with DAENA_MEMORY_AES_KEY set to it",
            ));
        };
        let raw = keyring::parse_master_key(secret.expose(), "DAENA_MEMORY_AES_KEY_NEW")?;
        (MasterKey::from_bytes(raw, "DAENA_MEMORY_AES_KEY"), None)
    } else {
        let raw: [u8; 32] = rand::random();
        let path = keys.join(keyring::MASTER_KEY_FILE);
        (MasterKey::from_bytes(raw, &path.display().to_string()), Some(zeroize::Zeroizing::new(raw)))
    };
    if new.id == old_id {
        return Err(AppError::invalid("the new master key is the current one"));
    }
    let new_id = new.id.clone();
    if dry_run {
        let (tenants, data_keys) = d.governance().data_keys().rewrap(new, true)?;
        let (scanned, _) = crate::memory::aging::stale_records(d).await?;
        return Ok(RotationReport {
            dry_run,
            old_key_id: old_id,
            new_key_id: new_id,
            tenants,
            data_keys,
            new_data_key_versions: tenants,
            records_reencrypted: scanned,
            reencryption: crate::memory::aging::ResealReport { scanned, stale: scanned, ..Default::default() },
            ledger_seq: None,
            next_step: "run without --dry-run".into(),
        });
    }
    if let Some(raw) = &bytes {
        keyring::write_next_master(&keys, raw)?;
    }
    let (tenants, data_keys) = d.governance().data_keys().rewrap(new, false)?;
    if bytes.is_some() {
        keyring::finish_rotation_files(&keys, &old_id)?;
    }
    // New data key versions for new records, then every record sealed again under them.
    let new_versions = d.governance().data_keys().new_data_key_versions()?;
    let reencryption = reseal(d, who, progress).await?;
    let (chain, broken) = read_chain(&keys, None)?;
    if let Some(b) = broken {
        tracing::warn!("{ROTATIONS_FILE} was already broken ({b}); appending after its last good line");
    }
    let mut line = RotationLine {
        n: chain.len() as u64 + 1,
        at: crate::clock::rfc3339(d.clock().now()),
        old_key_id: old_id.clone(),
        new_key_id: new_id.clone(),
        tenants,
        data_keys,
        prev: chain.last().map_or_else(|| "0".repeat(64), |l| l.hash.clone()),
        hash: String::new(),
        sig: None,
    };
    line.hash = line_hash(&line);
    {
        use ed25519_dalek::Signer;
        let key = crate::ledger::signing_key(d.data())?;
        line.sig = Some(hex::encode(key.sign(line.hash.as_bytes()).to_bytes()));
    }
    let mut text: String = chain.iter().map(|l| serde_json::to_string(l).unwrap_or_default() + "\n").collect();
    text.push_str(&(serde_json::to_string(&line).map_err(|e| AppError::internal(e.to_string()))? + "\n"));
    daena_store::datadir::write_atomic(&keys.join(ROTATIONS_FILE), text.as_bytes(), true)?;
    let entry = daena_core::ledger::NewEntry::new(
        who.tenant().as_str(),
        who.actor(),
        "key.rotate",
        format!("master/{new_id}"),
    )
    .attrs(serde_json::json!({"old_key_id": old_id, "new_key_id": new_id, "tenants": tenants, "data_keys": data_keys}));
    let seq = d.commit().append(vec![entry]).await?.first().map(|r| r.seq);
    Ok(RotationReport {
        dry_run,
        old_key_id: old_id,
        new_key_id: new_id,
        tenants,
        data_keys,
        new_data_key_versions: new_versions,
        records_reencrypted: reencryption.resealed,
        reencryption,
        ledger_seq: seq,
        next_step: if from_env {
            "set DAENA_MEMORY_AES_KEY to the new key (the value of DAENA_MEMORY_AES_KEY_NEW) before the next start"
                .into()
        } else {
            "none: keys/master.key holds the new key; the retired one is in keys/retired/ for older snapshots".into()
        },
    })
}

/// Seals every record still under an older data key version of its tenant again, in passes
/// until none is left (writes sealed just before a switch may land after a scan); then the
/// compression dictionaries and LLM cache entries; then, when nothing is left under an older
/// version, retires those versions (`key.retire`, one entry per tenant). Run by a rotation,
/// and alone (`daena key reseal`) to finish one a crash interrupted.
pub async fn reseal(
    d: &Daena,
    who: &Principal,
    progress: impl FnMut(u64, u64),
) -> AppResult<crate::memory::aging::ResealReport> {
    let mut progress = progress;
    let mut report = crate::memory::aging::reseal_stale(d, &who.actor(), &mut progress).await?;
    for _ in 0..3 {
        let again = crate::memory::aging::reseal_stale(d, &who.actor(), &mut progress).await?;
        report.resealed += again.resealed;
        report.skipped += again.skipped;
        report.errors += again.errors;
        report.stale += again.stale;
        if again.stale == 0 {
            break;
        }
    }
    let (dictionaries, dictionaries_left) = crate::memory::dict::reseal_stale(d).await?;
    report.dictionaries_resealed = dictionaries;
    let (cache_entries, cache_left) = reseal_cache(d, who).await?;
    report.cache_entries_resealed = cache_entries;
    let (_, records_left) = crate::memory::aging::stale_records(d).await?;
    let left =
        [(records_left.len() as u64, "records"), (dictionaries_left, "dictionaries"), (cache_left, "cache entries")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect::<Vec<_>>();
    if !left.is_empty() {
        report.retirement_blocked =
            Some(format!("still under an older data key version: {}; run `daena key reseal` again", left.join(", ")));
        return Ok(report);
    }
    for (tenant, current, older) in d.governance().data_keys().older_versions()? {
        let op =
            crate::governance::GovOp::Retire { tenant: TenantId::new(&tenant)?, below: current, actor: who.actor() };
        crate::governance::submit(d, op).await?;
        report.data_keys_retired += older as u64;
    }
    Ok(report)
}

/// Seals every LLM cache entry under an older data key version again: (resealed, left under an
/// older version because it could not be).
async fn reseal_cache(d: &Daena, who: &Principal) -> AppResult<(u64, u64)> {
    let (mut resealed, mut left) = (0, 0);
    for m in d.cas().all() {
        let row = match d.cas().resealed(&m) {
            Ok(Some(row)) => row,
            Ok(None) => continue,
            Err(e) if e.code == crate::error::ErrorCode::NotFound => continue,
            Err(e) => {
                tracing::warn!(error = %e.message, "could not re-seal a cache entry");
                left += 1;
                continue;
            }
        };
        let op =
            crate::cas::CasOp::Reseal { tenant: m.tenant.clone(), key: m.key, row: Box::new(row), actor: who.actor() };
        match d.commit().submit(crate::state::Op::from(op)).await {
            Ok(_) => resealed += 1,
            Err(e) if e.code == crate::error::ErrorCode::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e.message, "re-sealing a cache entry failed");
                left += 1;
            }
        }
    }
    Ok((resealed, left))
}

/// Starts [`reseal`] through the server as a background operation (`key.reseal`).
pub fn start_reseal(d: &std::sync::Arc<Daena>, who: Principal) -> AppResult<Operation> {
    crate::replicas::single_node_only(d.config(), "re-sealing records")?;
    let op = d.operations().begin("key.reseal", &who.actor())?;
    let progress = d.operations().progress(&op.id, "re-encrypting records under the current data key versions");
    let (task_d, id) = (d.clone(), op.id.clone());
    tokio::spawn(async move {
        let result = reseal(&task_d, &who, progress).await;
        task_d.operations().finish_report(&id, result);
    });
    Ok(d.operations().get(&op.id).unwrap_or(op))
}

/// Starts a rotation through the server as a background operation (see [`crate::operations`]):
/// the answer comes at once, with the operation's record; its progress counts the records
/// sealed again. A dry run is counted before the answer.
pub async fn start(d: &std::sync::Arc<Daena>, who: Principal, dry_run: bool) -> AppResult<Operation> {
    crate::replicas::single_node_only(d.config(), "key rotation")?;
    let op = d.operations().begin("key.rotate", &who.actor())?;
    if dry_run {
        d.operations().finish_report(&op.id, rotate(d, &who, None, true, |_, _| {}).await);
        return Ok(d.operations().get(&op.id).unwrap_or(op));
    }
    d.operations().phase(&op.id, "re-wrapping the data keys under a new master key");
    let progress = d.operations().progress(&op.id, "re-encrypting records under the new data key versions");
    let (task_d, id) = (d.clone(), op.id.clone());
    tokio::spawn(async move {
        let result = rotate(&task_d, &who, None, false, progress).await;
        if let Err(e) = &result {
            tracing::error!(operation = %id, error = %e.message, "key rotation failed");
        }
        task_d.operations().finish_report(&id, result);
    });
    Ok(d.operations().get(&op.id).unwrap_or(op))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidationReport {
    pub ok: bool,
    pub master_key_id: String,
    pub rotations: usize,
    /// The first break in keys/rotations.jsonl, if any.
    pub chain_problem: Option<String>,
    /// Tenants with a data key wrapped by another (retired) master key.
    pub stale_tenants: Vec<String>,
    pub records: u64,
    /// Crypto-shredded tenants; their records sealed under destroyed keys are counted apart.
    pub shredded_tenants: Vec<String>,
    pub shredded_records: u64,
    /// Records that could not be read (at most 20 named).
    pub unreadable: Vec<String>,
    pub unreadable_count: u64,
    /// Records still sealed under an older data key version of their tenant.
    pub records_under_old_data_keys: u64,
    /// Data key versions older than their tenant's current one, not yet retired.
    pub older_data_keys: u64,
    /// The tenants holding them.
    pub tenants_with_older_data_keys: Vec<String>,
}

/// Checks the rotation chain, that every data key is under the current master key, that older
/// data key versions were retired, and that every record reads.
pub async fn validate(d: &std::sync::Arc<Daena>) -> AppResult<ValidationReport> {
    let signer = crate::ledger::signing_key(d.data())?.verifying_key();
    let (lines, chain_problem) = read_chain(&d.data().keys_dir(), Some(&signer))?;
    let stale_tenants = d.governance().data_keys().stale_tenants()?;
    let shredded_tenants = d.governance().data_keys().shredded_tenants()?;
    let (_, old_versions) = crate::memory::aging::stale_records(d).await?;
    let older = d.governance().data_keys().older_versions()?;
    let keys = crate::snapshot::record_keys(d).await?;
    let shredded = shredded_tenants.clone();
    let d2 = d.clone();
    let (records, shredded_records, unreadable, unreadable_count) = tokio::task::spawn_blocking(move || {
        let (mut bad, mut n_bad, mut n_shredded) = (Vec::new(), 0u64, 0u64);
        for k in &keys {
            let Err(e) = crate::memory::get_stored(&d2, k) else { continue };
            let tenant = daena_store::records::split_key(k).map(|(t, _, _)| t);
            // Sealed under a destroyed key: unreadable by design.
            if tenant.is_some_and(|t| shredded.iter().any(|s| s == t)) && e.message.contains("shredded") {
                n_shredded += 1;
            } else {
                n_bad += 1;
                if bad.len() < 20 {
                    bad.push(e.message);
                }
            }
        }
        (keys.len() as u64 - n_shredded, n_shredded, bad, n_bad)
    })
    .await
    .map_err(|e| AppError::internal(format!("validation task: {e}")))?;
    Ok(ValidationReport {
        ok: chain_problem.is_none()
            && stale_tenants.is_empty()
            && unreadable_count == 0
            && old_versions.is_empty()
            && older.is_empty(),
        older_data_keys: older.iter().map(|(_, _, n)| *n as u64).sum(),
        tenants_with_older_data_keys: older.into_iter().map(|(t, _, _)| t).collect(),
        records_under_old_data_keys: old_versions.len() as u64,
        master_key_id: d.governance().data_keys().master_id(),
        rotations: lines.len(),
        chain_problem,
        stale_tenants,
        records,
        shredded_tenants,
        shredded_records,
        unreadable,
        unreadable_count,
    })
}

/// The key store's status with the rotation history (`GET /api/v1/admin/key-status`).
pub fn status(d: &Daena) -> AppResult<keyring::KeyStatus> {
    let mut st = d.governance().data_keys().status()?;
    let (lines, _) = read_chain(&d.data().keys_dir(), None)?;
    if let Some(last) = lines.last() {
        st.rotations = lines.len() as u64;
        st.last_rotation_at = Some(last.at.clone());
        if let Some(t) = crate::clock::parse_rfc3339(&last.at) {
            st.master_key_age_days = (d.clock().now().days_since(t) * 10.0).round() / 10.0;
        }
    }
    Ok(st)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShredReport {
    pub tenant: String,
    pub data_keys_destroyed: usize,
    /// The tenant's LLM cache entries, evicted through the ledger first.
    pub cache_entries_evicted: usize,
    /// The tenant's records, unreadable from now on (they stay, sealed, as does the ledger).
    pub records_unreadable: u64,
    pub ledger_seq: Option<u64>,
}

/// Crypto-shreds a tenant: evicts its LLM cache entries, destroys its data keys, purges its
/// decoded records from L1. Its records and ledger entries stay, sealed and unreadable; the
/// ledger still verifies. `confirm` must repeat the tenant id. Snapshots taken before still
/// hold the wrapped keys: delete them too, or the data can be restored.
pub async fn shred(
    d: &Daena,
    who: &Principal,
    tenant: &daena_core::ids::TenantId,
    confirm: &str,
) -> AppResult<ShredReport> {
    if confirm != tenant.as_str() {
        return Err(AppError::invalid(format!(
            "crypto-shredding destroys tenant {tenant}'s data for good: confirm by repeating the tenant id"
        )));
    }
    let mut evicted = 0;
    for m in d.cas().all().into_iter().filter(|m| m.tenant == tenant.as_str()) {
        let op = crate::cas::CasOp::Evict { tenant: m.tenant.clone(), key: m.key, reason: "shred", actor: who.actor() };
        if d.commit().submit(crate::state::Op::from(op)).await.is_ok() {
            evicted += 1;
        }
    }
    let prefix = daena_store::records::tenant_prefix(tenant.as_str());
    let records = crate::snapshot::record_keys(d).await?.iter().filter(|k| k.starts_with(&prefix)).count() as u64;
    let (through, _) = d.governance().data_keys().versions(tenant.as_str())?;
    let destroyed = d.governance().data_keys().count_through(tenant.as_str(), through)?;
    let op = crate::governance::GovOp::Shred {
        tenant: tenant.clone(),
        actor: who.actor(),
        through: Some(through),
        evicted,
        records,
        carried_from: None,
    };
    let seq = Some(crate::governance::submit(d, op).await?);
    Ok(ShredReport {
        tenant: tenant.to_string(),
        data_keys_destroyed: destroyed,
        cache_entries_evicted: evicted,
        records_unreadable: records,
        ledger_seq: seq,
    })
}
