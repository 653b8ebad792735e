//! `daena archive export|import|verify`: portable logical backups.

use super::{Target, target};
use crate::cli::{ArchiveCommand, Global};
use crate::client::segment;
use anyhow::{Context, anyhow, bail};
use daena_app::archive::{self, ArchiveSummary, ArchivedRecord};
use daena_app::auth::Principal;
use daena_app::memory::PutRequest;
use daena_core::ids::TenantId;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn print(global: &Global, verb: &str, s: &ArchiveSummary) -> anyhow::Result<()> {
    if global.json {
        crate::output::json(s)
    } else {
        println!(
            "{verb} {}: {} records of {} tenant(s), {:.1} MiB, SHA-256 of the records {}",
            s.path,
            s.records,
            s.tenants.len(),
            s.bytes as f64 / (1 << 20) as f64,
            s.sha256
        );
        Ok(())
    }
}

/// Whether an imported record has to be promoted out of quarantine again: it landed in L2Q
/// (its class requires quarantine) but the archive has it promoted (L2 or L3). The promotion
/// is ledgered as the importing operator's; confirmations themselves are not in archives.
fn promote_again(archived_tier: &str, landed_tier: Option<&str>) -> bool {
    landed_tier == Some("L2Q") && archived_tier != "L2Q"
}

/// Reads the archive on a blocking thread and hands each checked record to `put`.
async fn feed<F, Fut>(path: &Path, mut put: F) -> anyhow::Result<ArchiveSummary>
where
    F: FnMut(ArchivedRecord) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ArchivedRecord>(256);
    let p = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        archive::read(&p, |r| {
            tx.blocking_send(r).map_err(|_| daena_app::error::AppError::internal("the import stopped"))
        })
    });
    let mut progress = crate::output::Progress::new("importing", None);
    let mut failed = None;
    while let Some(r) = rx.recv().await {
        if failed.is_none() {
            let what = format!("{}/{}/{}", r.tenant, r.class, r.key);
            if let Err(e) = put(r).await {
                failed = Some(e.context(what));
                rx.close();
            }
            progress.inc(1);
        }
    }
    progress.finish();
    let summary = reader.await.map_err(|e| anyhow!("archive reader: {e}"))?;
    if let Some(e) = failed {
        return Err(e);
    }
    summary.map_err(|e| anyhow!(e.message))
}

pub async fn run(global: &Global, cmd: ArchiveCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ArchiveCommand::Export { tenant, out } => {
            let tenant_id = tenant.as_deref().map(TenantId::new).transpose().map_err(|e| anyhow!("--tenant: {e}"))?;
            let summary = match target(global, "archive export")? {
                Target::Remote(r) => {
                    let s: ArchiveSummary =
                        r.post("/api/v1/admin/archives", &serde_json::json!({"tenant": tenant})).await?;
                    // The server wrote it into its data directory; bring it here when it is local.
                    let src = PathBuf::from(&s.path);
                    let name = src.file_name().map(|n| n.to_owned()).unwrap_or_default();
                    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
                    let dst = out.join(name);
                    match std::fs::copy(&src, &dst) {
                        Ok(_) => ArchiveSummary { path: dst.display().to_string(), ..s },
                        Err(e) => {
                            eprintln!("note: the archive stays on the server's host at {} ({e})", s.path);
                            s
                        }
                    }
                }
                Target::Offline(d) => {
                    let result = archive::export(&d, tenant_id, out.clone()).await;
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result.map_err(|e| anyhow!(e.message))?
                }
            };
            print(global, "wrote", &summary)?;
            eprintln!("the archive holds the records in plaintext: keep it as carefully as the data");
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Verify { file } => {
            let summary = archive::read(&file, |_| Ok(())).map_err(|e| anyhow!(e.message))?;
            print(global, "verified", &summary)?;
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Import { file, trust } => {
            // Check the whole archive, and who signed it, before writing anything.
            let checked = archive::read(&file, |_| Ok(())).map_err(|e| anyhow!(e.message))?;
            let trust: daena_app::backup_trust::Trust = trust.into();
            let target = target(global, "archive import")?;
            let ours = match &target {
                Target::Remote(r) => {
                    let head: serde_json::Value = r.get("/api/v1/ledger/head").await?;
                    head["public_key"].as_str().unwrap_or_default().to_owned()
                }
                Target::Offline(d) => d.ledger().public_key.clone(),
            };
            let provenance = archive::check_signature(&checked, &ours, &trust).map_err(|e| anyhow!(e.message))?;
            // Only this deployment's own archive may bring promotions out of quarantine.
            let promote = provenance == daena_app::backup_trust::Provenance::ThisDeployment;
            if !promote {
                eprintln!(
                    "note: the archive is not signed by this deployment; records of quarantined classes stay in quarantine"
                );
            }
            let summary = match target {
                Target::Remote(r) => feed(&file, |rec| {
                    let r = r.clone();
                    async move {
                        let path = format!("/api/v1/memory/{}/{}", segment(&rec.class), segment(&rec.key));
                        let body =
                            serde_json::json!({"payload": rec.payload, "meta": rec.meta, "intended_revision": true});
                        let written: serde_json::Value =
                            r.send_as(reqwest::Method::PUT, &path, &rec.tenant, &body).await?;
                        if promote && promote_again(&rec.tier, written.get("tier").and_then(serde_json::Value::as_str))
                        {
                            let path = format!("{path}/promote");
                            r.send_as::<_, serde_json::Value>(reqwest::Method::POST, &path, &rec.tenant, &()).await?;
                        }
                        Ok(())
                    }
                })
                .await?,
                Target::Offline(d) => {
                    let d2 = d.clone();
                    let result = feed(&file, move |rec| {
                        let d = d2.clone();
                        async move {
                            let who = Principal::local_operator(TenantId::new(&rec.tenant)?);
                            let rec_tier = rec.tier.clone();
                            let req = PutRequest {
                                class: rec.class,
                                key: rec.key,
                                payload: rec.payload,
                                meta: (!rec.meta.is_null()).then_some(rec.meta),
                                if_match: None,
                                intended_revision: true,
                                agent: None,
                            };
                            let (class, key) = (req.class.clone(), req.key.clone());
                            let written =
                                daena_app::memory::put(&d, &who, req).await.map_err(|e| anyhow!(e.message))?;
                            if promote && promote_again(&rec_tier, Some(written.record.tier.as_str())) {
                                daena_app::memory::promote(&d, &who, &class, &key)
                                    .await
                                    .map_err(|e| anyhow!(e.message))?;
                            }
                            Ok(())
                        }
                    })
                    .await;
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result?
                }
            };
            if summary.records == 0 {
                bail!("{} holds no records", file.display());
            }
            print(global, "imported", &summary)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
