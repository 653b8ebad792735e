//! `daena snapshot create|list|restore`.

use super::{Target, load_config, target};
use crate::cli::{Global, SnapshotCommand};
use anyhow::{anyhow, bail};
use daena_app::backup_trust::Trust;
use daena_app::operations;
use daena_app::snapshot::{self, Manifest};
use daena_app::{Daena, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;

fn describe(m: &Manifest) -> String {
    format!(
        "{}: ledger position {}, {} records, {} files, {:.1} MiB compressed",
        m.name,
        m.ledger_size,
        m.records,
        m.files.len(),
        m.archive_bytes as f64 / (1 << 20) as f64
    )
}

pub async fn run(global: &Global, cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCommand::Create => {
            let m: Manifest = match target(global, "snapshot create")? {
                Target::Remote(r) => r.post("/api/v1/admin/snapshots", &serde_json::json!({})).await?,
                Target::Offline(d) => {
                    let m = snapshot::create(&d).await;
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    m.map_err(|e| anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&m)?;
            } else {
                println!("created {} in {:.2}s", describe(&m), m.seconds);
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::List => {
            let loaded = load_config(global, Vec::new())?;
            let dir = loaded.config.data_dir.join("snapshots");
            let list: Vec<Manifest> =
                snapshot::list(&dir).map_err(|e| anyhow!(e.message))?.into_iter().map(|(_, m)| m).collect();
            if global.json {
                crate::output::json(&list)?;
            } else if list.is_empty() {
                println!("no snapshots in {}", dir.display());
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.created_at.clone(),
                            m.ledger_size.to_string(),
                            m.records.to_string(),
                            format!("{:.1}", m.archive_bytes as f64 / (1 << 20) as f64),
                        ]
                    })
                    .collect();
                crate::output::table(&["name", "created", "ledger position", "records", "MiB"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Restore { file, trust } => {
            let trust: daena_app::backup_trust::Trust = trust.into();
            let loaded = load_config(global, Vec::new())?;
            let root = loaded.config.data_dir.clone();
            let report: snapshot::RestoreReport = if daena_store::datadir::is_locked(&root) {
                let remote = super::remote(global, &root)?;
                let snapshot = if file == "latest" { file } else { absolute(&file)? };
                let body = serde_json::json!({"snapshot": snapshot, "trust_unsigned": trust.trust_unsigned,
                    "public_key": trust.public_key});
                let op = remote.post("/api/v1/admin/restores", &body).await?;
                crate::client::finished(remote.wait_operation(op).await?)?
            } else {
                let archive = if file == "latest" {
                    let list = snapshot::list(&root.join("snapshots")).map_err(|e| anyhow!(e.message))?;
                    match list.last() {
                        Some((path, _)) => path.clone(),
                        None => bail!("no snapshots in {}/snapshots", root.display()),
                    }
                } else {
                    PathBuf::from(&file)
                };
                if !archive.is_file() {
                    bail!("no snapshot archive at {}", archive.display());
                }
                eprintln!("verifying {} ...", archive.display());
                let report = snapshot::restore(&loaded, &archive, &trust).map_err(|e| anyhow!(e.message))?;
                let value = serde_json::to_value(&report)?;
                reopen_and_ledger(global, "restore", value, None).await?;
                report
            };
            if global.json {
                crate::output::json(&report)?;
            } else {
                println!("restored {}", describe(&report.manifest));
                println!("ledger verified: {} entries", report.ledger_verified_entries);
                println!("the replaced state is kept in {}", report.replaced_dir);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An absolute form of a path given on the command line, for a server that may run elsewhere.
fn absolute(path: &str) -> anyhow::Result<String> {
    let p = std::path::Path::new(path);
    let abs = std::fs::canonicalize(p).map_err(|e| anyhow!("{path}: {e}"))?;
    Ok(abs.display().to_string())
}

/// Opens the directory a restore or rebuild produced, as the server will (which proves it
/// comes up and applies the ledger entries after the snapshot), checks the ledger ends at
/// `expect_head` when given, and ledgers the operation (`ops.<kind>`).
async fn reopen_and_ledger(
    global: &Global,
    kind: &'static str,
    report: serde_json::Value,
    expect_head: Option<u64>,
) -> anyhow::Result<()> {
    let d = Daena::open(load_config(global, Vec::new())?, OpenOptions::offline(kind))
        .map_err(|e| anyhow!("the {kind} result does not open: {}", e.message))?;
    let head = d.ledger().reader.head().size;
    let result = match expect_head {
        Some(expected) if head != expected => {
            Err(anyhow!("after the {kind} the ledger is at {head}, expected {expected}"))
        }
        _ => {
            let who = daena_app::auth::Principal::local_operator(daena_core::ids::TenantId::default_tenant()).actor();
            let op = d.operations().begin(kind, &who).map_err(|e| anyhow!(e.message))?;
            operations::ledger_outcome(&d, &who, kind, &op.id, &Ok(report))
                .await
                .map(|_| ())
                .map_err(|e| anyhow!(e.message))
        }
    };
    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
    result
}

/// `daena rollback --to <seq|time>`.
pub async fn rollback(global: &Global, to: &str, trust: Trust) -> anyhow::Result<ExitCode> {
    rebuild(global, snapshot::Rebuild { ledger: None, snapshot: None, to: Some(to), holder: "rollback", trust }).await
}

/// `daena replay --ledger DIR [--from-snapshot S] [--to SEQ]`.
pub async fn replay(
    global: &Global,
    ledger: &std::path::Path,
    from_snapshot: Option<&std::path::Path>,
    to: Option<&str>,
    trust: Trust,
) -> anyhow::Result<ExitCode> {
    rebuild(global, snapshot::Rebuild { ledger: Some(ledger), snapshot: from_snapshot, to, holder: "replay", trust })
        .await
}

async fn rebuild(global: &Global, spec: snapshot::Rebuild<'_>) -> anyhow::Result<ExitCode> {
    let loaded = load_config(global, Vec::new())?;
    let root = loaded.config.data_dir.clone();
    let report: snapshot::RollbackReport = if daena_store::datadir::is_locked(&root) {
        let remote = super::remote(global, &root)?;
        let op = if spec.holder == "rollback" {
            let to = spec.to.unwrap_or_default();
            let body = serde_json::json!({"to": to, "trust_unsigned": spec.trust.trust_unsigned});
            remote.post("/api/v1/admin/rollbacks", &body).await?
        } else {
            let path = |p: &std::path::Path| absolute(&p.display().to_string());
            let body = serde_json::json!({
                "ledger": spec.ledger.map(path).transpose()?,
                "from_snapshot": spec.snapshot.map(path).transpose()?,
                "to": spec.to,
                "trust_unsigned": spec.trust.trust_unsigned,
                "public_key": spec.trust.public_key,
            });
            remote.post("/api/v1/admin/replays", &body).await?
        };
        crate::client::finished(remote.wait_operation(op).await?)?
    } else {
        let holder = spec.holder;
        let report = snapshot::rebuild(&loaded, spec.clone()).map_err(|e| anyhow!(e.message))?;
        reopen_and_ledger(global, holder, serde_json::to_value(&report)?, Some(report.to_seq)).await?;
        report
    };
    if global.json {
        crate::output::json(&report)?;
    } else {
        println!(
            "{} to entry {} (of {}): snapshot {} at {} plus {} entries replayed",
            if spec.holder == "rollback" { "rolled back" } else { "rebuilt" },
            report.to_seq,
            report.previous_head,
            report.snapshot,
            report.snapshot_position,
            report.replayed_entries
        );
        println!("{} later entries and the state before are kept in {}", report.set_aside_entries, report.replaced_dir);
    }
    Ok(ExitCode::SUCCESS)
}
