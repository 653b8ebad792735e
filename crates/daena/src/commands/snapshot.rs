//! `daena snapshot create|list|restore`.

use super::{Target, load_config, target};
use crate::cli::{Global, SnapshotCommand};
use anyhow::{anyhow, bail};
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
        SnapshotCommand::Restore { file } => {
            let loaded = load_config(global, Vec::new())?;
            let root = loaded.config.data_dir.clone();
            if daena_store::datadir::is_locked(&root) {
                bail!(
                    "the data directory {} is held by a running server; stop it first: a restore replaces its state \
                     on disk (the current state is kept under {}/replaced/)",
                    root.display(),
                    root.display()
                );
            }
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
            let report = snapshot::restore(&loaded, &archive).map_err(|e| anyhow!(e.message))?;
            // Open the restored directory once, as the server will, to prove it comes up.
            let d = Daena::open(load_config(global, Vec::new())?, OpenOptions::offline("snapshot restore"))
                .map_err(|e| anyhow!("the restored data directory does not open: {}", e.message))?;
            let head = d.ledger.reader.head().size;
            d.shutdown().await.map_err(|e| anyhow!(e.message))?;
            if global.json {
                crate::output::json(&report)?;
            } else {
                println!("restored {}", describe(&report.manifest));
                println!(
                    "ledger verified: {} entries; the directory opens at position {head}",
                    report.ledger_verified_entries
                );
                println!("the replaced state is kept in {}", report.replaced_dir);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `daena rollback --to <seq|time>`.
pub async fn rollback(global: &Global, to: &str) -> anyhow::Result<ExitCode> {
    rebuild(global, snapshot::Rebuild { ledger: None, snapshot: None, to: Some(to), holder: "rollback" }).await
}

/// `daena replay --ledger DIR [--from-snapshot S] [--to SEQ]`.
pub async fn replay(
    global: &Global,
    ledger: &std::path::Path,
    from_snapshot: Option<&std::path::Path>,
    to: Option<&str>,
) -> anyhow::Result<ExitCode> {
    rebuild(global, snapshot::Rebuild { ledger: Some(ledger), snapshot: from_snapshot, to, holder: "replay" }).await
}

async fn rebuild(global: &Global, spec: snapshot::Rebuild<'_>) -> anyhow::Result<ExitCode> {
    let loaded = load_config(global, Vec::new())?;
    let root = loaded.config.data_dir.clone();
    if daena_store::datadir::is_locked(&root) {
        bail!(
            "the data directory {} is held by a running server; stop it first: a {} replaces its state on \
             disk (the current state is kept under {}/replaced/)",
            root.display(),
            spec.holder,
            root.display()
        );
    }
    let report = snapshot::rebuild(&loaded, spec).map_err(|e| anyhow!(e.message))?;
    // The next open applies the ledger entries after the snapshot: do it now, and check.
    let d = Daena::open(load_config(global, Vec::new())?, OpenOptions::offline(spec.holder))
        .map_err(|e| anyhow!("the rebuilt data directory does not open: {}", e.message))?;
    let head = d.ledger.reader.head().size;
    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
    if head != report.to_seq {
        bail!("after the {} the ledger is at {head}, expected {}", spec.holder, report.to_seq);
    }
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
