//! `daena ledger verify|export|checkpoint|import-legacy`.

use super::{Target, load_config, target};
use crate::cli::{Global, LedgerCommand};
use crate::output::Progress;
use anyhow::{Context, bail};
use daena_app::auth::Principal;
use daena_app::clock::rfc3339;
use daena_app::ledger::{CheckpointView, LegacyImport, Manifest};
use daena_core::ids::TenantId;
use daena_core::ledger::{Checkpoint, legacy};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub async fn run(global: &Global, cmd: LedgerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LedgerCommand::Verify { ledger, checkpoint, public_key, legacy } => {
            if legacy {
                let path = ledger.unwrap_or_else(|| PathBuf::from(".ledger/ledger.jsonl"));
                verify_legacy(global, &path)
            } else {
                let path = match ledger {
                    Some(p) => p,
                    None => load_config(global, Vec::new())?.config.data_dir.join("ledger"),
                };
                verify(global, &path, &checkpoint, public_key.as_deref())
            }
        }
        LedgerCommand::Export { out } => {
            let manifest: Manifest = match target(global, "ledger export")? {
                Target::Remote(r) => r.get("/api/v1/ledger/manifest").await?,
                Target::Offline(d) => {
                    let m = daena_app::ledger::manifest(&d).map_err(|e| anyhow::anyhow!(e.message))?;
                    d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
                    m
                }
            };
            write_json(&out, &manifest)?;
            if global.json {
                crate::output::json(&manifest)?;
            } else {
                println!("wrote {}: {} entries, root {}", out.display(), manifest.entries, manifest.merkle_root);
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCommand::Checkpoint { out } => {
            let cp: CheckpointView = match target(global, "ledger checkpoint")? {
                Target::Remote(r) => r.get("/api/v1/ledger/checkpoint?fresh=true").await?,
                Target::Offline(d) => {
                    let cp = daena_app::ledger::checkpoint(&d, true).await.map_err(|e| anyhow::anyhow!(e.message))?;
                    d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
                    cp
                }
            };
            write_json(&out, &cp.to_checkpoint())?;
            if global.json {
                crate::output::json(&cp)?;
            } else {
                println!(
                    "wrote {}: checkpoint of {} entries, root {}, signed by {}",
                    out.display(),
                    cp.size,
                    cp.root,
                    cp.public_key
                );
                println!(
                    "Keep it outside this machine; `daena ledger verify --checkpoint {}` proves the ledger later.",
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCommand::ImportLegacy { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let imported: LegacyImport = match target(global, "ledger import-legacy")? {
                Target::Remote(r) => r.post_text("/api/v1/admin/ledger/import-legacy", text).await?,
                Target::Offline(d) => {
                    let who = Principal::local_operator(TenantId::default_tenant());
                    let result = daena_app::ledger::import_legacy(&d, &who, &text).await;
                    d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
                    result.map_err(|e| anyhow::anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&imported)?;
            } else {
                println!(
                    "adopted {} legacy entries (Merkle root {}) as ledger entry {}",
                    imported.legacy_entries,
                    imported.legacy_merkle_root.as_deref().unwrap_or("-"),
                    imported.seq
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads a checkpoint from a file: a checkpoint as `ledger checkpoint` writes it, or a
/// manifest from `ledger export` carrying one.
fn read_checkpoint(path: &Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(cp) = serde_json::from_str::<Checkpoint>(&text) {
        return Ok(cp);
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let inner = v
        .get("checkpoint")
        .filter(|c| !c.is_null())
        .with_context(|| format!("{} holds no checkpoint", path.display()))?;
    let view: CheckpointView = serde_json::from_value(inner.clone())
        .or_else(|_| serde_json::from_value::<Checkpoint>(inner.clone()).map(|c| CheckpointView::from(&c)))
        .with_context(|| format!("{}: malformed checkpoint", path.display()))?;
    Ok(view.to_checkpoint())
}

fn verify(global: &Global, path: &Path, extra: &[PathBuf], public_key: Option<&str>) -> anyhow::Result<ExitCode> {
    if !path.exists() {
        bail!("no ledger at {}", path.display());
    }
    let mut checkpoints = Vec::new();
    if path.is_dir() {
        checkpoints.extend(daena_store::ledger::read_checkpoints(path)?);
    }
    for file in extra {
        checkpoints.push(read_checkpoint(file)?);
    }
    let given = extra.len();
    let mut progress = Progress::new("verifying", None);
    let started = std::time::Instant::now();
    let mut seen = 0u64;
    let (summary, end) = daena_store::ledger::verify_path(path, checkpoints, public_key, |n| {
        progress.inc(n - seen);
        seen = n;
    })?;
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    if global.json {
        crate::output::json(&serde_json::json!({
            "ok": summary.ok(),
            "ledger": path.display().to_string(),
            "entries": summary.entries,
            "merkle_root": summary.root,
            "first_hash": summary.first_hash,
            "last_hash": summary.last_hash,
            "first_time": summary.first_ts.map(rfc3339),
            "last_time": summary.last_ts.map(rfc3339),
            "checkpoints_verified": summary.checkpoints_verified,
            "checkpoints_given": given,
            "torn_tail_bytes": end.torn_bytes,
            "first_bad_seq": summary.failure.as_ref().and_then(|f| f.seq),
            "failure": summary.failure.as_ref().map(|f| f.reason.clone()),
            "seconds": secs,
        }))?;
    } else {
        println!("ledger:      {}", path.display());
        println!("entries:     {}", summary.entries);
        println!("merkle root: {}", summary.root);
        if let (Some(first), Some(last)) = (&summary.first_hash, &summary.last_hash) {
            println!("first hash:  {first}");
            println!("last hash:   {last}");
        }
        println!("checkpoints: {} verified {:?}", summary.checkpoints_verified.len(), summary.checkpoints_verified);
        if end.torn_bytes > 0 {
            println!(
                "note:        {} bytes after the last complete line (a write in flight, or a torn tail)",
                end.torn_bytes
            );
        }
        match &summary.failure {
            None => println!("result:      OK ({:.0} entries/s)", summary.entries as f64 / secs.max(1e-9)),
            Some(f) => match f.seq {
                Some(seq) => println!("result:      FAILED at sequence number {seq}: {}", f.reason),
                None => println!("result:      FAILED: {}", f.reason),
            },
        }
    }
    Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn verify_legacy(global: &Global, path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report = legacy::verify(&text);
    if global.json {
        crate::output::json(&serde_json::json!({
            "ok": report.ok(),
            "ledger": path.display().to_string(),
            "format": "legacy-python",
            "report": report,
        }))?;
    } else {
        println!("legacy ledger: {}", path.display());
        println!("entries:       {}", report.entries);
        println!("first txid:    {}", report.first_txid.as_deref().unwrap_or("-"));
        println!("last txid:     {}", report.last_txid.as_deref().unwrap_or("-"));
        println!("merkle root:   {}", report.merkle_root.as_deref().unwrap_or("-"));
        println!("chained:       {} entries name their predecessor", report.chained);
        for p in report.problems.iter().take(20) {
            println!("problem:       line {}: {}", p.line, p.reason);
        }
        if report.problems.len() > 20 {
            println!("problem:       ... {} more", report.problems.len() - 20);
        }
        println!("result:        {}", if report.ok() { "OK" } else { "FAILED" });
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
